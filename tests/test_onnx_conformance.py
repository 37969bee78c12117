"""ONNX's own node tests, imported with gc.from_onnx and run twice: by the reference evaluator and by the generated
NumPy module. Each case is ok (both match ONNX's outputs), refused (a GraphError at import) or failed (a wrong
result or a crash: always a bug). ``python tests/test_onnx_conformance.py`` prints the table per op family.
"""
from __future__ import annotations

import re
import sys
from collections import Counter
from functools import cache
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")

import graphc as gc  # noqa: E402
from graphc.onnx import STATIC_INPUTS  # noqa: E402

RTOL, ATOL = 1e-3, 1e-7  # what onnx's backend test runner uses
NODE_TESTS = Path(onnx.__file__).parent / "backend" / "test" / "data" / "node"

# op family -> the node tests' names (after test_), matched at the start and followed by _ or the end
FAMILIES = {
    "Gemm": ["gemm"],
    "MatMul": ["matmul"],
    "Conv": ["conv", "basic_conv"],
    "pooling": ["maxpool", "averagepool", "globalaveragepool", "globalmaxpool"],
    "reductions": ["reduce_sum", "reduce_mean", "reduce_max", "reduce_min", "reduce_log_sum_exp",
                   "reduce_sum_square", "reduce_l1", "reduce_l2", "reduce_log_sum"],
    "activations": ["relu", "leakyrelu", "sigmoid", "tanh", "softplus", "elu", "selu", "celu", "hardsigmoid",
                    "hardswish", "softsign", "thresholdedrelu", "prelu", "mish"],
    "Softmax/LogSoftmax": ["softmax", "logsoftmax"],
    "shape ops": ["reshape", "transpose", "flatten", "concat", "slice", "gather", "expand", "squeeze", "unsqueeze"],
    "Where": ["where"],
    "comparisons": ["greater", "greater_equal", "less", "less_equal", "equal"],
    "LayerNormalization": ["layer_normalization"],
    "BatchNormalization (inference)": ["batchnorm_epsilon", "batchnorm_example"],
    "Gelu": ["gelu"],
    "Erf": ["erf"],
    "Clip": ["clip"],
    "Dropout (inference)": ["dropout"],
    "training mode": ["training_dropout", "batchnorm_epsilon_training_mode", "batchnorm_example_training_mode"],
    "arithmetic": ["add", "sub", "mul", "div", "pow", "neg", "abs", "sqrt", "exp", "log", "reciprocal", "max", "min",
                   "sum", "mean"],
    "Cast/CastLike": ["cast", "castlike"],
    "other": ["identity", "constant", "shape", "size", "constantofshape", "pad", "edge_pad",
              "split", "tile", "instancenorm", "and", "or", "xor", "not", "reduce_prod"],
}
AWAITED = ("gc.take", "gc.erf", "gc.gelu")  # ops that graphc gets later: refusals that name them are counted apart
TARGET = [f for f in FAMILIES if f not in ("arithmetic", "Cast/CastLike", "other", "training mode")]


def family(test: str) -> str | None:
    name = test.removeprefix("test_")
    for fam, ops in sorted(FAMILIES.items(), key=lambda kv: kv[0] != "training mode"):
        if any(re.match(rf"{op}(_|$)(?!pool)", name) and not re.match(r"(gather_elements|gathernd|matmulinteger|"
                                                                      r"convtranspose|convinteger)", name)
               for op in ops):
            return fam
    return None


def cases() -> list[Path]:
    return sorted(d for d in NODE_TESTS.glob("test_*") if family(d.name))


def _tensor(path: Path) -> np.ndarray:
    t = onnx.TensorProto()
    t.ParseFromString(path.read_bytes())
    return onnx.numpy_helper.to_array(t)


def _static_inputs(model) -> set[str]:
    """Graph inputs read where graphc needs values at import (a Reshape's shape, Slice bounds, axes)."""
    return {name for node in model.graph.node for i, name in enumerate(node.input)
            if i in STATIC_INPUTS.get(node.op_type, ())}


def _type_only(model) -> set[str]:
    """Graph inputs only CastLike reads, for their dtype: from_onnx declares no input for them."""
    uses: dict = {}
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            uses.setdefault(name, set()).add((node.op_type, i))
    return {name for name, u in uses.items() if u == {("CastLike", 1)}}


def _close(name: str, got, want) -> str | None:
    if got.shape != want.shape or got.dtype != want.dtype:
        return f"{name}: got {got.dtype}{got.shape}, ONNX {want.dtype}{want.shape}"
    if want.dtype.kind in "biu":
        return None if np.array_equal(got, want) else f"{name}: values differ"
    try:
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    except AssertionError as exc:
        return f"{name}: {str(exc).strip().splitlines()[2] if len(str(exc).splitlines()) > 2 else exc}"
    return None


