"""The backend-neutral emitter framework: a graph becomes a standalone, readable Python module.

``FunctionEmitter`` plans one function (statement order, variable names, buffers from liveness) and writes
one commented statement, or a short in-place chain, per node by calling the backend's lowering of its op.
``ModuleEmitter`` writes the module around the functions: docstring, checks of the feeds, buffer allocation
cached per value of the symbolic dims, ``run`` / ``init_params`` / ``train_step``, and the runtime helpers the
functions use, copied from real Python functions (``inspect.getsource``) so the file needs nothing of graphc.

A backend subclasses ``ModuleEmitter``: its array module (``XP``), its lowering table (op name -> function
writing statements), its expression printer, its runtime helpers and the hooks where its module differs.
"""
from __future__ import annotations

import functools
import inspect
import re
import textwrap

import numpy as np
import sympy
from sympy.printing.pycode import PythonCodePrinter

from graphc.backends import runtime
from graphc.backends.codewriter import CodeWriter
from graphc.backends.schedule import deferred_updates, plan
from graphc.core import shapes
from graphc.core.describe import describe
from graphc.core.errors import GraphError
from graphc.core.initializers import init_array
from graphc.core.ir import STEP
from graphc.core.naming import Names, dim_names, node_names
from graphc.core.registry import OPS
from graphc.dsl import STEP_COUNTER


@functools.cache
def source_lines(fn) -> list[str]:
    """The source of a helper the generated module carries (read once: ``inspect`` rereads the file each time)."""
    return inspect.getsource(fn).rstrip().splitlines()


class Lowerings(dict):
    """A backend's lowering table: op name -> ``lower(st)`` appending the statements computing ``st.node``.

    A view op's lowering returns the expression of the view instead (no statement, no buffer).
    """

    def register(self, *ops: str):
        def add(fn):
            for op in ops:
                self[op] = fn
            return fn
        return add


class Statement:
    """The emission context of one node: its input variables, its output variable, scratch, lines."""

    def __init__(self, fn, node, out: str | None, scratch: list[str] | None):
        self.fn, self.node, self.out = fn, node, out
        self.args = [fn.var[i] for i in node.inputs]
        self.lines: list[str] = []
        self._scratch = list(scratch or [])
        self.requests: list[tuple] = []

    @property
    def xp(self) -> str:
        """The array module's name in the generated file (``np``, ``cp``)."""
        return self.fn.module.XP

    @property
    def module(self):
        return self.fn.module

    def input(self, k: int):
        """The node of input ``k``."""
        return self.fn.graph.nodes[self.node.inputs[k]]

    def scratch(self, dtype: str, shape=None) -> str:
        """A temporary of ``shape`` (default: the node's) planned by the scheduler."""
        return self._request((tuple(self.node.shape if shape is None else shape), dtype))

    def _request(self, request: tuple) -> str:
        """The planned buffer for ``request``, or while drafting, a placeholder numbered in request order."""
        self.requests.append(request)
        return self._scratch.pop(0) if self._scratch else f"_scratch{len(self.requests)}"

    def shared(self, key, dtype: str, shape) -> tuple[str, bool]:
        """A temporary that later nodes of the function asking for the same ``key`` read again (the windows of one
        input, for a convolution and its weight gradient): its name, and whether this node is the first, which
        fills it. ``key`` must name everything its content depends on."""
        first = key not in self.fn.last_sharer
        self.fn.last_sharer[key] = self.node.id
        return self._request((tuple(shape), dtype, key)), first

    def line(self, text: str) -> None:
        if text:
            self.lines.append(text)

    def dims(self, shape) -> str:
        return self.fn.shape_text(shape)

    def value(self, expr) -> str:
        return self.fn.printer.doprint(sympy.sympify(expr))


PLACEHOLDER = re.compile(r"\b_scratch(\d+)\b")  # temporaries in a draft, before the buffer plan names them


def name_temporaries(lines: list[str], temps: list[str]) -> list[str]:
    """A node's draft statements with the planned buffers in place of their placeholder temporaries."""
    return [PLACEHOLDER.sub(lambda hit: temps[int(hit.group(1)) - 1], text) for text in lines]


def readable(text: str) -> str:
    """Text for a one-line comment: on one line, at most 60 characters."""
    text = " ".join(text.split())
    return text if len(text) <= 60 else text[:57] + "..."


def expr_label(expr) -> str:
    """A word for what an elementwise expression does at its top: add, sub, mul, pow, or its function."""
    if expr.is_Add:
        return "add" if all(not (a.as_coeff_Mul()[0] < 0) for a in expr.args) else "sub"
    if expr.is_Mul:
        return "mul"
    if expr.is_Pow:
        return "pow"
    return type(expr).__name__.lower()


def docstring(w: CodeWriter, text: str) -> None:
    """A function's docstring, wrapped to the line length of the generated file."""
    lines = textwrap.wrap(f'"""{text}"""', 116 - 4 * w.depth, break_long_words=False, break_on_hyphens=False)
    for line in lines:
        w.line(line)


class HostPrinter(PythonCodePrinter):
    """Plain Python for the scalars a training step computes once per step on the host (a schedule's learning rate,
    bias corrections): Python floats, ``math`` functions, ``step // k``; the same text for every backend."""

    def __init__(self):
        super().__init__({"fully_qualified_modules": True})

    def _print_floor(self, expr):
        numerator, denominator = expr.args[0].as_numer_denom()
        return f"(({self._print(numerator)})//{self.parenthesize(denominator, 100)})"


