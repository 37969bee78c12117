"""What the emulated GPU did: device operations, allocations and host<->device transfers.

    from cupy import emulation
    with emulation.counting() as step:
        module.train_step(params, batch)
    assert step["allocations"] == 0 and step["device_ops"] <= nodes

``counters()`` is a snapshot since the last ``reset()``; ``counting()`` yields a dict that holds the
differences once the block ends (with ``trace=True`` also ``trace``: one line per event, in order).
"""
from __future__ import annotations

import contextlib

# kinds of device operation; each is also a key of the counters, and device_ops is their sum
OPS = ("kernel_launches", "ufunc_calls", "reductions", "matmuls", "copies", "fills", "random_draws")
OTHERS = ("allocations", "allocated_bytes", "host_to_device", "host_to_device_bytes", "device_to_host",
          "device_to_host_bytes", "kernel_compiles")

_counts = dict.fromkeys(OPS + OTHERS, 0)
_traces: list[list[str]] = []  # the trace lists of the counting() blocks that asked for one


def reset() -> None:
    for key in _counts:
        _counts[key] = 0


def counters() -> dict:
    snapshot = dict(_counts)
    snapshot["device_ops"] = sum(_counts[k] for k in OPS)
    return snapshot


@contextlib.contextmanager
def counting(trace: bool = False):
    before, record, events = counters(), {}, []
    if trace:
        _traces.append(events)
    try:
        yield record
    finally:
        if trace:
            _traces.remove(events)
            record["trace"] = events
        after = counters()
        record.update({key: after[key] - before[key] for key in after})


def _note(text: str) -> None:
    for events in _traces:
        events.append(text)


def op(kind: str, name: str) -> None:
    """One device operation (a kernel, a cuBLAS call, a memcpy or memset) of ``kind`` (a key of OPS)."""
    _counts[kind] += 1
    _note(f"{kind}: {name}")


def allocation(nbytes: int, why: str) -> None:
    _counts["allocations"] += 1
    _counts["allocated_bytes"] += int(nbytes)
    _note(f"allocation: {int(nbytes)} B ({why})")


def transfer(to_device: bool, nbytes: int) -> None:
    key = "host_to_device" if to_device else "device_to_host"
    _counts[key] += 1
    _counts[key + "_bytes"] += int(nbytes)
    _note(f"{key}: {int(nbytes)} B")


def compiled(name: str) -> None:
    _counts["kernel_compiles"] += 1
    _note(f"compile: {name}")


def compiler() -> str | None:
    """The C++ compiler kernels are built with (None: kernels cannot run)."""
    from ._kernel import compiler as find
    return find()
