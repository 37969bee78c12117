"""The CuPy backend.

Statically: the emitted module parses, imports nothing from graphc, is the same across builds, and every
kernel body compiles with nvcc inside a small ``__global__`` harness. On a GPU, or on the emulated one of
tests/emulated_gpu where there is none (the ``gpu`` tests): every op and model, at every opt level, matches
the reference evaluator.
"""
import ast
import shutil
import subprocess

import numpy as np
import pytest

import graphc as gc
from graphc.backends.cupy import C_TYPES
from graphc.transforms.gradcheck import rel_error

from helpers import cupy_or_skip, op_graph, random_feeds
from models import MODELS, feeds_with_params
from test_op_gradients import CASES

TOL = {"float64": 1e-10, "float32": 1e-5}
LEVELS = [0, 1, 2]
OP_CASES = [(op, i) for op, cases in CASES.items() for i in range(len(cases))]


def case_graph(op, index):
    fn, shapes, _ = CASES[op][index]
    return op_graph(fn, *shapes)


def sources(g, opt_level, optimizer=None):
    """The emitted module, with a training step where the graph has a loss."""
    trainable = g.params and "loss" in g.outputs and not g.nodes[g.outputs["loss"]].shape
    loss = "loss" if trainable else None
    return gc.compile(g, backend="cupy", opt_level=opt_level, loss=loss, optimizer=optimizer if loss else None).source


OPTIMIZERS = [gc.SGD(0.1, momentum=0.9, dampening=0.1, weight_decay=0.01, clip_grad_norm=1.0),
              gc.Adam(weight_decay=0.01, amsgrad=True), gc.AdamW(schedule=gc.schedules.cosine(100))]


def all_graphs():
    for op, index in OP_CASES:
        yield f"{op}{index}", case_graph(op, index), None
    for name in sorted(MODELS):
        for dtype in ("float64", "float32"):
            yield f"{name}_{dtype}", MODELS[name](dtype=dtype)[0], None
    for k, optimizer in enumerate(OPTIMIZERS):  # fused updates: one kernel writing a param and its state
        for dtype in ("float64", "float32"):
            yield f"mlp_{dtype}_optimizer{k}", MODELS["mlp"](dtype=dtype)[0], optimizer


# -- the source -------------------------------------------------------------------------------------
def kernels(source):
    """(kind, name, positional string args, preamble) of every module-level CuPy kernel in ``source``."""
    found = []
    for stmt in ast.parse(source).body:
        call = getattr(stmt, "value", None)
        if isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr.endswith("Kernel"):
            args = [a.value for a in call.args]
            preamble = {k.arg: k.value.value for k in call.keywords}.get("preamble", "")
            found.append((call.func.attr, stmt.targets[0].id, args, preamble))
    return found


def c_params(params: str) -> list[str]:
    return [f"{C_TYPES[t]} {n}" for t, n in (p.split() for p in params.split(", "))]


def harness(tag, kind, args, preamble):
    """A ``__global__`` function that evaluates the kernel body once with its declared parameter types (outputs
    read and written through pointers, as CuPy's references to them allow)."""
    in_params, out_params = args[0], args[1]
    outs = [out.rsplit(" ", 1) for out in c_params(out_params)]
    params = ", ".join([*c_params(in_params), *(f"{t}* {n}_out" for t, n in outs)])
    if kind == "ElementwiseKernel":
        body = " ".join([*(f"{t} {n} = *{n}_out;" for t, n in outs), args[2], *(f"*{n}_out = {n};" for _, n in outs)])
    else:
        body = f"*{outs[0][1]}_out = {args[2]};"
    return f"{preamble}\n__global__ void {tag}({params}) {{ {body} }}\n"