class FunctionEmitter:
    """Emits one function computing the roots of a graph (and applying its param updates in place)."""

    def __init__(self, graph, module, fname: str):
        self.graph, self.module, self.fname = graph, module, fname
        self.dim_names = dict(module.dim_vars)
        self.printer = module.printer(self.dim_names)
        self.var: dict[int, str] = {}
        self.helpers: dict[str, tuple] = {}
        self.checked: set = set()  # (labels, classes) already checked in this function
        self.lines: dict[int, tuple[int, int]] = {}  # node id -> [start, end) of its lines in the body
        needed = graph.needed(graph.roots())
        fed = graph.fed()
        updates = {nid: name for name, nid in graph.updates.items()}
        self.written = {nid: [n for n, i in graph.updates.items() if i == nid] for nid in updates}
        late = deferred_updates(graph, needed, {nid: fed[name] for nid, name in updates.items()})
        if module.check_numerics:  # every value is checked before any param is written
            late = set(updates)
        if any(graph.nodes[nid].op == "fused_update" for nid in late):
            raise GraphError("a fused update cannot be deferred: compile without the fuse_updates pass")
        self.updates = {nid: name for nid, name in updates.items() if nid not in late}  # written in place
        self.deferred = {nid: updates[nid] for nid in sorted(late)}  # computed aside, copied in at the end
        named = graph.names()  # one naming: a variable has the name diagrams and graphc explain show
        if set(module.dim_vars.values()) & set(named.values()):  # a dim of the module that this graph lacks
            named = node_names(graph, taken=module.dim_vars.values())
        self.named = named
        for nid in (*fed.values(), *sorted(needed)):
            self.var[nid] = named[nid]
        for nid, name in self.updates.items():
            self.var[nid] = self.var[fed[name]]  # a new value written in place is read there
        self.names = Names([*module.dim_vars.values(), *graph.hypers, *graph.scalars, *named.values()])  # locals
        self.draws = any(OPS[graph.nodes[n].op].source == "random" for n in needed)  # takes the call number
        keep = set(graph.outputs.values()) | set(self.deferred)
        self.inlined = module.inlined(graph, needed - keep - set(self.updates))  # computed inside their readers
        self.drafts: dict[int, list[str]] = {}
        self.last_sharer: dict = {}  # key of a shared temporary -> the last node reading it (Statement.shared)
        requests = {nid: self._scratch_needs(graph.nodes[nid]) for nid in sorted(needed)}  # drafts, in order
        self.plan = plan(graph, needed, keep_alive=keep, needs_buffer=self._needs_buffer,
                         scratch_for=lambda node: [(*r, self.last_sharer[r[2]]) if len(r) == 3 else r
                                                   for r in requests[node.id]])

    def _computed(self, node) -> bool:
        """Whether the node has statements of its own (sources are fed or constant, views are renamings)."""
        op = OPS[node.op]
        return not op.view and not op.given and node.id not in self.inlined

    def _needs_buffer(self, node) -> bool:
        return self._computed(node) and node.id not in self.updates

    def _scratch_needs(self, node):
        """Emit the node once with placeholder temporaries (kept as its draft); report what they need."""
        if not self._computed(node):
            return []
        st = Statement(self, node, self.var[node.id], None)  # an update's is its param's variable
        self._lower(st)
        self.drafts[node.id] = st.lines
        return st.requests

    def _lower(self, st):
        node = st.node
        if node.id in self.updates and not OPS[node.op].in_place:  # a new value computed elsewhere: copy it in
            st.line(f"{self.module.XP}.copyto({st.out}, {st.args[0]})")
            return
        lower = self.module.LOWERINGS.get(node.op)
        if lower is None:
            raise GraphError(f"{self.module.BACKEND} backend: cannot emit op {node.op!r} (node {node.label})")
        lower(st)

    def shape_text(self, shape) -> str:
        items = [self.printer.doprint(sympy.sympify(d)) for d in shape]
        return f"({items[0]},)" if len(items) == 1 else f"({', '.join(items)})"

    def rows(self, shape, step=1) -> str:
        """Row numbers ``0 … numel(shape) − 1`` laid out in ``shape`` (int64), allocated with the buffers; times
        ``step``, where each row starts in a flat array of rows of ``step`` elements."""
        return self._helper("rows", tuple(shape), step)

    def arange(self, n) -> str:
        return self._helper("arange", (n,))

    def ones(self, n, dtype: str) -> str:
        """A vector of ``n`` ones of ``dtype``, allocated with the buffers (a sum as a matrix-vector product)."""
        return self._helper("ones", (n,), dtype=dtype)

    def _helper(self, kind, shape, step=1, dtype="int64") -> str:
        key = f"{kind}:{shape}:{step}:{dtype}"
        if key not in self.helpers:
            self.helpers[key] = (f"_{kind}{len(self.helpers)}", shape, step, dtype)
        return f"B[{self.helpers[key][0]!r}]"

    def helper_allocation(self) -> str:
        """The named helper arrays, by key: ``{'_rows0': np.arange(m, dtype=np.int64), …}``."""
        xp, items = self.module.XP, []
        for name, shape, step, dtype in self.helpers.values():
            n, total, k = (self.printer.doprint(sympy.sympify(v)) for v in (shapes.numel(shape),
                                                                           shapes.numel(shape) * step, step))
            if name.startswith("_ones"):
                text = f"{xp}.ones({n}, dtype={xp}.{dtype})"
            else:
                span = n if step == 1 else f"0, {total}, {k}"
                text = f"{xp}.arange({span}, dtype={xp}.{dtype})"
            items.append(f"{name!r}: {text}" + (f".reshape({self.shape_text(shape)})" if len(shape) != 1 else ""))
        return "{" + ", ".join(items) + "}"

    def body(self, w: CodeWriter) -> None:
        if self.module.check_numerics:
            w.line(self.module.numerics_begin())
        for nid in self.plan.order:
            start = len(w.lines)
            self._statement(w, nid)
            if len(w.lines) > start:
                self.lines[nid] = (start, len(w.lines))  # for the explorer: the lines computing each node
        if self.module.check_numerics:
            w.line(self.module.numerics_end())
        fed = self.graph.fed()
        for nid, param in self.deferred.items():
            w.line(f"{self.module.XP}.copyto({self.var[fed[param]]}, {self.var[nid]})  # update of {param}, last: "
                   "statements above read it")

    def _statement(self, w: CodeWriter, nid: int) -> None:
        """The statements computing one node (none for a fed one)."""
        p, node = self.plan, self.graph.nodes[nid]
        if OPS[node.op].fed:
            return
        comment = f"# {self.describe(node)}  {shapes.fmt_x(node.shape)}"
        name = self.var[nid]
        if node.op == "const":
            w.line(f"{name} = {self.module.constant(node)}  {comment}")
            return
        self._check_classes(w, node)
        if nid in self.inlined:
            w.line(f"# {name} = {self.describe(node)}: read inside the kernels that use it")
            return
        st = Statement(self, node, None, [f"B[{b}]" for b in p.scratch.get(nid, [])])
        if OPS[node.op].view:
            w.line(f"{name} = {self.module.LOWERINGS[node.op](st)}  {comment}")
            return
        st.out = name
        st.lines = name_temporaries(self.drafts[nid], [f"B[{b}]" for b in p.scratch.get(nid, [])])
        if nid in self.updates:
            w.line(f"{comment} (update of {', '.join(self.written[nid])}, in place)")
            for text in st.lines:
                w.line(text)
            self._check_numerics(w, node, st.out)
            return
        buf = f"B[{p.buffer_of[nid]}]"
        if len(st.lines) == 1 and st.lines[0].endswith(f"out={name})"):
            w.line(f"{name} = {st.lines[0][:-len(name) - 1]}{buf})  {comment}")
        else:
            w.line(f"{name} = {buf}  {comment}")
            for text in st.lines:
                w.line(text)
        self._check_numerics(w, node, name)

    def storage(self, nid: int) -> str:
        """Where a node's value lives in the generated function: its buffer, the param it updates in place, the
        storage it is a view of, or what feeds it."""
        node = self.graph.nodes[nid]
        if nid in self.plan.buffer_of:
            return f"B[{self.plan.buffer_of[nid]}]"
        if nid in self.updates:
            return f"{self.var[nid]} (in place)"
        if OPS[node.op].view:
            return f"a view of {self.storage(self.plan.storage[nid])}"
        if OPS[node.op].fed:
            return f"{self.var[nid]} (fed)"
        return OPS[node.op].source or "none"

    def _check_classes(self, w: CodeWriter, node) -> None:
        """Before the first op reading integer class ids, a check that they index existing classes."""
        rule = OPS[node.op].class_ids
        for slot, classes in rule(node, [self.graph.nodes[i] for i in node.inputs]) if rule else ():
            labels, count = self.var[node.inputs[slot]], self.printer.doprint(sympy.sympify(classes))
            if (labels, count) not in self.checked:
                self.checked.add((labels, count))
                w.line(self.module.class_check(labels, count, self._user_name(node.inputs[slot])))

    def _user_name(self, nid: int) -> str:
        """How the user knows a value: its input/param/output name, else its variable."""
        node = self.graph.nodes[nid]
        return node.attr("name") if OPS[node.op].fed else node.name or self.var[nid]

    def describe(self, node) -> str:
        """The comment of a node's statement: what it computes, in terms of the function's variables."""
        return readable(describe(node, self.var))

    def _check_numerics(self, w: CodeWriter, node, value: str) -> None:
        """With check_numerics, stop at the first float node whose value holds a NaN or an Inf."""
        if self.module.check_numerics and node.dtype.startswith("float"):
            w.line(self.module.numerics_check(value, readable(describe(node, self.var))))

    def allocation(self) -> list[str]:
        lines = []
        for b in self.plan.buffers:
            users = ", ".join(self.var[u] for u in b.users) or "scratch"
            array = f"{self.module.XP}.empty({self.shape_text(b.shape)}, {self.module.dtype(b.dtype)})"
            lines.append(f"{array},  # {users}")
        return lines