def run_case(case: Path) -> tuple[str, str]:
    """('ok' | 'refused' | 'failed', detail)."""
    model = onnx.load(str(case / "model.onnx"))
    data = sorted(case.glob("test_data_set_*"))[0]
    inputs = [i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    try:
        values = {n: _tensor(data / f"input_{i}.pb") for i, n in enumerate(inputs)}
    except Exception as exc:  # noqa: BLE001 - sequences and optionals are not tensors: graphc has neither
        values = {}
        reason = f"non-tensor inputs ({type(exc).__name__})"
    static = _static_inputs(model)
    try:
        g = gc.from_onnx(model, constants={n: v for n, v in values.items() if n in static})
    except gc.GraphError as exc:
        return "refused", str(exc)
    if len(values) != len(inputs):
        return "failed", f"imported a model with {reason}"
    try:
        fed = [n for n in inputs if n not in static | _type_only(model)]
        assert len(fed) == len(g.inputs), (fed, list(g.inputs))
        feeds = {gc_name: values[onnx_name].astype(g.nodes[g.inputs[gc_name]].dtype)
                 for gc_name, onnx_name in zip(g.inputs, fed)}
        feeds.update(g.initial_params)
        want = [_tensor(data / f"output_{i}.pb") for i in range(len(model.graph.output))]
        for how, got in (("evaluate", g.evaluate(feeds)), ("compiled", gc.compile(g).run(feeds))):
            for (name, arr), ref in zip(got.items(), want):
                problem = _close(name, np.asarray(arr), ref)
                if problem:
                    return "failed", f"{how}: {problem}"
    except Exception as exc:  # noqa: BLE001 - any crash after a successful import is a failure to report
        return "failed", f"{type(exc).__name__}: {exc}"
    return "ok", ""


@cache
def results() -> dict[str, tuple[str, str, str]]:
    """Test name -> (family, outcome, detail), computed once per session."""
    return {case.name: (family(case.name), *run_case(case)) for case in cases()}


def table(res) -> str:
    counts: dict = {}
    for fam, outcome, detail in res.values():
        key = "awaited" if outcome == "refused" and any(a in detail for a in AWAITED) else outcome
        counts.setdefault(fam, Counter())[key] += 1
    lines = ["| family | cases | ok | refused | refused, awaiting gc.take/erf/gelu | failed |",
             "|---|---:|---:|---:|---:|---:|"]
    total = Counter()
    for fam in FAMILIES:
        c = counts.get(fam, Counter())
        total.update(c)
        lines.append(f"| {fam} | {sum(c.values())} | {c['ok']} | {c['refused']} | {c['awaited']} | {c['failed']} |")
    lines.append(f"| all | {sum(total.values())} | {total['ok']} | {total['refused']} | {total['awaited']} | "
                 f"{total['failed']} |")
    return "\n".join(lines)


def test_node_tests_are_found():
    assert len(cases()) > 400


def test_no_case_fails():
    failed = {name: detail for name, (_, outcome, detail) in results().items() if outcome == "failed"}
    assert not failed, "\n".join(f"{n}: {d}" for n, d in failed.items())


def test_refusals_name_node_and_op():
    for name, (_, outcome, detail) in results().items():
        if outcome == "refused" and detail.startswith("ONNX node"):
            assert re.match(r"ONNX node ('[^']*'|with output '[^']*') \(\w+\): \S", detail), (name, detail)


def in_scope(fam: str, detail: str) -> bool:
    """A case the 90% target counts: a target family's, of opset 13 or later, needing no op graphc gets later."""
    return fam in TARGET and not detail.startswith("the model uses opset") and not any(a in detail for a in AWAITED)


def test_most_of_the_target_families_import():
    res = [o for f, o, d in results().values() if in_scope(f, d)]
    assert res.count("ok") >= 0.9 * len(res), f"{res.count('ok')} of {len(res)} cases ok"


if __name__ == "__main__":
    res = results()
    print(table(res))
    scoped = [o for f, o, d in res.values() if in_scope(f, d)]
    print(f"\ntarget families, opset >= 13, not awaiting ops: {scoped.count('ok')} of {len(scoped)} ok "
          f"({scoped.count('ok') / len(scoped):.1%})")
    if "-v" in sys.argv:
        for name, (_, outcome, detail) in res.items():
            if outcome != "ok":
                print(f"{outcome:8} {name}: {detail[:300]}")