@pytest.mark.parametrize("opt_level", LEVELS)
@pytest.mark.parametrize("op,index", OP_CASES)
def test_every_op_case_emits_a_standalone_module(op, index, opt_level):
    g = case_graph(op, index)
    source = sources(g, opt_level)
    tree = ast.parse(source)
    imported = {a.name for s in ast.walk(tree) if isinstance(s, ast.Import) for a in s.names}
    imported |= {s.module for s in ast.walk(tree) if isinstance(s, ast.ImportFrom)}
    trains = "def train_step(" in source  # os: checkpoints are written atomically (a rename)
    assert imported == {"cupy", "numpy", "threading", *(["os"] if trains else [])}  # threading: buffers per thread
    assert source == sources(case_graph(op, index), opt_level)


@pytest.mark.parametrize("opt_level", LEVELS)
@pytest.mark.parametrize("name", sorted(MODELS))
def test_models_emit_fused_kernels_and_cublas_matmuls(name, opt_level):
    g, _ = MODELS[name](dtype="float32")
    source = sources(g, opt_level)
    ast.parse(source)
    assert "graphc" not in "".join(line for line in source.splitlines() if "import" in line)
    assert source == sources(MODELS[name](dtype="float32")[0], opt_level)
    assert "cp.ElementwiseKernel(" in source
    if "matmul" in source:
        assert "cp.matmul(" in source


def test_every_kernel_compiles_with_nvcc(tmp_path):
    nvcc = shutil.which("nvcc") or (shutil.which("/usr/local/bin/nvcc"))
    if nvcc is None:
        pytest.skip("nvcc not found")
    units, seen = [], set()
    for tag, g, optimizer in all_graphs():
        for opt_level in LEVELS:
            for kind, name, args, preamble in kernels(sources(g, opt_level, optimizer)):
                key = (kind, tuple(args), preamble)
                if key not in seen:
                    seen.add(key)
                    unique = f"k{len(units)}_{tag}_O{opt_level}_{name}"  # kernel names repeat across modules
                    args = [a.replace(name, unique) for a in args]
                    units.append(harness(unique, kind, args, preamble.replace(name, unique)))
    assert units
    path = tmp_path / "kernels.cu"
    path.write_text("".join(units))
    done = subprocess.run([nvcc, "--ptx", str(path), "-o", str(tmp_path / "kernels.ptx")],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-4000:]


# -- run: on a GPU or the emulated one -------------------------------------------------------------
def assert_matches_reference(g, feeds, opt_level, dtype="float64"):
    cp = cupy_or_skip()
    expected = g.evaluate(feeds)
    got = gc.compile(g, backend="cupy", opt_level=opt_level)(feeds)
    assert set(got) == set(expected)
    for name in expected:
        assert isinstance(got[name], cp.ndarray), name
        value = cp.asnumpy(got[name])
        assert value.shape == expected[name].shape, name
        assert rel_error(value, expected[name]) <= TOL[dtype], name


@pytest.mark.gpu
@pytest.mark.parametrize("opt_level", LEVELS)
@pytest.mark.parametrize("op,index", OP_CASES)
def test_gpu_every_op_case_matches_reference(op, index, opt_level):
    fn, shapes, opts = CASES[op][index]
    g = op_graph(fn, *shapes)
    assert_matches_reference(g, random_feeds(g, seed=index, **opts), opt_level)


@pytest.mark.gpu
@pytest.mark.parametrize("opt_level", LEVELS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_gpu_models_match_reference(name, dtype, opt_level):
    g, feeds = MODELS[name](dtype=dtype)
    assert_matches_reference(g, feeds_with_params(g, feeds), opt_level, dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("name", sorted(MODELS))
def test_gpu_train_step_matches_numpy(name):
    cp = cupy_or_skip()
    g, feeds = MODELS[name](dtype="float64")
    if "loss" not in g.outputs:
        pytest.skip("no loss")
    cpu, gpu = (gc.compile(g, backend=b, loss="loss") for b in ("numpy", "cupy"))
    host, device = cpu.init_params(seed=1), gpu.init_params(seed=1)
    batch = {k: v for k, v in feeds.items() if k in g.inputs}
    for _ in range(3):
        cpu.train_step(host, batch)
        gpu.train_step(device, batch)
    for k in host:
        assert rel_error(cp.asnumpy(device[k]), host[k]) <= TOL["float64"], k
    np.testing.assert_equal(set(device), set(host))
