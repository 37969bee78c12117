"""The command line: ``graphc build | show | check | explain | explore | train MODEL.py`` (the top layer: it may
use every other)."""
from __future__ import annotations

import argparse
import runpy
import sys
import traceback
from pathlib import Path

import numpy as np

from graphc.backends import BACKENDS
from graphc.cli import optimizer
from graphc.cli import train as training
from graphc.cli.check import check_graph, parse_dims, table
from graphc.cli.explain import report
from graphc.cli.explore import explore as write_explorer
from graphc.core.errors import GraphError
from graphc.core.files import safe_write
from graphc.core.ir import Graph
from graphc.onnx import from_onnx
from graphc.optim import training_graph
from graphc.program import compile as compile_graph
from graphc.viz import STAGES, render, render_passes, to_dot


class ModelError(Exception):
    """MODEL.py could not be loaded; the message names the file and line."""


def load_graphs(path: str, only: str | None = None) -> list[Graph]:
    """Run MODEL.py and collect the ``gc.Graph`` objects it defines at module level; import MODEL.onnx."""
    file = Path(path)
    if not file.is_file():
        raise ModelError(f"{path}: no such file")
    if file.suffix == ".onnx":
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
    graphs = list({id(g): g for g in graphs}.values())  # a graph bound to two names is one graph
    names = [g.name for g in graphs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ModelError(f"{path}: two graphs are named {twice[0]!r}; each graph's files are named after it, so "
                         "give them different names")
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
    p.add_argument("--backend", choices=tuple(BACKENDS), default="numpy")
    p.add_argument("--loss", help="output to train on (default: 'loss' when the graph has it)")
    optimizer.add_arguments(p)
    p.add_argument("--disable", nargs="*", default=(), metavar="PASS", help="passes to switch off")


def _build_args(p) -> None:
    p.add_argument("-o", "--out", default="build", help="output directory (default: build)")
    p.add_argument("--force", action="store_true", help="overwrite files graphc did not generate")
    p.add_argument("--predict", nargs="+", metavar="OUTPUT",
                   help="outputs predict computes (default: those the loss's labels do not reach)")
    _compile_args(p)


def _compile(g, args):
    loss = args.loss or ("loss" if "loss" in g.outputs and g.params else None)
    return compile_graph(g, backend=args.backend, opt_level=args.opt_level, loss=loss,
                         optimizer=optimizer.from_args(args) if loss else None, disable=tuple(args.disable),
                         predict=getattr(args, "predict", None))


@command("build", _build_args)
def build(args) -> int:
    """Write DIR/<graph>_<backend>.py for each graph in MODEL.py."""
    out = _out_dir(args)
    for g in load_graphs(args.model, args.graph):
        prog = _compile(g, args)
        if args.backend == "numpy":
            _ = prog.module  # imported once here, so a file that would not import is never reported as written
        path = write_module(g, prog, args)
        print(f"wrote {path} ({', '.join(entry_points(prog))})")
        if getattr(g, "initial_params", None):  # an imported model's trained weights
            params = out / f"{g.name}_params.npz"
            np.savez(params, **g.initial_params)
            print(f"wrote {params} (the model's parameters: params = dict(np.load(path)))")
    return 0


def _out_dir(args) -> Path:
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise GraphError(f"-o {args.out}: is a file, not a directory (the generated files go into a directory)")
    return out


def write_module(g, prog, args) -> Path:
    """DIR/<graph>_<backend>.py, never over a file graphc did not write unless --force."""
    return safe_write(_out_dir(args) / f"{g.name}_{args.backend}.py", prog.source, force=args.force)


def entry_points(prog) -> list[str]:
    names = ["run", "predict", "init_params", "init_state", "train_step", "grad_step", "apply_update", "save", "load"]
    return [n for n in names if f"\ndef {n}(" in prog.source]


def _train_args(p) -> None:
    training.add_arguments(p)
    _build_args(p)


@command("train", _train_args)
def train(args) -> int:
    """Build the model's module and train it on a Dask cluster (data-parallel, exact global batch means)."""
    graphs = load_graphs(args.model, args.graph)
    if len(graphs) > 1:
        raise GraphError(f"{args.model} defines {len(graphs)} graphs: choose one with --graph")
    g = graphs[0]
    if args.backend != "numpy":
        raise GraphError("graphc train runs NumPy modules (--backend numpy)")
    return training.train(args, write_module(g, _compile(g, args), args), g.name)


@command("explain", _compile_args)
def explain(args) -> int:
    """Print what each optimization pass did, and the cost of the emitted code."""
    for g in load_graphs(args.model, args.graph):
        print(report(g, _compile(g, args)))
    return 0


def _explore_args(p) -> None:
    p.add_argument("-o", "--output", metavar="FILE", help="the HTML file (default: <graph>_explore.html)")
    _compile_args(p)


@command("explore", _explore_args)
def explore(args) -> int:
    """Write one self-contained HTML page walking through the compilation: stages, passes, code, buffers."""
    graphs = load_graphs(args.model, args.graph)
    for g in graphs:
        path = Path(args.output or f"{g.name}_explore.html")
        if args.output and len(graphs) > 1:  # one file per graph
            path = path.with_name(f"{path.stem}-{g.name}{path.suffix}")
        loss = args.loss or ("loss" if "loss" in g.outputs and g.params else None)
        write_explorer(g, path, backend=args.backend, opt_level=args.opt_level, loss=loss,
                       optimizer=optimizer.from_args(args) if loss else None, disable=tuple(args.disable))
        print(f"wrote {path}")
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


def _show_args(parser) -> None:
    """Draw a stage of the compilation as DOT, SVG, PNG or Mermaid."""
    parser.add_argument("--stage", choices=STAGES, default="backward",
                        help="forward: the forward graph; backward (default): with its backward graph; "
                             "optimized: the graph the emitter sees")
    parser.add_argument("-o", "--output", metavar="FILE",
                        help="write FILE.svg, .png, .dot or .mmd (default: DOT text on standard output)")
    parser.add_argument("--each-pass", metavar="DIR",
                        help="write one numbered diagram per optimization pass into DIR")
    parser.add_argument("--format", choices=("svg", "png", "dot", "mmd"), default="svg",
                        help="file format of the --each-pass diagrams (default: svg)")
    parser.add_argument("-O", "--opt-level", type=int, choices=(0, 1, 2), default=2,
                        help="optimization level of the optimized stage and of --each-pass (default: 2)")
    parser.add_argument("--train", action="store_true",
                        help="draw the training step: every param's gradient of --loss and its update")
    parser.add_argument("--loss", default="loss", help="the output --train minimizes (default: loss)")
    optimizer.add_arguments(parser)
    parser.add_argument("--dpi", type=int, help="resolution of PNG files (Graphviz's default: 96)")
    parser.add_argument("--collapse", action="store_true",
                        help="draw the middle of each run of 3 or more repeated layers (W1, W2, … alike) as one node "
                             "per phase (SVG, PNG, DOT)")


@command("show", _show_args)
def show(args) -> int:
    """Draw a stage of the compilation as DOT, SVG, PNG or Mermaid."""
    graphs = load_graphs(args.model, args.graph)
    if args.train:
        graphs = [training_graph(g, args.loss, optimizer.from_args(args)) for g in graphs]
    for g in graphs:
        title = f"{g.name} · training step ({g.update_rule}) · {args.stage}" if args.train else None
        if args.output:
            path = Path(args.output)
            if len(graphs) > 1:  # one file per graph
                path = path.with_name(f"{path.stem}-{g.name}{path.suffix}")
            render(g, path, args.stage, opt_level=args.opt_level, title=title, dpi=args.dpi, collapse=args.collapse)
            print(f"wrote {path}")
        elif not args.each_pass:
            print(to_dot(g, args.stage, opt_level=args.opt_level, title=title, dpi=args.dpi, collapse=args.collapse),
                  end="")
        if args.each_pass:
            folder = Path(args.each_pass) / g.name if len(graphs) > 1 else Path(args.each_pass)
            fmt = "mermaid" if args.format == "mmd" else args.format
            for path in render_passes(g, folder, fmt, opt_level=args.opt_level, dpi=args.dpi):
                print(f"wrote {path}")
    return 0