class Emitted:
    """Where the nodes of one generated function are: for the explorer (``graphc explore``).

    ``graph`` the graph it computes, ``names`` its variables by node id (the graph's names), ``lines`` node id ->
    (first, last) line number in the module (1-based), ``storage`` node id -> where the value lives (``B[3]``).
    """

    def __init__(self, fe: FunctionEmitter, offset: int):
        named = fe.named  # an update written in place is its param's variable in code, new_W1 here
        self.graph, self.names = fe.graph, {nid: named[nid] for nid in fe.var}
        self.lines = {nid: (offset + a + 1, offset + b) for nid, (a, b) in fe.lines.items()}
        self.storage = {nid: fe.storage(nid) for nid in fe.var}


class ModuleEmitter:
    """The whole generated module: docstring, checks, buffers, run / init_params / train_step, helpers.

    A backend subclass sets the class attributes and overrides ``_to_device`` / ``_train_args`` / ``_write_back``
    where its module differs.
    """

    BACKEND = TITLE = XP = ""
    IMPORTS: tuple = ()
    ARRAY = ""  # what the checks accept as an array
    LOWERINGS: Lowerings = Lowerings()
    RUNTIME: tuple = (runtime._explain, runtime._shape_of, runtime._Buffers,  # helpers every module carries
                      runtime._buffers, runtime._check_classes, runtime._only, runtime._writable, runtime._real)
    NUMERICS: tuple = ()  # helpers of check_numerics
    GEMV_SUMS = False  # a float sum over leading axes as ones @ matrix (where the BLAS product beats the reduction)

    def __init__(self, graph, train_graph=None, opt_level: int = 2, check_numerics: bool = False,
                 predict_graph=None, sharded=None):
        self.graph, self.train_graph, self.opt_level = graph, train_graph, opt_level
        self.predict_graph = predict_graph  # the outputs predict computes, in inference mode; None: none
        # data-parallel training: grad_step's graph (or the GraphError refusing it) and apply_update's
        self.grads_graph, self.update_graph = sharded or (None, None)
        self.refused = self.grads_graph if isinstance(self.grads_graph, GraphError) else None
        if self.refused is not None:
            self.grads_graph = None
        self.dims = graph.dims()
        self.dim_vars = dim_names(self.dims)  # a dim's variable in the module's functions
        self.constants: dict = {}
        self.check_numerics = check_numerics
        self.helper_functions: list = []  # functions the statements call (e.g. erf): copied into the module
        self.emitted: dict[str, Emitted] = {}  # function name -> where its nodes are, once source() ran

    @staticmethod
    def printer(names):
        """The printer of scalar expressions (``1/m``) for this backend."""
        raise NotImplementedError

    def dtype(self, dtype: str) -> str:
        """A dtype as the array module spells it."""
        return f"{self.XP}.{dtype}"

    def numerics_begin(self) -> str:
        """With check_numerics: the statement opening a function's checks (NumPy checks each value at once)."""
        return ""

    def numerics_check(self, value: str, what: str) -> str:
        return f"_check_finite({value!r}, {what!r}, {value})"

    def numerics_end(self) -> str:
        """The statement closing a function's checks, before any param is written."""
        return ""

    def inlined(self, graph, candidates) -> set:
        """Of ``candidates`` (nodes no output or update keeps), those the backend computes inside each reader's
        statement rather than on their own."""
        return set()

    def class_check(self, labels: str, classes: str, name: str) -> str:
        """The statement checking that the class ids ``labels`` lie in 0 … classes − 1."""
        return f"_check_classes({labels}, {classes}, {name!r})"

    def use(self, function) -> str:
        """The name of a helper function the module carries (its source is copied in once)."""
        if function not in self.helper_functions:
            self.helper_functions.append(function)
        return function.__name__

    def constant(self, node) -> str:
        if node.id not in self.constants:
            data, shape, dtype = node.attr("value")
            arr = np.frombuffer(data, dtype=dtype).reshape(shape)
            name = f"_CONST{len(self.constants)}"
            values = re.sub(r"\b(inf|nan)\b", r"np.\1", repr(arr.tolist()))  # repr writes inf, nan: no names
            self.constants[node.id] = (name, self._array_text(f"np.array({values}, dtype=np.{dtype})"))
        return self.constants[node.id][0]

    def generator(self, node) -> str:
        """The generator a random node draws from: one per stream and call, ``default_rng([seed, stream, call])``
        with ``call`` the function's argument, so call ``c`` draws what ``g.evaluate(feeds, call=c)`` draws."""
        return f"{self.XP}.random.default_rng([{node.attr('seed')}, {node.attr('stream')}, call])"

    def _array_text(self, host: str) -> str:
        """Module-level text for a host (NumPy) array as this backend's array."""
        return host

    def _definitions(self, w: CodeWriter) -> None:
        """Module-level definitions the functions use: the runtime helpers."""
        helpers = [*self.RUNTIME, *(self.NUMERICS if self.check_numerics else ()), *self.helper_functions]
        for fn in helpers:
            w.lines.extend(source_lines(fn))
            w.line("")
            w.line("")

    def _to_device(self, w: CodeWriter, *tables: str) -> None:
        """Statements converting the arrays of the named dicts for the functions; none for NumPy."""

    def _train_args(self, w: CodeWriter, hypers) -> None:
        """Statements preparing the hyper-parameters (the learning rate) for the kernels; none for NumPy."""

    def _write_back(self, w: CodeWriter) -> None:
        """Statements returning the updated params and state to the caller's arrays; none for NumPy (in place)."""

    # -- what lives between calls: params, state and the step counter ----------------------------------------
    def kept(self) -> dict:
        """Name -> (shape, dtype, init) of the arrays the caller keeps: params, then state (the step counter first,
        where a schedule or an optimizer reads it)."""
        g, t = self.graph, self.train_graph
        table = {n: self._spec(g.nodes[i]) for n, i in g.params.items()}
        if t is not None and t.counts_steps():
            table[STEP_COUNTER] = ((), "int64", ("zeros",))
        table.update({n: self._spec(g.nodes[i]) for n, i in g.state.items()})
        if t is not None:
            table.update({n: self._spec(t.nodes[i]) for n, i in t.state.items()})
        return table

    @staticmethod
    def _spec(node) -> tuple:
        return tuple(node.shape), node.dtype, node.attr("init")

    def state_names(self) -> list[str]:
        return [n for n in self.kept() if n not in self.graph.params]

    def source(self) -> str:
        w = CodeWriter()
        g = self.graph
        fns = [("_compute", FunctionEmitter(g, self, "_compute"))]
        for fname, graph in (("_train", self.train_graph), ("_grads", self.grads_graph),
                             ("_update", self.update_graph)):
            if graph is not None:
                fns.append((fname, FunctionEmitter(graph, self, fname)))
        if self.predict_graph is not None and self.predict_graph.outputs:
            fns.append(("_predict", FunctionEmitter(self.predict_graph, self, "_predict")))
        body = {}
        for fname, fe in fns:
            cw = CodeWriter()
            cw.depth = 1
            fe.body(cw)
            body[fname] = cw
        api = CodeWriter()
        self._api(api, fns)
        self._docstring(w)
        if "math." in "\n".join(api.lines):
            w.line("import math")
        if any(fe.draws for _, fe in fns):
            w.line("import itertools")
        if self.train_graph is not None:
            w.line("import os")
        w.line("import threading")
        w.line("")
        for text in self.IMPORTS:
            w.line(text)
        w.line("")
        w.line("")
        w.line(f"DIMS = {tuple(d.name for d in self.dims)!r}")
        w.line("INPUTS = {" + ", ".join(f"{n!r}: ({shapes.fmt(g.nodes[i].shape)!r}, {g.nodes[i].dtype!r})"
                                        for n, i in g.inputs.items()) + "}")
        kept = self.kept()
        for title, names in (("PARAMS", g.params), ("STATE", self.state_names())):
            if names or title == "PARAMS" or self.train_graph is not None:
                w.line(f"{title} = {{" + ", ".join(f"{n!r}: ({shapes.fmt(kept[n][0])!r}, {kept[n][1]!r}, "
                                                   f"{kept[n][2]!r})" for n in names) + "}")
        w.line(f"OUTPUTS = {tuple(g.outputs)!r}")
        w.line(f"PREDICTS = {tuple(self.predict_graph.outputs if self.predict_graph else ())!r}")
        if self.refused is not None:
            w.line(f"NO_GRAD_STEP = {str(self.refused)!r}  # why this module has no grad_step")
        if any(fe.draws for _, fe in fns):
            w.line("_CALLS = itertools.count()  # numbers the calls that draw random values: each draws anew")
        for name, text in self.constants.values():
            w.line(f"{name} = {text}")
        w.line("")
        w.line("")
        self._definitions(w)
        self._checks(w)
        for fname, fe in fns:
            self._buffers(w, fname, fe)
            fed = [fe.var[i] for i in fe.graph.fed().values()]
            args = ", ".join(["B", *(["call"] if fe.draws else []), *self.dim_vars.values(), *fed, *fe.graph.hypers,
                              *fe.graph.scalars])
            w.line("")
            with w.block(f"def {fname}({args}):"):
                self.emitted[fname] = Emitted(fe, len(w.lines))
                w.lines.extend(body[fname].lines)
                outs = ", ".join(f"{n!r}: {fe.var[i]}" for n, i in fe.graph.outputs.items())
                w.line(f"return {{{outs}}}")
            w.line("")
        w.lines.extend(api.lines)
        w.line("")
        w.line("")
        w.lines.extend(source_lines(init_array))
        return w.text()

    def _docstring(self, w: CodeWriter) -> None:
        g, t = self.graph, self.train_graph
        w.line(f'"""{g.name}: generated by graphc from graph {g.name!r} '
               f'({self.TITLE} backend, opt level {self.opt_level}).')
        w.line("")
        usage = (f"Standalone: needs only {self.TITLE}. Call run(feeds) for the outputs; predict(feeds) for the "
                 "outputs that need no labels, without dropout or gradients" + (
                     f"; train_step(params, batch, state) for one training step, {t.update_rule} (state = "
                     "init_state(params), or none where the step keeps none); save(path, params, state) and "
                     "load(path) for checkpoints." if t is not None else "."))
        for line in textwrap.wrap(usage, 116, break_long_words=False, break_on_hyphens=False):
            w.line(line)
        if t is not None:
            w.line("Arrays returned by train_step live in reused buffers: copy them to keep them past the next call.")
            sharded = ("Data-parallel training: grad_step(params, shard, m_total) gives one shard's gradients of its "
                       "share of the loss of a batch of m_total examples (the shares add up to the batch's loss, "
                       "exactly); apply_update(params, state, grads) takes the step with the gradients summed over "
                       "the shards."
                       if self.refused is None else
                       "apply_update(params, state, grads) takes the step with given gradients. No grad_step: "
                       f"{self.refused} (NO_GRAD_STEP).")
            for line in textwrap.wrap(sharded, 116, break_long_words=False, break_on_hyphens=False):
                w.line(line)
        w.line("Buffers are allocated once per batch size; each thread keeps its own, for the last 4 sizes it used.")
        w.line("")
        kept = self.kept()
        tables = (("Inputs", list(g.inputs)), ("Params", list(g.params)), ("State", self.state_names()),
                  ("Outputs", list(g.outputs)))
        for title, names in tables:
            if not names and title == "State":
                continue
            w.line(f"{title}:")
            for name in names:
                if name in kept:
                    shape, dtype, init = kept[name]
                    w.line(f"    {name}: {shapes.fmt(shape)} {dtype}, init {init[0]}")
                else:
                    node = g.nodes[g.inputs.get(name, g.outputs.get(name))]
                    w.line(f"    {name}: {shapes.fmt(node.shape)} {node.dtype}")
        w.line('"""')

    def _checks(self, w: CodeWriter) -> None:
        w.line("")
        training = self.requirements(self.graph, self.train_graph, self.grads_graph)
        self._dims_function(w, "_dims", self.graph.inputs, training)
        if self._predict_binds_apart():
            self._dims_function(w, "_predict_dims", self.predict_graph.inputs, self.requirements(self.predict_graph))
        with w.block("def _check(feeds, names, dims=None, bind=_dims):"):
            w.line('"""Check feeds against the declared shapes and dtypes; returns the dims in DIMS order (bind reads '
                   'them)."""')
            with w.block("if not isinstance(feeds, dict) or len(feeds) != len(names):"):
                w.line("_explain(feeds, names)")
            with w.block("for name in names:"):
                with w.block("if name not in feeds:"):
                    w.line("_explain(feeds, names)")
            with w.block("if dims is None:"):
                w.line("dims = bind(feeds)")
            with w.block("for name in names:"):
                w.line("value = feeds[name]")
                w.line("shape, dtype = _SPEC[name]")
                with w.block(f"if not isinstance(value, {self.ARRAY}) or value.dtype != dtype:"):
                    w.line(f'got = value.dtype if isinstance(value, {self.ARRAY}) else type(value).__name__')
                    w.line('raise ValueError(f"{name} expects {dtype} with shape {shape}, got {got}")')
                with w.block("if value.shape != _SHAPES[name](*dims):"):
                    w.line('raise ValueError(f"{name} expects shape {shape} = {_SHAPES[name](*dims)}, "')
                    w.line('                 f"got {value.shape}")')
            w.line("return dims")
        w.line("")
        g = self.graph
        spec = {n: (g.nodes[i].shape, g.nodes[i].dtype) for n, i in g.inputs.items()}
        spec.update({n: (shape, dtype) for n, (shape, dtype, _) in self.kept().items()})
        w.line("_SPEC = {" + ", ".join(f"{n!r}: ({shapes.fmt(shape)!r}, {dtype!r})"
                                       for n, (shape, dtype) in spec.items()) + "}")
        dims = ", ".join(self.dim_vars.values())
        printer = self.printer(self.dim_vars)
        w.line("_SHAPES = {")
        for n, (shape, _) in spec.items():
            dims_text = ", ".join(printer.doprint(d) for d in shape)
            tup = f"({dims_text},)" if len(shape) == 1 else f"({dims_text})"
            w.line(f"    {n!r}: lambda {dims}: {tup},".replace("lambda :", "lambda:"))  # shape at the bound dims
        w.line("}")
        w.line(f"_ANY_DIMS = {tuple(1 for _ in self.dims)!r}  # params and state have no symbolic dims")

    @staticmethod
    def requirements(*graphs) -> list:
        """(condition on the dims, what needs it) of every op of ``graphs``, each once: ``m - 2 >= 0``."""
        found = {}
        for graph in graphs:
            for node in (graph.nodes.values() if graph is not None else ()):
                rule = OPS[node.op].requires
                for condition in rule(node, [graph.nodes[i] for i in node.inputs]) if rule else ():
                    found.setdefault(condition, f"{node.op} {describe(node, graph.names())}")
        return sorted(found.items(), key=lambda item: str(item[0]))

    def _predict_binds_apart(self) -> bool:
        """Whether predict reads a dim off other inputs than run does (run's came from the labels), or its ops need
        other sizes (batch statistics need two rows; the running ones predict reads do not)."""
        p = self.predict_graph
        if p is None or not p.outputs:
            return False
        return (self._bindings(p.inputs) != self._bindings(self.graph.inputs)
                or self.requirements(p) != self.requirements(self.graph, self.train_graph, self.grads_graph))

    def _bindings(self, inputs: dict) -> list[str]:
        """How each dim is read off feeds of ``inputs`` (a dim none of them has is 1: nothing computed uses it)."""
        return [self._binding(d, inputs) or "1" for d in self.dims]

    def _dims_function(self, w: CodeWriter, fname: str, inputs: dict, requirements: list) -> None:
        dims = f"({''.join(var + ', ' for var in self.dim_vars.values())})"
        with w.block(f"def {fname}(feeds):"):
            w.line('"""The symbolic dims, in DIMS order, read off the feeds and checked against the sizes the ops '
                   'need."""')
            for var, text in zip(self.dim_vars.values(), self._bindings(inputs)):
                w.line(f"{var} = {text}")
            if self.dims:
                with w.block(f"if 0 in {dims}:"):
                    w.line(f'raise ValueError(f"empty feeds: {{dict(zip(DIMS, {dims}))}}; each dim needs a size of '
                           'at least 1")')
            printer = self.printer(self.dim_vars)
            for condition, what in requirements:
                test = f"{printer.doprint(condition.lhs)} {condition.rel_op} {printer.doprint(condition.rhs)}"
                with w.block(f"if not ({test}):"):
                    w.line(f'raise ValueError(f"{what} needs {condition}, got {{dict(zip(DIMS, {dims}))}}")')
            w.line(f"return {dims}")
        w.line("")
        w.line("")

    def _binding(self, d, inputs: dict) -> str | None:
        """How a symbolic dim is read off the feeds of ``inputs``: the first axis that is exactly that dim."""
        g = self.graph
        for name in inputs:
            for axis, e in enumerate(g.nodes[g.inputs[name]].shape):
                if e == d:
                    return f'_shape_of(feeds, {name!r}, {axis})'
        for name in inputs:
            for axis, e in enumerate(g.nodes[g.inputs[name]].shape):
                if e.free_symbols == {d}:  # an axis of size f(d): solved for d (checked against the feeds after)
                    n = sympy.Symbol("_n", positive=True, integer=True)
                    solutions = [v for v in sympy.solve(sympy.Eq(e, n), d) if v.is_positive is not False]
                    if len(solutions) == 1:
                        text = self.printer({n: f"_shape_of(feeds, {name!r}, {axis})"}).doprint(solutions[0])
                        return f"round({text})"
        if inputs is self.graph.inputs:
            raise GraphError(f"dim {d} cannot be bound from the inputs of graph {g.name!r}: no input axis has a "
                             f"size that determines it alone (e.g. {d} or 28*{d})")
        return None

    def _buffers(self, w: CodeWriter, fname: str, fe: FunctionEmitter) -> None:
        dims = ", ".join(self.dim_vars.values())
        w.line("")
        with w.block(f"def {fname}_allocate({dims}):"):
            w.line('"""The buffers of one call, planned from liveness and reused across nodes."""')
            w.line("B = [")
            for text in fe.allocation():
                w.line("    " + text)
            w.line("]")
            w.line(f"return _Buffers(B, {fe.helper_allocation()})")
        w.line("")
        w.line(f"{fname}_cache = threading.local()")

    def _api(self, w: CodeWriter, fns) -> None:
        g = self.graph
        fes = dict(fns)
        fed = list(g.fed())
        with w.block("def run(feeds, copy=True):"):
            w.line('"""The graph\'s outputs for feeds (every input, param and state by name): fresh arrays, or with')
            w.line('copy=False the module\'s reused buffers themselves, valid until the next call."""')
            w.line(f"dims = _check(feeds, {tuple(fed)!r})")
            self._outputs(w, fes["_compute"], fed)
        w.line("")
        w.line("")
        self._predict_api(w, fes.get("_predict"))
        w.line("")
        w.line("")
        with w.block("def init_params(seed=0):"):
            w.line('"""Fresh parameters from their declared initializers (same values as gc.init_params)."""')
            fresh = self._array_text("init_array(spec[2], _SHAPES[name](*_ANY_DIMS), spec[1], seed, index)")
            w.line(f"return {{name: {fresh} for index, (name, spec) in enumerate(PARAMS.items())}}")
        if self.state_names() or "_train" in fes:  # every training step has one, if only to return {}
            self._init_state(w)
        if "_train" in fes:
            self._train_step(w, fes["_train"])
            self._checkpoints(w)
        if "_grads" in fes:
            self._grad_step(w, fes["_grads"])
        if "_update" in fes:
            self._apply_update(w, fes["_update"])

    def _dims_args(self, dims: str = "dims") -> str:
        """The bound dims as arguments, one by one: a ``*dims`` call would build a tuple of every argument."""
        return "".join(f"{dims}[{k}], " for k in range(len(self.dims)))

    def _init_state(self, w: CodeWriter) -> None:
        w.line("")
        w.line("")
        with w.block("def init_state(params):"):
            w.line('"""Fresh state for training params (checked against PARAMS), from the declared initializers:')
            w.line('moments and velocities at zero, the step counter at 0."""')
            w.line("_check(params, tuple(PARAMS), _ANY_DIMS)")
            host = "init_array(spec[2], _SHAPES[name](*_ANY_DIMS), spec[1], 0, index)"
            fresh = self._array_text(host)
            if fresh != host and STEP_COUNTER in self.kept():
                fresh = f"{host} if name == {STEP_COUNTER!r} else {fresh}"  # the step counter stays on the host
            w.line(f"return {{name: {fresh} for index, (name, spec) in enumerate(STATE.items())}}")

    def _call(self, fe: FunctionEmitter, args, dims: str = "dims") -> str:
        """The call of a generated function: buffers, the call number where it draws random values, dims, arrays."""
        return f"{fe.fname}(B, {'next(_CALLS), ' if fe.draws else ''}{self._dims_args(dims)}{', '.join(args)})"

    def _predict_api(self, w: CodeWriter, fe: FunctionEmitter | None) -> None:
        """``predict``: the outputs that need no labels, in inference mode (no dropout), without gradients."""
        if fe is None:
            with w.block("def predict(feeds, copy=True):"):
                w.line('"""No output of this graph is computed without its labels: compile with predict=[names]."""')
                w.line(f'raise ValueError("graph {self.graph.name!r} has no output that needs no labels; name the '
                       'outputs to predict when compiling: gc.compile(..., predict=[...]), graphc build --predict")')
            return
        names = tuple(fe.graph.fed())
        with w.block("def predict(feeds, copy=True):"):
            w.line('"""The outputs in PREDICTS, in inference mode (no dropout, no gradients), for feeds of their')
            w.line('inputs and params by name (the graph\'s others, such as labels, are ignored): fresh arrays, or')
            w.line('with copy=False the module\'s reused buffers themselves, valid until the next call."""')
            w.line(f"feeds = _only(feeds, {names!r})")
            bind = ", bind=_predict_dims" if self._predict_binds_apart() else ""
            w.line(f"dims = _check(feeds, {names!r}{bind})")
            self._outputs(w, fe, names)

    def _outputs(self, w: CodeWriter, fe: FunctionEmitter, names) -> None:
        """The end of run and predict: the call of ``fe`` on the checked feeds ``names``, its outputs returned."""
        self._to_device(w, "feeds")
        w.line(f"B = _buffers({fe.fname}_cache, dims, {fe.fname}_allocate)")
        w.line(f"out = {self._call(fe, [f'feeds[{n!r}]' for n in names])}")
        fresh = f"{{name: {self.XP}.array(value, copy=True) for name, value in out.items()}}"
        w.line(f"return {fresh} if copy else out")

    def _scheduled(self, graph) -> dict:
        """The hyper-parameters a schedule computes from the step counter: name -> expression of ``STEP``."""
        return {k: v for k, v in graph.hypers.items() if isinstance(v, sympy.Basic) and STEP in v.free_symbols}

    def _defaults(self, graph) -> str:
        """``, lr=0.1`` (or ``, lr=None`` where a schedule gives it): the step's hyper-parameters as arguments."""
        scheduled = self._scheduled(graph)
        return "".join(f", {k}=None" if k in scheduled else f", {k}={v!r}" for k, v in graph.hypers.items())

    def _host_scalars(self, w: CodeWriter, graph) -> None:
        """The step's scalars on the host: the step counter, scheduled hyper-parameters, bias corrections."""
        if STEP_COUNTER in self.state_names():
            w.line(f"step = int(state[{STEP_COUNTER!r}])  # training steps taken before this one")
        for name in self._scheduled(graph):
            with w.block(f"if {name} is None:"):
                w.line(f"{name} = {name}_at(step)")
        for name in graph.hypers:
            w.line(f"{name} = _real({name!r}, {name})")
        self._train_args(w, graph.hypers)
        host = HostPrinter()
        for name, expr in graph.scalars.items():
            w.line(f"{name} = {host.doprint(expr)}")

    def _step_call(self, w: CodeWriter, fe: FunctionEmitter, args: list[str], dims: str = "dims") -> None:
        """Call the step's function; write params and state back and count the step."""
        after = CodeWriter()
        self._write_back(after)
        if STEP_COUNTER in self.state_names():
            after.line(f"state[{STEP_COUNTER!r}][...] = step + 1")
        w.line(f"{'out =' if after.lines else 'return'} {self._call(fe, args, dims)}")
        if after.lines:
            w.lines.extend("    " * w.depth + line for line in after.lines)
            w.line("return out")

    def _state_check(self, w: CodeWriter, dims: str) -> None:
        """The check of the state dict (None where the step keeps no state)."""
        state = self.state_names()
        w.line(f"_check(state, {tuple(state)!r}, {dims})" if state else
               f"_check({{}} if state is None else state, (), {dims})")

    def _train_step(self, w: CodeWriter, fe: FunctionEmitter) -> None:
        t, inputs, params = self.train_graph, list(self.graph.inputs), list(self.graph.params)
        state = self.state_names()
        host = HostPrinter()
        for name, value in self._scheduled(t).items():
            w.line("")
            w.line("")
            with w.block(f"def {name}_at(step):"):
                docstring(w, f"{name} after `step` training steps: the schedule of {t.update_rule}.")
                w.line(f"return {host.doprint(value)}")
        w.line("")
        w.line("")
        with w.block(f"def train_step(params, batch, {'state' if state else 'state=None'}{self._defaults(t)}):"):
            docstring(w, f"One training step, {t.update_rule}: updates the params and state in place; returns the "
                         "outputs (reused buffers).")
            w.line(f"dims = _check(batch, {tuple(inputs)!r})")
            w.line(f"_check(params, {tuple(params)!r}, dims)")
            self._state_check(w, "dims")
            w.line("_writable(params, state)")
            self._host_scalars(w, t)
            self._to_device(w, "batch", "params", *(["state"] if state else []))
            w.line("B = _buffers(_train_cache, dims, _train_allocate)")
            self._step_call(w, fe, [*(f"batch[{n!r}]" for n in inputs), *(f"params[{n!r}]" for n in params),
                                    *(f"state[{n!r}]" for n in t.state), *t.hypers, *t.scalars])

    def _grad_step(self, w: CodeWriter, fe: FunctionEmitter) -> None:
        g, inputs, params = self.grads_graph, list(self.graph.inputs), list(self.graph.params)
        share, *grads = g.outputs  # the share of the loss, then each param's gradient, in PARAMS order
        w.line("")
        w.line("")
        with w.block("def grad_step(params, shard, m_total):"):
            docstring(w, "One shard's part of a training step on a batch of m_total examples: (gradients by param "
                         "name, fresh arrays; the shard's share of the batch's loss, a float: for a mean, the sum "
                         "of its losses / m_total). "
                         "Summed over the shards, they are the batch's gradients and loss, exactly; "
                         "apply_update(params, state, grads) then takes the step.")
            w.line(f"dims = _check(shard, {tuple(inputs)!r})")
            w.line(f"_check(params, {tuple(params)!r}, dims)")
            with w.block("if not m_total > 0:"):
                w.line('raise ValueError(f"m_total is the number of examples of the whole batch, not {m_total!r}")')
            self._to_device(w, "shard", "params")
            w.line("B = _buffers(_grads_cache, dims, _grads_allocate)")
            args = [*(f"shard[{n!r}]" for n in inputs), *(f"params[{n!r}]" for n in params), "m_total"]
            w.line(f"out = {self._call(fe, args)}")
            pairs = ", ".join(f"({p!r}, {k!r})" for p, k in zip(params, grads))
            w.line(f"grads = {{name: {self.XP}.array(out[key], copy=True) for name, key in ({pairs},)}}")
            w.line(f"return grads, float(out[{share!r}])")

    def _apply_update(self, w: CodeWriter, fe: FunctionEmitter) -> None:
        u, params = self.update_graph, list(self.graph.params)
        w.line("")
        w.line("")
        with w.block(f"def apply_update(params, state, grads{self._defaults(u)}):"):
            docstring(w, f"The update of a training step, {u.update_rule}, with the gradients by param name (summed "
                         "over the shards of a batch, from grad_step): params and state in place, as train_step "
                         "(the same rule, schedule and step counter).")
            w.line(f"_check(params, {tuple(params)!r}, _ANY_DIMS)")
            w.line(f"_check(grads, {tuple(params)!r}, _ANY_DIMS)  # a gradient has its param's shape and dtype")
            self._state_check(w, "_ANY_DIMS")
            w.line("_writable(params, state)")
            self._host_scalars(w, u)
            self._to_device(w, "grads", "params", *(["state"] if self.state_names() else []))
            w.line("B = _buffers(_update_cache, _ANY_DIMS, _update_allocate)")
            self._step_call(w, fe, [*(f"grads[{n!r}]" for n in params), *(f"params[{n!r}]" for n in params),
                                    *(f"state[{n!r}]" for n in u.state), *u.hypers, *u.scalars], "_ANY_DIMS")

    def _checkpoints(self, w: CodeWriter) -> None:
        """``save`` and ``load``: the runtime's, with loaded arrays made this backend's."""
        w.line("")
        w.line("")
        for helper in (runtime.save, runtime._read_checkpoint):
            w.lines.extend(inspect.getsource(helper).rstrip().splitlines())
            w.line("")
            w.line("")
        with w.block("def load(path):"):
            w.line('"""(params, state) from a file written by save, checked against the declared names, shapes and')
            w.line('dtypes: training continues from them as if it had never stopped."""')
            fresh = self._array_text("value")
            if fresh == "value":
                w.line("return _read_checkpoint(path)")
            else:
                w.line("params, state = _read_checkpoint(path)")
                kept = f"value if name == {STEP_COUNTER!r} else {fresh}"  # the step counter stays on the host
                w.line(f"return ({{name: {fresh} for name, value in params.items()}},")
                w.line(f"        {{name: {kept} for name, value in state.items()}})")
