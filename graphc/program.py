"""The program layer: ``gc.compile`` (optimize a graph, emit a backend module, load it, run it) and the user's
``gc.Graph``, the IR's graph with the methods that reach up to the diagrams."""
from __future__ import annotations

import builtins
import contextlib
import gc as cyclic_gc
import types
from pathlib import Path

from graphc import viz
from graphc.backends import BACKENDS
from graphc.core import ir
from graphc.core.errors import GraphError
from graphc.core.files import write_atomic
from graphc.dsl import Tensor
from graphc.optim import SGD, grad_step_graph, training_graph, update_graph
from graphc.passes import optimize
from graphc.transforms.inference import (
    changes_in_inference,
    check_predicts,
    inference_graph,
    inputs_read,
    prediction_outputs,
)


class Graph(ir.Graph):
    """A static computation graph; also the ``with gc.Graph("name") as g:`` context of the DSL.

    ``g.output(**named)`` declares outputs, ``g["name"]`` is the tensor of an input, param or output,
    ``g.evaluate(feeds)`` is the reference interpreter,
    ``g.to_dot(stage)`` / ``g.to_mermaid(stage)`` draw it (forward, backward or optimized).
    """

    def __getitem__(self, name: str) -> Tensor:
        """The tensor of the input, param or output called ``name``: ``g["logits"]``."""
        for table in (self.inputs, self.params, self.outputs):
            if name in table:
                return Tensor(self, table[name])
        raise GraphError(f"graph {self.name!r} has no input, param or output {name!r} (inputs {list(self.inputs)}, "
                         f"params {list(self.params)}, outputs {list(self.outputs)})")

    def to_dot(self, stage: str = "forward", **kw) -> str:
        return viz.to_dot(self, stage=stage, **kw)

    def to_mermaid(self, stage: str = "forward", **kw) -> str:
        return viz.to_mermaid(self, stage=stage, **kw)


class Program:
    """A compiled graph: its generated source, the loaded module, and the pipeline's records."""

    def __init__(self, graph, backend: str, source: str, records, train_records=None, emitted=None):
        self.graph, self.backend, self.source = graph, backend, source
        self.records, self.train_records = records, train_records or []
        self.emitted = emitted or {}  # function name (_compute, _train) -> where its nodes are in the source
        self._module = None
        self.refused: GraphError | None = None  # why the module has no grad_step, where it has a training step

    @property
    def module(self) -> types.ModuleType:
        """The generated source, loaded as a module (executed once)."""
        if self._module is None:
            module = types.ModuleType(f"{self.graph.name}_{self.backend}")
            exec(builtins.compile(self.source, f"<graphc {self.graph.name}_{self.backend}>", "exec"), module.__dict__)  # noqa: S102
            self._module = module
        return self._module

    def __call__(self, feeds: dict, copy: bool = True) -> dict:
        return self.module.run(feeds, copy)

    def run(self, feeds: dict, copy: bool = True) -> dict:
        """The outputs; ``copy=False`` returns the module's reused buffers (valid until the next call)."""
        return self.module.run(feeds, copy)

    def predict(self, feeds: dict, copy: bool = True) -> dict:
        """The outputs that need no labels, in inference mode (no dropout) and without gradients: the module's
        ``predict``; feeds are their inputs and params (others of the graph are ignored)."""
        return self.module.predict(feeds, copy)

    def train_step(self, params: dict, batch: dict, state: dict | None = None, **hypers) -> dict:
        """One training step, params and state updated in place; ``lr=`` overrides the compiled (or scheduled)
        learning rate for this step."""
        return self._training("train_step")(params, batch, state, **hypers)

    def init_params(self, seed: int = 0) -> dict:
        return self.module.init_params(seed)

    def init_state(self, params: dict) -> dict:
        """Fresh training state (optimizer moments, the step counter, the graph's own state) for ``params``."""
        return self._training("init_state")(params)

    def save(self, path, params: dict, state: dict | None = None) -> None:
        """Params and state into the .npz file ``path``, atomically."""
        self._training("save")(path, params, state)

    def load(self, path) -> tuple[dict, dict]:
        """``(params, state)`` saved by ``save``."""
        return self._training("load")(path)

    def grad_step(self, params: dict, shard: dict, m_total: int) -> tuple[dict, float]:
        """``(gradients, loss)`` of one shard's share ``Σ_shard loss_i / m_total`` of a batch of ``m_total`` examples:
        the shares' gradients add up to the batch's (data-parallel training). GraphError where it is refused."""
        if self.refused is not None:
            raise self.refused
        return self._training("grad_step")(params, shard, m_total)

    def apply_update(self, params: dict, state: dict | None, grads: dict, **hypers) -> None:
        """The training step's update, given the gradients summed over the shards: params and state in place."""
        self._training("apply_update")(params, state, grads, **hypers)

    def _training(self, name: str):
        if not hasattr(self.module, "train_step"):
            raise GraphError("this program has no training step: compile with loss= and optimizer=")
        return getattr(self.module, name)

    def emit(self, path) -> Path:
        """Write the source to ``path`` atomically (a temporary file renamed into place)."""
        return write_atomic(path, self.source.encode())


