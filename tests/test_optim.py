"""Optimizers in the generated training step against torch.optim: SGD (momentum, dampening, Nesterov, weight decay),
Adam, AdamW (weight decay, amsgrad), global gradient-norm clipping and learning-rate schedules, on the same model,
data and initial weights, step after step. The default suite runs a few combinations; ``-m slow`` the whole grid."""
import re

import numpy as np
import pytest

import graphc as gc
from graphc.transforms.gradcheck import rel_error

from helpers import cupy_or_skip

torch = pytest.importorskip("torch")
sched = torch.optim.lr_scheduler
m = gc.dim("m")
STEPS = 100
TOL = {"float64": 1e-10, "float32": 1e-5}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """torch on one thread: for steps this small, a thread pool costs far more than it gives."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def mlp(dtype):
    """A 6-16-4 tanh MLP with mean softmax cross-entropy (smooth, so rounding never flips a branch)."""
    with gc.Graph("mlp") as g:
        x, t = gc.input("x", (m, 6), dtype=dtype), gc.input("t", (m,), dtype="int64")
        W1 = gc.param("W1", (6, 16), dtype=dtype, init="glorot_uniform")
        b1 = gc.param("b1", (16,), dtype=dtype, init=("normal", 0.1))
        W2 = gc.param("W2", (16, 4), dtype=dtype, init="glorot_uniform")
        b2 = gc.param("b2", (4,), dtype=dtype, init=("normal", 0.1))
        g.output(loss=gc.mean(gc.softmax_cross_entropy(gc.tanh(x @ W1 + b1) @ W2 + b2, t)))
    return g


def batches(dtype, steps=STEPS, size=8):
    rng = np.random.default_rng(0)
    return [{"x": rng.normal(size=(size, 6)).astype(dtype), "t": rng.integers(0, 4, size)} for _ in range(steps)]


def torch_loss(tp, x, t):
    return torch.nn.functional.cross_entropy(torch.tanh(x @ tp["W1"] + tp["b1"]) @ tp["W2"] + tp["b2"], t)


def torch_run(params, data, make_optimizer, make_schedule=None, clip=None):
    """Losses and final params of ``len(data)`` steps of torch.optim on the same model."""
    tp = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    optimizer = make_optimizer(list(tp.values()))
    schedule = make_schedule(optimizer) if make_schedule else None
    losses = []
    for batch in data:
        loss = torch_loss(tp, torch.from_numpy(batch["x"]), torch.from_numpy(batch["t"]))
        optimizer.zero_grad()
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(list(tp.values()), clip)
        optimizer.step()
        if schedule is not None:
            schedule.step()
        losses.append(loss.item())
    return np.array(losses), {k: v.detach().numpy() for k, v in tp.items()}


def graphc_run(optimizer, dtype, data, params):
    prog = gc.compile(mlp(dtype), loss="loss", optimizer=optimizer)
    state = prog.init_state(params)
    losses = [float(prog.train_step(params, batch, state)["loss"]) for batch in data]
    return np.array(losses), params, state


def warmup_cosine(o):
    return sched.SequentialLR(o, [sched.LinearLR(o, 0.1, 1.0, 10), sched.CosineAnnealingLR(o, 90)], [10])


S = gc.schedules
CASES = {  # name: (graphc optimizer, torch optimizer, torch schedule, torch clipping)
    "sgd": (gc.SGD(0.1), lambda p: torch.optim.SGD(p, 0.1), None, None),
    "momentum": (gc.SGD(0.1, momentum=0.9), lambda p: torch.optim.SGD(p, 0.1, momentum=0.9), None, None),
    "momentum_dampening_wd": (gc.SGD(0.1, momentum=0.8, dampening=0.3, weight_decay=0.01),
                              lambda p: torch.optim.SGD(p, 0.1, momentum=0.8, dampening=0.3, weight_decay=0.01),
                              None, None),
    "nesterov_wd": (gc.SGD(0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
                    lambda p: torch.optim.SGD(p, 0.05, momentum=0.9, nesterov=True, weight_decay=1e-3), None, None),
    "sgd_clip_step": (gc.SGD(0.5, clip_grad_norm=0.3, schedule=S.step(30, gamma=0.5)),
                      lambda p: torch.optim.SGD(p, 0.5), lambda o: sched.StepLR(o, 30, 0.5), 0.3),
    "adam": (gc.Adam(0.01), lambda p: torch.optim.Adam(p, 0.01), None, None),
    "adam_wd_amsgrad": (gc.Adam(0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.05, amsgrad=True),
                        lambda p: torch.optim.Adam(p, 0.01, (0.8, 0.99), 1e-6, 0.05, amsgrad=True), None, None),
    "adamw": (gc.AdamW(0.01), lambda p: torch.optim.AdamW(p, 0.01), None, None),
    "adamw_amsgrad_clip": (gc.AdamW(0.02, weight_decay=0.1, amsgrad=True, clip_grad_norm=0.5),
                           lambda p: torch.optim.AdamW(p, 0.02, weight_decay=0.1, amsgrad=True), None, 0.5),
    "adam_cosine": (gc.Adam(0.02, schedule=S.cosine(60, min_lr=1e-3)), lambda p: torch.optim.Adam(p, 0.02),
                    lambda o: sched.CosineAnnealingLR(o, 60, eta_min=1e-3), None),
    "adam_warmup_cosine": (gc.Adam(0.02, schedule=S.linear_warmup(10, 0.1, then=S.cosine(90))),
                           lambda p: torch.optim.Adam(p, 0.02), warmup_cosine, None),
    "momentum_step_times_warmup": (gc.SGD(0.2, momentum=0.5, schedule=S.step(25, 0.5) * S.linear_warmup(8, 0.25)),
                                   lambda p: torch.optim.SGD(p, 0.2, momentum=0.5),
                                   lambda o: sched.ChainedScheduler([sched.StepLR(o, 25, 0.5),
                                                                     sched.LinearLR(o, 0.25, 1.0, 8)]), None),
}
DEFAULT = {"float64": ["momentum_dampening_wd", "nesterov_wd", "sgd_clip_step", "adam", "adam_wd_amsgrad",
                       "adamw_amsgrad_clip", "adam_warmup_cosine", "momentum_step_times_warmup"],
           "float32": ["momentum", "adamw_amsgrad_clip"]}
GRID = [pytest.param(name, dtype, marks=() if name in DEFAULT[dtype] else pytest.mark.slow)
        for dtype in ("float64", "float32") for name in CASES]


@pytest.mark.parametrize("name,dtype", GRID)
def test_steps_match_torch_optim(name, dtype):
    optimizer, make_torch, make_schedule, clip = CASES[name]
    data = batches(dtype)
    initial = gc.init_params(mlp(dtype), seed=3)
    expected_losses, expected = torch_run(initial, data, make_torch, make_schedule, clip)
    losses, params, state = graphc_run(optimizer, dtype, data, {k: v.copy() for k, v in initial.items()})
    assert rel_error(losses, expected_losses) <= TOL[dtype]
    for k in expected:
        assert rel_error(params[k], expected[k]) <= TOL[dtype], k
    if "step" in state:
        assert int(state["step"]) == STEPS


def test_lr_passed_to_a_step_wins_over_the_schedule():
    data = batches("float64", steps=4)
    initial = gc.init_params(mlp("float64"), seed=3)
    prog = gc.compile(mlp("float64"), loss="loss", optimizer=gc.Adam(0.01, schedule=S.cosine(10)))
    params = {k: v.copy() for k, v in initial.items()}
    state = prog.init_state(params)
    for batch, lr in zip(data, (None, 0.05, None, 0.2)):
        prog.train_step(params, batch, state, **({} if lr is None else {"lr": lr}))
    torch_lrs = [0.01 * (1 + np.cos(np.pi * k / 10)) / 2 if lr is None else lr
                 for k, lr in enumerate((None, 0.05, None, 0.2))]  # the cosine's, but where a step was given one

    def scheduled(o):
        return sched.LambdaLR(o, lambda k: torch_lrs[k] / 0.01 if k < 4 else 1.0)

    _, expected = torch_run(initial, data, lambda p: torch.optim.Adam(p, 0.01), scheduled)
    for k in expected:
        assert rel_error(params[k], expected[k]) <= 1e-10, k


def dp_torch_run(params, data, make_optimizer, clip):
    """torch.optim fed DP-SGD's gradient: every example's gradient clipped to norm ``clip``, then averaged."""
    tp = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    optimizer, losses = make_optimizer(list(tp.values())), []
    for batch in data:
        per_example = []
        x, t = torch.from_numpy(batch["x"]), torch.from_numpy(batch["t"])
        for i in range(len(t)):
            per_example.append(torch.autograd.grad(torch_loss(tp, x[i:i + 1], t[i:i + 1]), list(tp.values())))
        scales = [1 / max(1.0, torch.sqrt(sum((g ** 2).sum() for g in grads)).item() / clip) for grads in per_example]
        for k, p in enumerate(tp.values()):
            p.grad = sum(s * grads[k] for s, grads in zip(scales, per_example)) / len(per_example)
        with torch.no_grad():
            losses.append(torch_loss(tp, x, t).item())
        optimizer.step()
    return np.array(losses), {k: v.detach().numpy() for k, v in tp.items()}


@pytest.mark.parametrize("optimizer,make_torch", [
    (gc.Adam(0.01, clip_per_example=0.5), lambda p: torch.optim.Adam(p, 0.01)),
    (gc.SGD(0.1, momentum=0.9, clip_per_example=0.5), lambda p: torch.optim.SGD(p, 0.1, momentum=0.9))])
def test_dp_sgd_gradients_feed_any_update_rule(optimizer, make_torch):
    data = batches("float64", steps=20)
    initial = gc.init_params(mlp("float64"), seed=3)
    expected_losses, expected = dp_torch_run(initial, data, make_torch, 0.5)
    losses, params, _ = graphc_run(optimizer, "float64", data, {k: v.copy() for k, v in initial.items()})
    assert rel_error(losses, expected_losses) <= 1e-10
    for k in expected:
        assert rel_error(params[k], expected[k]) <= 1e-10, k


# -- CuPy: the same steps on a GPU, or on the emulated one -------------------------------------------------------
GPU_CASES = ["momentum_dampening_wd", "nesterov_wd", "adam_wd_amsgrad", "adamw_amsgrad_clip", "adam_warmup_cosine"]


@pytest.mark.gpu
@pytest.mark.parametrize("name", GPU_CASES)
def test_gpu_steps_match_numpy(name):
    cp = cupy_or_skip()
    optimizer = CASES[name][0]
    cpu, gpu = (gc.compile(mlp("float64"), backend=b, loss="loss", optimizer=optimizer) for b in ("numpy", "cupy"))
    host, device = cpu.init_params(seed=3), gpu.init_params(seed=3)
    host_state, device_state = cpu.init_state(host), gpu.init_state(device)
    for batch in batches("float64", steps=5):
        expected = cpu.train_step(host, batch, host_state)["loss"]
        assert rel_error(cp.asnumpy(gpu.train_step(device, batch, device_state)["loss"]), expected) <= 1e-10
    for k in host:
        assert rel_error(cp.asnumpy(device[k]), host[k]) <= 1e-10, k
    for k in host_state:
        assert rel_error(cp.asnumpy(cp.asarray(device_state[k])), host_state[k]) <= 1e-10, k


@pytest.mark.parametrize("optimizer", [gc.SGD(0.1, momentum=0.9, nesterov=True, weight_decay=0.1),
                                       gc.AdamW(amsgrad=True, clip_grad_norm=1.0)])
def test_cupy_updates_each_param_and_its_state_in_one_kernel(optimizer):
    source = gc.compile(mlp("float32"), backend="cupy", loss="loss", optimizer=optimizer).source
    body = source[source.index("def _train("):]
    body = body[:body.index("    return {")].splitlines()[1:]
    statements = [line.split("  #")[0].strip() for line in body if not line.strip().startswith("#")]
    for param in ("W1", "b1", "W2", "b2"):  # the param and its state are written by one launch, together
        arrays = [param, *(f"{slot}_{param}" for slot in ("m", "v", "vmax", "momentum")
                           if re.search(rf"\b{slot}_{param}\b", source))]
        writers = [s for s in statements if any(s.endswith(f", {a})") or f"out={a})" in s for a in arrays)]
        assert len(writers) == 1 and writers[0].startswith("fused_update("), writers
        assert writers[0].endswith(", ".join(arrays[1:] + arrays[:1]) + ")"), writers
