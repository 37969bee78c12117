"""One SGD training step of an embedding model: graphc's gc.take against PyTorch eager and the one-hot workaround.

    python bench/embedding.py [--threads N] [--rounds R] [--vocab V …]

Token ids (64, 32) → embedding table (V, 64) → mean over the 32 tokens → dense 64→10, mean softmax cross-entropy,
float32, for each vocabulary size V. Same initial weights and data everywhere; losses and updated tables checked
equal after one step before timing; runs interleaved, medians of per-round medians, ratio = peer ÷ graphc in the
same round (above 1: graphc is faster). Memory: the bytes of graphc's planned buffers for the step, and the most
allocated above them during a steady-state step (tracemalloc). Results go to bench/results/embedding.md.
"""
import argparse
import os
import platform
from pathlib import Path

_parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
_parser.add_argument("--threads", type=int, default=1, help="threads for every implementation (default 1)")
_parser.add_argument("--rounds", type=int, default=15)
_parser.add_argument("--vocab", type=int, nargs="+", default=[1_000, 10_000, 50_000])
_parser.add_argument("--one-hot-up-to", type=int, default=10_000, help="largest V of the one-hot workaround")
ARGS = _parser.parse_args()
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(ARGS.threads)

import numpy as np  # noqa: E402
from measure import allocated, interleaved  # noqa: E402 - bench/ is the script's folder

import graphc as gc  # noqa: E402

BATCH, TOKENS, DIM, CLASSES, LR = 64, 32, 64, 10, 0.5
RESULTS = Path(__file__).resolve().parent / "results"


def model(vocab: int, one_hot: bool = False):
    """The embedding model; ``one_hot`` looks rows up as ``one_hot(ids, V) @ E`` (the workaround gc.take replaces)."""
    m = gc.dim("m")
    with gc.Graph("embedding") as g:
        ids, t = gc.input("ids", (m, TOKENS), dtype="int64"), gc.input("t", (m,), dtype="int64")
        E = gc.param("E", (vocab, DIM), init=("normal", 0.1))
        W, b = gc.param("W", (DIM, CLASSES), init="glorot_uniform"), gc.param("b", (CLASSES,))
        rows = gc.one_hot(ids, vocab) @ E if one_hot else E[ids]
        g.output(loss=gc.mean(gc.softmax_cross_entropy(gc.mean(rows, axis=1) @ W + b, t)))
    return g


def torch_step(params, ids, t):
    import torch
    torch.set_num_threads(ARGS.threads)
    emb = torch.nn.Embedding.from_pretrained(torch.tensor(params["E"]), freeze=False)
    lin = torch.nn.Linear(DIM, CLASSES)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor(params["W"].T))
        lin.bias.copy_(torch.tensor(params["b"]))
    opt = torch.optim.SGD([*emb.parameters(), *lin.parameters()], lr=LR)
    ids_t, t_t = torch.tensor(ids), torch.tensor(t)

    def step():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(lin(emb(ids_t).mean(1)), t_t)
        loss.backward()
        opt.step()
        return loss.item()
    return step, emb.weight


def graphc_step(vocab, params, batch, one_hot=False):
    prog = gc.compile(model(vocab, one_hot), loss="loss", optimizer=gc.SGD(lr=LR))
    ours = {k: v.copy() for k, v in params.items()}
    return (lambda: float(prog.train_step(ours, batch)["loss"])), ours, prog


def buffer_bytes(prog, batch) -> int:
    """Bytes of the planned buffers of one training step at this batch (what the step keeps between calls)."""
    module = prog.module
    dims = module._check(batch, tuple(module.INPUTS))
    buffers = module._train_allocate(*dims)
    return sum(a.nbytes for a in buffers) + sum(a.nbytes for a in buffers.named.values())


def one_vocab(vocab: int) -> list[str]:
    rng = np.random.default_rng(0)
    ids, t = rng.integers(0, vocab, (BATCH, TOKENS)), rng.integers(0, CLASSES, BATCH)
    batch = {"ids": ids, "t": t}
    params = gc.init_params(model(vocab), seed=0)
    ours, our_params, prog = graphc_step(vocab, params, batch)
    theirs, table = torch_step(params, ids, t)
    a, b = ours(), theirs()
    assert abs(a - b) <= 1e-5 * max(1.0, abs(b)), (a, b)
    assert np.allclose(our_params["E"], table.detach().numpy(), rtol=1e-4, atol=1e-6)
    runs = {"graphc (gc.take)": ours, "PyTorch eager": theirs}
    if vocab <= ARGS.one_hot_up_to:
        runs["graphc, one_hot(ids, V) @ E"] = graphc_step(vocab, params, batch, one_hot=True)[0]
    times = interleaved(runs, ARGS.rounds)
    base = times["graphc (gc.take)"]
    rows = []
    for name, ts in times.items():
        ratio = np.median([t / g for t, g in zip(ts, base)])
        rows.append(f"| {vocab:,} | {name} | {np.median(ts) * 1e3:.2f} | {ratio:.2f} |")
    kept, extra = buffer_bytes(prog, batch), allocated(ours)
    onehot = BATCH * TOKENS * vocab * 4
    note = (f"V = {vocab:,}: graphc's step keeps {kept / 2**20:.1f} MiB of buffers (the table's gradient "
            f"{vocab * DIM * 4 / 2**20:.1f} MiB of it) and allocates {extra / 1024:.1f} KiB above them per step; "
            f"a one-hot matrix of the ids alone would be {onehot / 2**20:.0f} MiB")
    return rows, note


def main():
    try:
        import torch
    except ImportError:
        print("skipped: PyTorch is not installed (pip install torch==2.13.0, or the bench extra)")
        return
    lines = ["# Embedding model training step (float32, SGD)", "",
             f"`python bench/embedding.py --threads {ARGS.threads}` — {platform.machine()}, {os.cpu_count()} cores, "
             f"{ARGS.threads} thread(s) for all; NumPy {np.__version__}, torch {torch.__version__}.", "",
             f"ids ({BATCH}, {TOKENS}) → table (V, {DIM}) → mean over tokens → dense {DIM}→{CLASSES}, mean softmax "
             f"cross-entropy, SGD lr {LR}. Median per-step time over {ARGS.rounds} interleaved rounds of 10 steps; "
             "ratio = median over rounds of (implementation ÷ graphc in the same round), so above 1 means slower "
             "than graphc. Losses and updated tables of graphc and PyTorch checked equal before timing.", "",
             "| V | implementation | ms | ÷ graphc |", "|---:|---|---:|---:|"]
    notes = []
    for vocab in ARGS.vocab:
        rows, note = one_vocab(vocab)
        lines += rows
        notes.append(f"- {note}.")
        print("\n".join(rows), flush=True)
    lines += ["", "Memory:", "", *notes]
    print("\n".join(notes))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "embedding.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {RESULTS / 'embedding.md'}")


if __name__ == "__main__":
    main()
