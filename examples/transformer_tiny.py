"""A tiny decoder-only transformer that learns to reverse sequences of digits, trained with its generated file.

Each example is ``x1 … x8 SEP x8 … x1``: the model reads it left to right and predicts every next token; the loss
counts the answer half. Token embeddings (``gc.take``: ``E[ids]``) plus learned positions, two pre-norm blocks
(four-head causal self-attention, masked with ``gc.where``; a GELU MLP; dropout on both; residuals), a final layer
norm. Trained with plain SGD (warm-up, then cosine decay, set per step); evaluated with the module's ``predict``
(no dropout, no labels) by greedy decoding: each answer digit is predicted from the digits predicted before it.
About 5 seconds of training (100 steps) on two CPU cores to reverse every held-out sequence; no data to download.
"""
import os
import time
from pathlib import Path

# Matrices this small gain little from a second BLAS thread, which stalls whenever another process holds the core.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
import numpy as np  # noqa: E402

import graphc as gc  # noqa: E402

BUILD = Path(os.environ.get("GRAPHC_BUILD_DIR", "build"))
DIGITS, SEP = 8, 10                      # 8 digits to reverse; token 10 separates question and answer
T = 2 * DIGITS                           # the model reads x1 … x8 SEP y1 … y7 and predicts x2 … SEP y1 … y8
VOCAB, WIDTH, HEADS, BLOCKS, DROPOUT = 11, 64, 4, 2, 0.1
STEPS, BATCH, LR, WARMUP = 100, 64, 1.0, 10


def sequences(rng, n):
    """``n`` examples: the model's input tokens and, at each position, the token that follows."""
    x = rng.integers(0, 10, (n, DIGITS))
    full = np.concatenate([x, np.full((n, 1), SEP), x[:, ::-1]], axis=1)
    return {"ids": full[:, :-1], "targets": full[:, 1:]}


def attention(x, m, Wq, Wk, Wv, Wo, causal):
    """Multi-head self-attention of ``x`` (m, T, WIDTH); position q sees positions k ≤ q only."""
    size = WIDTH // HEADS

    def heads(t):  # (m, T, WIDTH) -> (m, HEADS, T, size)
        return gc.transpose(gc.reshape(t, (m, T, HEADS, size)), (0, 2, 1, 3))
    q, k, v = heads(x @ Wq), heads(x @ Wk), heads(x @ Wv)
    scores = q @ gc.transpose(k, (0, 1, 3, 2)) * (1 / size ** 0.5)
    weights = gc.softmax(gc.where(causal, scores, -1e9), axis=-1)  # a future position gets weight e^-1e9 = 0
    return gc.reshape(gc.transpose(weights @ v, (0, 2, 1, 3)), (m, T, WIDTH)) @ Wo


m = gc.dim("m")
with gc.Graph("transformer_tiny") as g:
    ids = gc.input("ids", (m, T), dtype="int64")
    targets = gc.input("targets", (m, T), dtype="int64")
    E = gc.param("E", (VOCAB, WIDTH), init=("normal", 0.1))
    P = gc.param("P", (T, WIDTH), init=("normal", 0.1))        # one learned vector per position
    causal = gc.const(np.tril(np.ones((T, T), dtype=bool)))
    h = E[ids] + P                                               # (m, T, WIDTH)
    for b in range(BLOCKS):
        Wq, Wk, Wv, Wo = (gc.param(f"{w}{b}", (WIDTH, WIDTH), init="glorot_uniform") for w in ("Wq", "Wk", "Wv", "Wo"))
        norm1 = gc.param(f"norm1_{b}", (WIDTH,), init="ones"), gc.param(f"shift1_{b}", (WIDTH,))
        norm2 = gc.param(f"norm2_{b}", (WIDTH,), init="ones"), gc.param(f"shift2_{b}", (WIDTH,))
        W1, c1 = gc.param(f"W1_{b}", (WIDTH, 4 * WIDTH), init="he_normal"), gc.param(f"c1_{b}", (4 * WIDTH,))
        W2, c2 = gc.param(f"W2_{b}", (4 * WIDTH, WIDTH), init="glorot_uniform"), gc.param(f"c2_{b}", (WIDTH,))
        h = h + gc.dropout(attention(gc.layer_norm(h, *norm1), m, Wq, Wk, Wv, Wo, causal), DROPOUT, seed=2 * b)
        # GELU's tanh form (GPT-2's): NumPy has tanh, while the exact form needs erf, evaluated by rational
        # approximation in the generated file
        mlp = gc.gelu(gc.layer_norm(h, *norm2) @ W1 + c1, approximate="tanh") @ W2 + c2
        h = h + gc.dropout(mlp, DROPOUT, seed=2 * b + 1)
    final = gc.param("norm_f", (WIDTH,), init="ones"), gc.param("shift_f", (WIDTH,))
    W_out = gc.param("W_out", (WIDTH, VOCAB), init="glorot_uniform")
    logits = (gc.layer_norm(h, *final) @ W_out).named("logits")
    answer = gc.const((np.arange(T) >= DIGITS - 1) / (DIGITS + 1.0), dtype="float32")  # SEP and the 8 answers
    loss = gc.sum(gc.mean(gc.softmax_cross_entropy(logits, targets) * answer, axis=0))
    g.output(loss=loss, logits=logits)

# Build: train_step runs with dropout; predict computes logits alone (no targets, no dropout, no gradients).
model = gc.load_module(gc.compile(g, loss="loss", optimizer=gc.SGD(lr=LR)).emit(BUILD / "transformer_tiny_numpy.py"))
print(f"predict computes {model.PREDICTS} from {[n for n in model.INPUTS if n != 'targets']} and the params")

params = model.init_params(seed=0)
rng = np.random.default_rng(0)
start = time.perf_counter()
for step in range(STEPS):
    lr = LR * min(1.0, (step + 1) / WARMUP) * 0.5 * (1 + np.cos(np.pi * step / STEPS))
    out = model.train_step(params, sequences(rng, BATCH), lr=lr)
    if step % 25 == 0 or step == STEPS - 1:
        print(f"step {step:3d}  lr {lr:.3f}  loss {float(out['loss']):.4f}")
print(f"{STEPS} steps in {time.perf_counter() - start:.1f} s")

# Greedy decoding of held-out examples: the answer is fed back one predicted digit at a time.
test = sequences(np.random.default_rng(1), 1000)
tokens = test["ids"].copy()
tokens[:, DIGITS + 1:] = 0  # nothing after SEP is known yet
right = np.zeros(len(tokens), dtype=np.int64)  # answer digits right, per sequence
for position in range(DIGITS, T):  # the logits at a position predict the token after it
    guess = model.predict({"ids": tokens, **params})["logits"][:, position].argmax(axis=-1)
    if position + 1 < T:
        tokens[:, position + 1] = guess
    right += guess == test["targets"][:, position]
print(f"sequences reversed exactly: {(right == DIGITS).mean():.4f}")
print(f"test accuracy: {right.mean() / DIGITS:.4f}")