def compile(graph, backend: str = "numpy", opt_level: int = 2, loss: str | None = None, optimizer=None,  # noqa: A001
            disable=(), check_numerics: bool = False, predict=None) -> Program:
    """Optimize ``graph`` and emit a standalone module for ``backend``; with ``loss`` also a training step.

    The module's ``predict`` computes the outputs named in ``predict``, by default the forward outputs that
    the loss's labels do not reach (``graphc.transforms.inference.prediction_outputs``).
    """
    with _cyclic_gc_paused():
        return _compile(graph, backend, opt_level, loss, optimizer, disable, check_numerics, predict)


@contextlib.contextmanager
def _cyclic_gc_paused():
    """Compiling makes hundreds of thousands of nodes, expressions and dicts that live until it returns: the
    cyclic collector's passes over them found little and took 15% of a 100-layer compile in a fresh process, 45% in
    one holding more (a notebook's). The cycles it leaves go at the next collection after."""
    was_enabled = cyclic_gc.isenabled()
    cyclic_gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            cyclic_gc.enable()


def _compile(graph, backend, opt_level, loss, optimizer, disable, check_numerics, predict) -> Program:
    if backend not in BACKENDS:
        raise GraphError(f"unknown backend {backend!r}; choose one of {tuple(BACKENDS)}")
    if not graph.outputs:
        raise GraphError(f"graph {graph.name!r} has no outputs: declare them with g.output(name=tensor)")
    graph.check_dims()
    if optimizer is not None and loss is None:
        loss = "loss"
    optimized, records = optimize(without_updates(graph), opt_level, disable, backend)
    trained, train_records, sharded = None, [], None
    if loss is not None:
        late = ("fuse_updates",) if check_numerics else ()  # every new value is checked before any is written
        optimizer = optimizer or SGD()
        trained, train_records = optimize(training_graph(graph, loss, optimizer), opt_level, (*disable, *late),
                                           backend)
        sharded = sharded_graphs(graph, loss, optimizer, opt_level, (*disable, *late), backend)
    names = prediction_outputs(graph, loss or "loss") if predict is None else list(predict)
    predicted = _prediction_graph(without_updates(graph), optimized, names, opt_level, disable, backend)
    emitter = BACKENDS[backend](optimized, trained, opt_level, check_numerics=check_numerics, predict_graph=predicted,
                                sharded=sharded)
    program = Program(graph, backend, emitter.source(), records, train_records, emitter.emitted)
    program.refused = sharded[0] if sharded and isinstance(sharded[0], GraphError) else None
    return program


def sharded_graphs(graph, loss: str, optimizer, opt_level: int, disable, backend: str = "numpy") -> tuple:
    """``(grad_step's graph, apply_update's graph)``, optimized; in place of grad_step's, the GraphError saying why
    it is refused where the loss is not a sum over the examples (the file then has no grad_step, and says why)."""
    try:
        grads = grad_step_graph(graph, loss, optimizer)
    except GraphError as exc:
        grads = exc
    else:
        grads, _ = optimize(grads, opt_level, disable, backend)
    update, _ = optimize(update_graph(graph, optimizer), opt_level, disable, backend)
    return grads, update


def without_updates(graph):
    """``graph`` without its state updates: ``run`` and ``predict`` compute outputs and write nothing."""
    if not graph.updates:
        return graph
    new = ir.Rebuild(graph).run()
    new.updates = {}
    return new


def _prediction_graph(graph, optimized, names, opt_level: int, disable, backend: str):
    """What predict computes: the optimized graph's own nodes for ``names``, or where dropout reaches them, the
    graph in inference mode optimized on its own (so the masks, now 1, fold away)."""
    if not names:
        return None
    check_predicts(graph, names)
    if changes_in_inference(graph, names):
        return optimize(inference_graph(graph, names), opt_level, disable, backend)[0]
    return inference_graph(optimized, names, reads=inputs_read(graph, names))
