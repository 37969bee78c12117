"""``graphc build | show | check | explain MODEL.py``: the command line."""
from __future__ import annotations

import argparse
import runpy
import sys
import traceback
from pathlib import Path

import numpy as np

from graphc.errors import GraphError
from graphc.ir import Graph


class ModelError(Exception):
    """MODEL.py could not be loaded; the message names the file and line."""


def load_graphs(path: str, only: str | None = None) -> list[Graph]:
    """Run MODEL.py and collect the ``gc.Graph`` objects it defines at module level; import MODEL.onnx."""
    file = Path(path)
    if not file.is_file():
        raise ModelError(f"{path}: no such file")
    if file.suffix == ".onnx":
        from graphc.onnx import from_onnx
        try:
            return [from_onnx(file)]
        except GraphError as exc:
            message = str(exc)
            raise ModelError(message if message.startswith(f"{path}:") else f"{path}: {message}") from None
    try:
        namespace = runpy.run_path(str(file), run_name="__graphc_model__")
    except GraphError as exc:
        raise ModelError(f"{_where(exc, file)}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - any error in the user's file is reported, not re-raised
        raise ModelError(f"{_where(exc, file)}: {type(exc).__name__}: {exc}") from None
    graphs = [v for v in namespace.values() if isinstance(v, Graph)]
    if only is not None:
        graphs = [g for g in graphs if g.name == only]
    if not graphs:
        raise ModelError(f"{path}: defines no gc.Graph" + (f" named {only!r}" if only else "")
                         + " at module level")
    return graphs


def _where(exc: BaseException, file: Path) -> str:
    """``file:line`` of the deepest frame of the traceback that is in the user's file."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if Path(f.filename).resolve() == file.resolve()]
    if isinstance(exc, SyntaxError) and exc.lineno:
        return f"{file}:{exc.lineno}"
    return f"{file}:{frames[-1].lineno}" if frames else str(file)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="graphc", description="Symbolic computational-graph compiler.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (adder, _) in COMMANDS.items():
        p = sub.add_parser(name, help=adder.__doc__)
        p.add_argument("model", help="a Python file defining gc.Graph objects at module level")
        p.add_argument("--graph", help="only the graph of this name")
        adder(p)
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command][1](args) or 0
    except (ModelError, GraphError) as exc:
        print(f"graphc {args.command}: {exc}", file=sys.stderr)
        return 2


COMMANDS: dict = {}


def command(name: str, adder):
    def register(fn):
        COMMANDS[name] = (adder, fn)
        return fn
    return register


def _compile_args(p) -> None:
    p.add_argument("-O", dest="opt_level", type=int, choices=(0, 1, 2), default=2, help="optimization level")
    p.add_argument("--backend", choices=("numpy", "cupy"), default="numpy")
    p.add_argument("--loss", help="output to train on (default: 'loss' when the graph has it)")
    p.add_argument("--lr", type=float, default=0.01, help="SGD learning rate of the training step")
    p.add_argument("--disable", nargs="*", default=(), metavar="PASS", help="passes to switch off")


def _build_args(p) -> None:
    p.add_argument("-o", "--out", default="build", help="output directory (default: build)")
    p.add_argument("--force", action="store_true", help="overwrite files graphc did not generate")
    _compile_args(p)


def _compile(g, args):
    from graphc.program import compile as compile_graph
    from graphc.train import SGD
    loss = args.loss or ("loss" if "loss" in g.outputs and g.params else None)
    return compile_graph(g, backend=args.backend, opt_level=args.opt_level, loss=loss,
                         optimizer=SGD(args.lr) if loss else None, disable=tuple(args.disable))


@command("build", _build_args)
def build(args) -> int:
    """Write DIR/<graph>_<backend>.py for each graph in MODEL.py."""
    from graphc.files import safe_write
    for g in load_graphs(args.model, args.graph):
        prog = _compile(g, args)
        path = safe_write(Path(args.out) / f"{g.name}_{args.backend}.py", prog.source, force=args.force)
        steps = "run, init_params" + (", train_step" if "def train_step" in prog.source else "")
        print(f"wrote {path} ({steps})")
        if getattr(g, "initial_params", None):  # an imported model's trained weights
            params = Path(args.out) / f"{g.name}_params.npz"
            np.savez(params, **g.initial_params)
            print(f"wrote {params} (the model's parameters: params = dict(np.load(path)))")
    return 0


@command("explain", _compile_args)
def explain(args) -> int:
    """Print what each optimization pass did, and the cost of the emitted code."""
    from graphc.explain import report
    for g in load_graphs(args.model, args.graph):
        print(report(g, _compile(g, args)))
    return 0


def _check_args(p) -> None:
    p.add_argument("--loss", default="loss", help="scalar output to differentiate (default: loss)")
    p.add_argument("--dims", nargs="*", default=(), metavar="NAME=SIZE", help="sizes of symbolic dims (default 3)")
    p.add_argument("--tol", type=float, help="max relative error (default: 1e-4 for float32 graphs, 1e-6 float64)")
    p.add_argument("-O", dest="opt_level", type=int, choices=(0, 1, 2), default=2, help="opt level of the module")
    p.add_argument("--max-entries", type=int, default=100, help="entries per param compared (sampled beyond)")
    p.add_argument("--inputs", action="store_true", help="also check gradients w.r.t. float inputs")
    p.add_argument("--seed", type=int, default=0, help="seed of the random feeds")


@command("check", _check_args)
def check(args) -> int:
    """Compare every parameter gradient with finite differences (in float64); exit 1 above tolerance."""
    from graphc.check import check_graph, parse_dims, table
    dims, failed = parse_dims(args.dims), False
    for g in load_graphs(args.model, args.graph):
        rows = check_graph(g, args.loss, dims, args.tol, args.opt_level, args.max_entries, args.inputs, args.seed)
        bad = [r.name for r in rows if not r.ok]
        failed = failed or bool(bad)
        print(f"graph {g.name!r}: gradients of {args.loss!r} vs central differences (float64, tolerance "
              f"{rows[0].tol:g})")
        print(table(rows))
        print(f"FAIL: {', '.join(bad)} above tolerance" if bad else "all gradients match")
    return 1 if failed else 0


def _show_arguments(parser):
    """Draw a stage of the compilation as DOT, SVG, PNG or Mermaid."""
    from graphc.viz import show_arguments
    show_arguments(parser)


@command("show", _show_arguments)
def show(args) -> int:
    from graphc.viz import show
    return show(args)


if __name__ == "__main__":
    sys.exit(main())
