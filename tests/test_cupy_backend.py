"""The CuPy backend.

Statically: the emitted module parses, imports nothing from graphc, is the same across builds, and every
kernel body compiles with nvcc inside a small ``__global__`` harness. On a GPU, or on the emulated one of
tests/emulated_gpu where there is none (the ``gpu`` tests): every op and model, at every opt level, matches
the reference evaluator.
"""
import ast
import re
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
    for dtype in ("float64", "float32"):
        yield f"edges_{dtype}", edge_graph(dtype), None


def edge_graph(dtype):
    """C's corners: integer operands of a quotient or a negative power, an infinite constant, a comparison read
    as a number, sigmoid's capped exponent."""
    m = gc.dim("m")
    with gc.Graph("edges") as g:
        i, x = gc.input("i", (m, 3), dtype="int64"), gc.input("x", (m, 3), dtype=dtype)
        g.output(quotient=3 / (i * i), power=i ** -2, huge=x / 1e-310, flag=(x > 0) * x, s=gc.sigmoid(x))
    return g


# -- the source -------------------------------------------------------------------------------------
def kernels(source):
    """(kind, name, positional string args, preamble) of every module-level CuPy kernel in ``source``."""
    found = []
    for stmt in ast.parse(source).body:
        call = getattr(stmt, "value", None)
        if isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr.endswith("Kernel"):
            args = [a.value for a in call.args]
            keywords = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
            preamble = keywords.get("preamble", "")
            if "reduce_type" in keywords:
                preamble += f"\ntypedef {keywords['reduce_type']} _type_reduce;"
            found.append((call.func.attr, stmt.targets[0].id, args, preamble))
    return found


def c_params(params: str, t: str) -> list[tuple[bool, str, str]]:
    """(raw, C type, name) of each ``[raw] type name`` entry; the placeholder ``T`` stands for ``t``."""
    out = []
    for entry in params.split(", "):
        words = entry.split()
        raw = words[0] == "raw"
        dtype, name = words[-2], words[-1]
        out.append((raw, t if dtype == "T" else C_TYPES[dtype], name))
    return out


def harness(tag, kind, args, preamble, t="double"):
    """A ``__global__`` function that runs the kernel body once with its declared parameter types: raw arrays as
    pointers, the loop index ``i`` as CuPy provides it, outputs read and written through pointers (as CuPy's
    references to them allow)."""
    ins, outs = c_params(args[0], t), c_params(args[1], t)
    params = [f"{c}* {n}" if raw else f"{c} {n}" for raw, c, n in ins]
    params += [f"{c}* {n}" if raw else f"{c}* {n}_out" for raw, c, n in outs]
    loads = " ".join(f"{c} {n} = *{n}_out;" for raw, c, n in outs if not raw)
    stores = " ".join(f"*{n}_out = {n};" for raw, c, n in outs if not raw)
    if kind == "ElementwiseKernel":
        body = f"const ptrdiff_t i = threadIdx.x; {loads} {args[2]} {stores}"
    else:  # one element mapped, reduced with the identity, the result written by the post-map
        (_, c, n), = outs
        own = "" if "_type_reduce;" in preamble else f"typedef {c} _type_reduce; "
        body = (f"{own}_type_reduce _s = _type_reduce({args[5]}); "
                f"_type_reduce _m = static_cast<_type_reduce>({args[2]}); "
                f"{{ _type_reduce a = _s, b = _m; _s = ({args[3]}); }} {loads} "
                f"{{ _type_reduce a = _s; {args[4]}; }} {stores}")
    return (f"namespace {tag}_ {{ typedef {t} T;\n{preamble}\n"  # T per kernel; an unmangled entry name
            f"extern \"C\" __global__ void {tag}({', '.join(params)}) {{ {body} }} }}\n")


def float32_only(args) -> bool:
    return "float64" not in args[0] + args[1]


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


def compiled_kernels(tmp_path, graphs):
    """PTX of every distinct kernel of the modules of ``graphs`` (all opt levels), one file per kernel type:
    {(kernel, C type of T): ptx text}."""
    nvcc = shutil.which("nvcc") or (shutil.which("/usr/local/bin/nvcc"))
    if nvcc is None:
        pytest.skip("nvcc not found")
    units, seen = {}, set()
    for tag, g, optimizer in graphs:
        for opt_level in LEVELS:
            for kind, name, args, preamble in kernels(sources(g, opt_level, optimizer)):
                for t in ("float", "double") if "T " in args[0] + args[1] else ("double",):
                    key = (kind, tuple(args), preamble, t)
                    if key not in seen:
                        seen.add(key)
                        unique = f"k{len(units)}_{tag}_O{opt_level}_{name.strip('_')}"  # names repeat across modules
                        text = harness(unique, kind, [a.replace(name, unique) for a in args],
                                       preamble.replace(name, unique), t)
                        units[unique] = (text, float32_only(args) and t == "float")
    assert units
    path = tmp_path / "kernels.cu"
    path.write_text("".join(text for text, _ in units.values()))
    ptx = tmp_path / "kernels.ptx"
    done = subprocess.run([nvcc, "--ptx", "-diag-suppress", "177", str(path), "-o", str(ptx)], capture_output=True,
                          text=True, check=False)
    assert done.returncode == 0, "\n".join(l for l in done.stderr.splitlines() if "error" in l)[:4000]
    text = ptx.read_text()
    return {unique: (text.split(f".entry {unique}")[1].split(".entry ")[0], single)
            for unique, (_, single) in units.items()}


def test_every_kernel_compiles_with_nvcc(tmp_path):
    compiled_kernels(tmp_path, all_graphs())


def test_float32_kernels_compute_in_float32(tmp_path):
    """No double arithmetic in a kernel whose data is float32: on many GPUs it runs at 1/64 of the speed."""
    graphs = [(n, g, o) for n, g, o in all_graphs() if "float32" in n]
    doubles = [name for name, (ptx, single) in compiled_kernels(tmp_path, graphs).items()
               if single and re.search(r"\.f64\b", ptx)]
    assert not doubles, doubles


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
