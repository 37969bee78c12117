"""The package's structure: layers whose imports only go down, and op facts kept on the ops.

The import graph is read with ``ast`` from every module, imports inside functions included: no cycle, and no
module imports one of a higher layer. No op name stands in a list, tuple, set or dict of another module: what
an op is (a view, linear, a source, its batch rule, …) lives on its ``Op`` record, and a backend's lowerings
are the only other place that names it. Allowed: a pass's rules dispatched by op (``Rebuild.run({op: rule})``,
a rewrite names the ops it matches), the public ``__all__``, and the kinds of sources (the values of the
``source`` trait, which are the names of the source ops themselves).
"""
import ast
from pathlib import Path

import networkx as nx

import graphc as gc

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"graphc": ROOT / "graphc", "graphc.backends": ROOT / "backends"}

# lowest first; a module belongs to the layer of its longest listed prefix
LAYERS = [
    ["graphc.core"],
    ["graphc.dsl"],
    ["graphc.ops"],
    ["graphc.transforms"],
    ["graphc.passes", "graphc.optim"],
    ["graphc.backends", "graphc.viz"],
    ["graphc.program", "graphc.api"],
    ["graphc.cli", "graphc.onnx", "graphc.dask"],
    ["graphc"],
]
LOWERING_FILES = ("lowering.py", "conv.py", "kernels.py")  # a backend's lowerings name the ops they lower


def allowed_displays(tree) -> set[int]:
    """ids of the displays that may name ops: ``__all__`` and the rule tables of ``Rebuild.run``."""
    ok = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            ok.add(id(node.value))
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "run":
            ok.update(id(a) for a in node.args)
    return ok


def modules() -> dict[str, Path]:
    found = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            if package == "graphc" and PACKAGES["graphc.backends"] in path.parents:
                continue
            parts = path.relative_to(folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join((package, *parts))] = path
    return found


def layer(module: str) -> int:
    best = max((p for names in LAYERS for p in names if module == p or module.startswith(p + ".")), key=len)
    return next(i for i, names in enumerate(LAYERS) if best in names)


def import_graph() -> nx.DiGraph:
    mods = modules()
    graph = nx.DiGraph()
    for name, path in mods.items():
        graph.add_node(name)
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the module's package
                    pkg = name.split(".") if is_package else name.split(".")[:-1]
                    base = ".".join(pkg[:len(pkg) - node.level + 1] + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            else:
                continue
            for target in targets:
                while target not in mods and "." in target:
                    target = target.rsplit(".", 1)[0]
                if target in mods and target != name:
                    graph.add_edge(name, target)
    return graph


def test_the_import_graph_has_no_cycle():
    graph = import_graph()
    cycles = list(nx.simple_cycles(graph))
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c + c[:1]) for c in cycles[:5])


def test_imports_only_go_down():
    upward = [f"{a} (layer {layer(a)}) imports {b} (layer {layer(b)})"
              for a, b in import_graph().edges if layer(b) > layer(a)]
    assert not upward, "\n".join(upward)


def test_every_module_has_a_layer():
    for name in modules():
        layer(name)


def test_no_op_name_is_listed_outside_its_definition_and_lowerings():
    sources = {op.source for op in gc.OPS.values() if op.source}
    names = set(gc.OPS) - sources
    found = []
    for name, path in modules().items():
        if name.startswith("graphc.ops") or path.name in LOWERING_FILES:
            continue
        tree = ast.parse(path.read_text())
        ok = allowed_displays(tree)
        for node in ast.walk(tree):
            if id(node) in ok:
                continue
            if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
                items = node.elts
            elif isinstance(node, ast.Dict):
                items = [k for k in node.keys if k is not None]
            else:
                continue
            listed = [e.value for e in items if isinstance(e, ast.Constant) and e.value in names]
            if listed:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {listed}")
    assert not found, "op names listed outside the ops:\n" + "\n".join(found)


# -- the op table: a new op cannot be half-added ------------------------------------------------------------
def test_every_computed_op_has_a_lowering_in_every_backend():
    from graphc.backends import BACKENDS
    computed = {name for name, op in gc.OPS.items() if not op.given}
    for backend, module in BACKENDS.items():
        missing = computed - set(module.LOWERINGS)
        assert not missing, f"{backend} backend has no lowering for {sorted(missing)}"


def test_every_elementwise_function_is_lowered_by_every_backend():
    from graphc.ops.elementwise import FUNCTIONS
    for fn in FUNCTIONS.values():
        assert fn.numpy or fn.expand or fn.helper, f"{fn.name}: no NumPy lowering"
        assert fn.c or fn.expand, f"{fn.name}: no C lowering"


def test_every_forward_op_has_a_batch_rule_or_says_why_not():
    gradient_only = {"conv2d_input_grad", "conv2d_weight_grad", "max_pool2d_grad", "max_pool2d_gather",
                     "avg_pool2d_grad", "sum_ew", "softmax_xent_grad",
                     "fused_update"}  # made by VJPs and passes, never batched
    missing = {name for name, op in gc.OPS.items()
               if not op.source and op.batch_axis is None and name not in gradient_only}
    assert not missing, f"ops without a batch rule: {sorted(missing)}"
