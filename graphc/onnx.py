"""Import ONNX models (opset 13 to 27) as graphc graphs: ``gc.from_onnx(path_or_model)``.

Each ONNX node becomes graphc ops, composites where that is exact. Float initializers become params, their trained
values handed back as ``graph.initial_params`` (name -> array). Values known when the model is imported (Constant
nodes, initializers read as shapes or axes, the Shape of a tensor) are folded to constants; a symbolic batch size
folds as the dim ``m``, so ``x.view(x.size(0), -1)`` imports as a reshape to ``(m, -1)``. Anything graphc cannot
compute exactly (an op, an attribute value, a dtype, a data-dependent shape) is refused with a GraphError naming the
node, its op type and what is unsupported.

Needs the onnx package, imported only when a model is: ``pip install graphc[onnx]``.
"""
from __future__ import annotations

import keyword
import re
from pathlib import Path

import numpy as np
import sympy

from graphc import api as gc
from graphc.core.errors import GraphError
from graphc.program import Graph

MIN_OPSET, MAX_OPSET = 13, 27

# Names the generated module uses for itself, and the batch dim: an input of such a name is renamed (B -> B_2).
RESERVED = {"np", "cp", "B", "i", "feeds", "params", "batch", "run", "train_step", "init_params", "out", "lr", "dims",
            "copy", "value", "name", "names", "shape", "dtype", "m"}

# Inputs whose value must be known at import (shapes, axes, sizes): a graph input there must be given in constants=.
STATIC_INPUTS = {
    "Reshape": {1}, "Slice": {1, 2, 3, 4}, "Squeeze": {1}, "Unsqueeze": {1}, "Expand": {1}, "Tile": {1},
    "Split": {1}, "Pad": {1, 2, 3}, "ConstantOfShape": {0}, "Dropout": {1, 2},
    **{op: {1} for op in ("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceLogSumExp", "ReduceSumSquare",
                          "ReduceL1", "ReduceL2", "ReduceLogSum")},
}
# Inputs that are statistics or bounds, not weights: an initializer there is a constant, never a param.
CONST_INPUTS = {**STATIC_INPUTS, "Pow": {1}, "Clip": {1, 2}, "BatchNormalization": {3, 4}, "Gather": {1},
                "CastLike": {1}}

# What graphc computes in; narrower integers are held as int64, which only value-preserving ops may see.
DTYPES = {np.dtype(n): n for n in ("float32", "float64", "int64", "bool")}
WIDENED = {np.dtype(n) for n in ("int8", "int16", "int32", "uint8", "uint16", "uint32")}
COMPARISONS = {"Greater", "Less", "Equal", "GreaterOrEqual", "LessOrEqual"}
WIDTH_FREE = COMPARISONS | {"Where", "Max", "Min", "Clip", "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze",
                            "Concat", "Slice", "Gather", "Expand", "Identity", "Dropout", "Shape", "Size", "Cast",
                            "CastLike", "Split", "Tile", "Pad"}
WIDTH_FREE_INPUTS = {"Pow": {1}}  # an integer exponent means the same at any width
NOT_FOLDED = {"Dropout", "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Bernoulli",
              "Multinomial"}


def from_onnx(model, constants: dict | None = None, name: str | None = None) -> Graph:
    """The graphc graph of an ONNX model (a path, bytes, or an ``onnx.ModelProto``).

    Graph inputs and outputs keep their ONNX names (made Python identifiers); a dynamic leading dim becomes the
    batch dim ``m``. Float initializers become params; ``graph.initial_params`` holds their values.
    ``constants`` fixes graph inputs to values (name -> array), for inputs that must be known at import, such as a
    Reshape's shape fed as an input; an initializer named there becomes a constant of that value instead of a param.
    ``name`` names the graph (default: the file's stem, else the ONNX graph's name).
    """
    onnx = _require_onnx()
    proto, default_name = _load(onnx, model)
    return _Importer(onnx, _prepared(onnx, proto), dict(constants or {}), name or default_name).run()


def _require_onnx():
    try:
        import onnx
    except ImportError as exc:
        raise GraphError("importing ONNX models needs the onnx package: pip install graphc[onnx]") from exc
    return onnx


def _load(onnx, model):
    """The ModelProto and a default graph name."""
    if isinstance(model, onnx.ModelProto):
        return model, model.graph.name or "model"
    if isinstance(model, bytes):
        proto = onnx.load_model_from_string(model)
        return proto, proto.graph.name or "model"
    if isinstance(model, (str, Path)):
        path = Path(model)
        if not path.is_file():
            raise GraphError(f"{model}: no such file")
        try:
            return onnx.load(str(path)), path.stem
        except Exception as exc:  # noqa: BLE001 - a broken file is reported as such
            raise GraphError(f"{model}: not a readable ONNX model ({type(exc).__name__}: {exc})") from None
    raise GraphError(f"from_onnx: expected a path, bytes or an onnx.ModelProto, not {type(model).__name__}")


def _prepared(onnx, proto):
    """Check the opset, inline model-local functions, and infer the type of every value."""
    versions = {o.domain or "ai.onnx": o.version for o in proto.opset_import}
    version = versions.get("ai.onnx")
    if version is None or not MIN_OPSET <= version <= MAX_OPSET:
        raise GraphError(f"the model uses opset {version} of the default ONNX domain; graphc imports opsets "
                         f"{MIN_OPSET} to {MAX_OPSET} (older models convert with onnx.version_converter)")
    if proto.functions:
        proto = onnx.inliner.inline_local_functions(proto)
    try:
        return onnx.shape_inference.infer_shapes(proto)
    except Exception:  # noqa: BLE001 - inference only adds types to check against; the import goes on without
        return proto


# -- names ----------------------------------------------------------------------------------------------
class _Names:
    """Python identifiers for ONNX names, unique and the same on every import of a model."""

    def __init__(self):
        self.used = set(RESERVED)

    def fresh(self, onnx_name: str, fallback: str = "v") -> str:
        base = identifier(onnx_name, fallback)
        name, k = base, 1
        while name in self.used:
            k += 1
            name = f"{base}_{k}"
        self.used.add(name)
        return name


def identifier(onnx_name: str, fallback: str = "v") -> str:
    """``/fc1/Gemm_output_0`` -> ``fc1_Gemm``; ``input.1`` -> ``input_1``; ``0`` -> ``v0``."""
    base = re.sub(r"_output_0$", "", onnx_name)
    base = re.sub(r"_+", "_", re.sub(r"\W", "_", base)).strip("_")
    if not base or not base[0].isalpha():
        base = fallback + base
    if keyword.iskeyword(base) or not base.isidentifier():
        base = base + "_" if base.isidentifier() else fallback
    return base


# -- one node -------------------------------------------------------------------------------------------
class _Node:
    """An ONNX node with its attributes as Python values, and the words that name it in errors."""

    def __init__(self, onnx, proto):
        self.proto, self.op = proto, proto.op_type
        self.inputs, self.outputs = list(proto.input), list(proto.output)
        self.attrs = {a.name: _attribute(onnx, a) for a in proto.attribute}
        self.label = repr(proto.name) if proto.name else f"with output {proto.output[0]!r}"

    def attr(self, key, default=None):
        return self.attrs.get(key, default)

    def refuse(self, what: str) -> GraphError:
        return GraphError(f"ONNX node {self.label} ({self.op}): {what}")


def _attribute(onnx, attr):
    value = onnx.helper.get_attribute_value(attr)
    if isinstance(value, onnx.TensorProto):
        return onnx.numpy_helper.to_array(value)
    if isinstance(value, bytes):
        return value.decode()
    return value


# -- the importer ---------------------------------------------------------------------------------------
class _Importer:
    """Walks the ONNX graph once, in its (topological) node order, mapping each value name to a graphc Tensor or,
    for values known at import, to a NumPy array (object arrays hold sympy expressions of symbolic dims)."""

    def __init__(self, onnx, proto, constants: dict, name: str):
        self.onnx, self.proto, self.constants = onnx, proto, constants
        self.names = _Names()
        self.graph = Graph(identifier(name, "model"))
        self.values: dict = {}
        self.dtypes: dict = {}  # ONNX name -> the NumPy dtype ONNX gives it (narrow ints are held as int64)
        self.expected = _declared_dtypes(onnx, proto.graph)
        self.initial: dict = {}
        self.batch_param = None  # the dim_param name of the leading dynamic dim that became m
        self.dim_symbols: dict = {}

    def run(self) -> Graph:
        g = self.proto.graph
        initializers = {t.name: t for t in g.initializer}
        unknown = set(self.constants) - {i.name for i in g.input} - set(initializers)
        if unknown:
            raise GraphError(f"constants {sorted(unknown)} are not inputs of the ONNX graph")
        with self.graph:
            uses = _uses(g)
            self._declare_inputs([i for i in g.input if i.name not in initializers], uses)
            self._declare_initializers(list(g.initializer), uses)
            self.output_names = self._output_names(g.output)
            for proto in g.node:
                self._convert(_Node(self.onnx, proto))
            self._declare_outputs(g.output)
        self.graph.initial_params = self.initial
        return self.graph

    # -- sources ----------------------------------------------------------------------------------------
    def _declare_inputs(self, inputs, uses: dict) -> None:
        for info in inputs:
            if info.name in self.constants:
                self._set(info.name, self._fixed(info))
                continue
            dtype = self._input_dtype(info)
            if uses.get(info.name) and all(use == ("CastLike", 1) for use in uses[info.name]):
                self._set(info.name, np.zeros((), dtype))  # only its dtype is read
                continue
            shape = self._input_shape(info)
            if dtype in WIDENED or dtype in DTYPES:
                name = self.names.fresh(info.name, "x")
                self._set(info.name, gc.input(name, shape, dtype=DTYPES.get(dtype, "int64")), dtype)
            else:
                raise GraphError(f"ONNX graph input {info.name!r} has dtype {dtype}: graphc computes in float32, "
                                 "float64, int64 and bool (narrower integers are widened to int64)")

    def _fixed(self, info) -> np.ndarray:
        """The value ``constants=`` gives a graph input, checked against its declared shape."""
        value = np.asarray(self.constants[info.name], dtype=self._input_dtype(info))
        declared = [d.dim_value if d.HasField("dim_value") else None for d in info.type.tensor_type.shape.dim]
        if info.type.tensor_type.HasField("shape") and (
                len(declared) != value.ndim or any(d not in (None, n) for d, n in zip(declared, value.shape))):
            raise GraphError(f"constants[{info.name!r}] has shape {value.shape}; the graph input is declared "
                             f"{tuple(d if d is not None else '?' for d in declared)}")
        return value

    def _input_dtype(self, info) -> np.dtype:
        t = info.type
        if t.WhichOneof("value") != "tensor_type":
            raise GraphError(f"ONNX graph input {info.name!r} is a {t.WhichOneof('value')}: only tensors import")
        if t.tensor_type.elem_type == 0:
            raise GraphError(f"ONNX graph input {info.name!r} has no element type")
        dtype = self.onnx.helper.tensor_dtype_to_np_dtype(t.tensor_type.elem_type)
        if dtype == np.dtype("uint64") or dtype.kind not in "biuf":
            raise GraphError(f"ONNX graph input {info.name!r} has dtype {dtype}, which graphc cannot hold")
        return dtype

    def _input_shape(self, info) -> tuple:
        """Concrete dims stay; a dynamic leading dim becomes ``m``, other dynamic dims symbols of their own."""
        if not info.type.tensor_type.HasField("shape"):
            raise GraphError(f"ONNX graph input {info.name!r} has no declared rank; graphc needs one")
        dims = []
        for axis, d in enumerate(info.type.tensor_type.shape.dim):
            if d.HasField("dim_value"):
                if d.dim_value <= 0:
                    raise GraphError(f"ONNX graph input {info.name!r} has a dim of size {d.dim_value}: empty "
                                     "tensors are not supported")
                dims.append(d.dim_value)
            else:
                dims.append(self._symbol(d.dim_param if d.HasField("dim_param") else None, info.name, axis))
        return tuple(dims)

    def _symbol(self, param, input_name: str, axis: int):
        if axis == 0 and (param is None or self.batch_param in (None, param)):
            self.batch_param = self.batch_param or param
            return gc.dim("m")
        if param is not None and param == self.batch_param:
            return gc.dim("m")
        key = param if param is not None else f"{input_name}_{axis}"
        if key not in self.dim_symbols:
            self.dim_symbols[key] = gc.dim(self.names.fresh(key, "d"))
        return self.dim_symbols[key]

    def _declare_initializers(self, tensors, uses: dict) -> None:
        for t in tensors:
            if t.name not in uses:
                continue
            if t.name in self.constants:  # fixed as a constant, not trained
                self._set(t.name, np.asarray(self.constants[t.name]))
                continue
            if t.data_location == self.onnx.TensorProto.EXTERNAL and not t.raw_data:
                raise GraphError(f"ONNX initializer {t.name!r}: its external data was not loaded")
            arr = self.onnx.numpy_helper.to_array(t)
            if arr.dtype == object or arr.dtype.kind not in "biuf":
                raise GraphError(f"ONNX initializer {t.name!r} has dtype {arr.dtype}, which graphc cannot hold")
            trainable = arr.dtype.kind == "f" and any(i not in CONST_INPUTS.get(op, ()) for op, i in uses[t.name])
            if trainable:
                self._set(t.name, self._param(t.name, arr))
            else:
                self._set(t.name, arr)

    def _param(self, onnx_name: str, arr: np.ndarray):
        if arr.dtype not in DTYPES or arr.size == 0:
            raise GraphError(f"ONNX initializer {onnx_name!r}: a {arr.dtype} array of shape {arr.shape} cannot be a "
                             "graphc param (float32 or float64, not empty)")
        name = self.names.fresh(onnx_name, "w")
        self.initial[name] = np.array(arr, order="C")
        return gc.param(name, arr.shape, dtype=DTYPES[arr.dtype], init=_init_spec(arr))

    def _output_names(self, outputs) -> dict:
        """ONNX output name -> graphc output name: unique, and clear of input and param names."""
        taken, out = set(self.graph.inputs) | set(self.graph.params), {}
        for info in outputs:
            base = name = identifier(info.name, "out")
            k = 1
            while name in taken:
                k += 1
                name = f"{base}_{k}"
            taken.add(name)
            out[info.name] = name
        self.names.used.update(out.values())  # intermediate values take other names
        return out

    def _declare_outputs(self, outputs) -> None:
        for info in outputs:
            if info.name not in self.values:
                raise GraphError(f"ONNX graph output {info.name!r} is computed by no node")
            value, dtype = self.values[info.name], self.dtypes[info.name]
            if dtype not in DTYPES:
                raise GraphError(f"ONNX graph output {info.name!r} has dtype {dtype}; graphc would compute it as "
                                 "int64 (it computes in float32, float64, int64 and bool)")
            t = self.tensor(value, None, f"ONNX graph output {info.name!r}")
            self.graph.output(**{self.output_names[info.name]: t})

    # -- nodes ------------------------------------------------------------------------------------------
    def _convert(self, node: _Node) -> None:
        if node.proto.domain not in ("", "ai.onnx"):
            raise node.refuse(f"ops of domain {node.proto.domain!r} are not supported (only the default domain)")
        args = [self.values[n] if n else None for n in node.inputs]
        missing = [n for n in node.inputs if n and n not in self.values]
        if missing:
            raise node.refuse(f"inputs {missing} are computed by no earlier node")
        self._check_widths(node, args)
        try:
            results = self._results(node, args)
        except GraphError as exc:
            if str(exc).startswith("ONNX node "):
                raise
            raise node.refuse(str(exc)) from None
        for i, out in enumerate(node.outputs):
            if out:
                self._store(node, out, results[i] if i < len(results) else None, i)

    def _results(self, node: _Node, args) -> list:
        static = all(a is None or isinstance(a, np.ndarray) for a in args)
        if static and args and node.op not in NOT_FOLDED:
            symbolic = any(a is not None and a.dtype == object for a in args)
            if not symbolic:
                return self._fold(node, args)
            if node.op in SYMBOLIC:
                return [SYMBOLIC[node.op](self, node, *args)]
        handler = HANDLERS.get(node.op)
        if handler is None:
            raise node.refuse("this op is not supported by graphc's ONNX import")
        out = handler(self, node, *args)
        return list(out) if isinstance(out, (list, tuple)) else [out]

    def _check_widths(self, node: _Node, args) -> None:
        if node.op in WIDTH_FREE:
            return
        for i, (name, arg) in enumerate(zip(node.inputs, args)):
            if i in WIDTH_FREE_INPUTS.get(node.op, ()):
                continue
            if name and not isinstance(arg, np.ndarray) and self.dtypes[name] in WIDENED:
                raise node.refuse(f"input {name!r} is {self.dtypes[name]}: graphc holds narrower integers as int64, "
                                  "so only comparisons, Where, Max/Min, Clip, casts and shape ops take them "
                                  "(elsewhere overflow and rounding could differ)")

    def _store(self, node: _Node, out: str, value, index: int) -> None:
        if value is None:
            raise node.refuse(f"output #{index} ({out!r}) is not supported")
        if isinstance(value, np.ndarray):
            self._set(out, value)
            return
        if any(d == 0 for d in value.shape):
            raise node.refuse(f"output {out!r} is an empty tensor {value.shape}; graphc does not support those")
        dtype = self._result_dtype(node, value)
        expected = self.expected.get(out)
        if expected is not None and expected != dtype:
            raise node.refuse(f"output {out!r} is {expected} in ONNX; graphc would compute it as {value.dtype}")
        if value.node.op not in ("input", "param") and value.name is None:
            value.named(self.names.fresh(out))
        self._set(out, value, dtype)

    def _result_dtype(self, node: _Node, value) -> np.dtype:
        """The ONNX dtype of a graphc result: an int64 of a value-preserving op keeps its data input's width."""
        dtype = np.dtype(value.dtype)
        if dtype == np.dtype("int64") and node.op in WIDTH_FREE - COMPARISONS - {"Shape", "Size", "Cast"}:
            data = node.inputs[1 if node.op == "Where" else 0]
            return self.dtypes.get(data, dtype)
        return dtype

    def _set(self, name: str, value, dtype=None) -> None:
        self.values[name] = value
        if dtype is None:
            dtype = np.dtype("int64") if value.dtype == object else np.dtype(value.dtype)
        self.dtypes[name] = dtype

    def _fold(self, node: _Node, args) -> list:
        """Evaluate a node whose inputs are all known with onnx's reference implementation."""
        from onnx.reference import ReferenceEvaluator
        helper = self.onnx.helper
        feeds = {n: a for n, a in zip(node.inputs, args) if n}
        infos = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
                 for n, a in feeds.items()]
        outs = [self.onnx.ValueInfoProto(name=o) for o in node.outputs if o]
        model = helper.make_model(helper.make_graph([node.proto], "fold", infos, outs),
                                  opset_imports=self.proto.opset_import, ir_version=self.proto.ir_version)
        try:
            results = ReferenceEvaluator(model).run(None, feeds)
        except Exception as exc:  # noqa: BLE001 - onnx's evaluator rejects the node's constant inputs
            raise node.refuse(f"cannot evaluate it on its constant inputs ({type(exc).__name__}: {exc})") from None
        found = iter(results)
        return [np.asarray(next(found)) if o else None for o in node.outputs]

    # -- operands, for the handlers ---------------------------------------------------------------------
    def tensor(self, value, node: _Node | None, what: str):
        """``value`` as a graph Tensor: a known array becomes a ``gc.const``."""
        if value is None or not isinstance(value, np.ndarray):
            return value
        where = node.refuse if node is not None else GraphError
        if value.dtype == object:
            raise where(f"{what} depends on the symbolic dims {_symbols(value)}; graphc cannot compute with "
                        "dim values as data")
        if value.size == 0:
            raise where(f"{what} is an empty tensor {value.shape}; graphc does not support those")
        dtype = DTYPES.get(value.dtype) or ("int64" if value.dtype in WIDENED else None)
        if dtype is None:
            raise where(f"{what} has dtype {value.dtype}, which graphc cannot hold")
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            raise where(f"{what} holds inf or NaN, which graphc's generated code cannot hold as a constant yet")
        return _const(value, dtype)

    def operand(self, value, node: _Node, what: str):
        """An operand of an elementwise op: a known 0-d number stays a Python scalar (exact in the expression)."""
        if isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "iuf":
            if value.dtype.kind == "f" and not np.isfinite(value):
                raise node.refuse(f"{what} is {value}, which graphc's generated code cannot hold yet")
            return value.item()
        return self.tensor(value, node, what)

    def static(self, value, node: _Node, what: str) -> np.ndarray:
        """A value that must be known at import: an ndarray, else a refusal that says how to give it."""
        if isinstance(value, np.ndarray):
            return value
        raise node.refuse(f"{what} must be known when the model is imported (a Constant or an initializer), not "
                          "computed from graph inputs; fix a graph input with from_onnx(..., constants={name: value})")

    def ints(self, value, node: _Node, what: str) -> list[int]:
        arr = self.static(value, node, what)
        if arr.dtype == object:
            raise node.refuse(f"{what} depends on the symbolic dims {_symbols(arr)}")
        return [int(v) for v in arr.reshape(-1)]


def _declared_dtypes(onnx, graph) -> dict:
    """ONNX name -> NumPy dtype, for every value whose type the model declares or inference found."""
    out = {}
    for info in [*graph.value_info, *graph.output]:
        t = info.type
        if t.WhichOneof("value") == "tensor_type" and t.tensor_type.elem_type:
            try:
                out[info.name] = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.tensor_type.elem_type))
            except (KeyError, TypeError, ValueError):
                continue
    return out


def _uses(graph) -> dict:
    """Value name -> [(op type, input index)] of each use; a graph output counts as a use as data."""
    uses: dict = {}
    for node in graph.node:
        for i, name in enumerate(node.input):
            uses.setdefault(name, []).append((node.op_type, i))
    for out in graph.output:
        uses.setdefault(out.name, []).append(("output", 0))
    return uses


def _init_spec(arr: np.ndarray):
    """A declared init for an imported param: its fresh values have the trained ones' scale."""
    if not arr.any():
        return "zeros"
    if (arr == 1).all():
        return "ones"
    std = float(np.std(arr))
    return ("normal", std) if std > 0 else ("uniform", float(arr.flat[0]), float(arr.flat[0]))


def _const(arr: np.ndarray, dtype: str):
    """``gc.const``, keeping a 0-d array 0-d (gc.const alone makes it 1-d)."""
    if arr.ndim == 0:
        return gc.reshape(gc.const(arr.reshape(1), dtype=dtype), ())
    return gc.const(arr, dtype=dtype)


def _symbols(arr: np.ndarray) -> str:
    found = sorted({str(s) for v in arr.reshape(-1) for s in getattr(v, "free_symbols", ())})
    return ", ".join(found)


def _as_dim(v):
    """A shape entry as graphc takes it: a Python int, or a sympy expression of symbolic dims."""
    if isinstance(v, sympy.Basic):
        return int(v) if v.is_Integer else v
    return int(v)


# -- handlers: one function per op family --------------------------------------------------------------
HANDLERS: dict = {}
SYMBOLIC: dict = {}  # ops folded on arrays that hold symbolic dims (shape arithmetic)


def handles(*ops, symbolic: bool = False):
    def register(fn):
        for op in ops:
            (SYMBOLIC if symbolic else HANDLERS)[op] = fn
        return fn
    return register


def _axis(node: _Node, axis: int, ndim: int) -> int:
    if not -ndim <= axis < max(ndim, 1):
        raise node.refuse(f"axis {axis} is out of range for a {ndim}-d tensor")
    return axis % max(ndim, 1)


def _axes(node: _Node, axes, ndim: int) -> tuple[int, ...]:
    out = tuple(sorted(_axis(node, a, ndim) for a in axes))
    if len(set(out)) != len(out):
        raise node.refuse(f"axes {list(axes)} repeat an axis")
    return out


def _along(x, axis: int, index):
    """``x[..., index, ...]`` with ``index`` (an int or a slice) on ``axis``."""
    return x[(slice(None),) * axis + (index,)]


def _dims_array(dims) -> np.ndarray:
    """Dims as a shape value: int64 where all are numbers, else an object array of sympy expressions."""
    dims = [sympy.sympify(d) for d in dims]
    if all(d.is_Integer for d in dims):
        return np.array([int(d) for d in dims], dtype=np.int64)
    out = np.empty(len(dims), dtype=object)
    out[:] = dims
    return out


def _is_float(imp: _Importer, name: str) -> bool:
    return imp.dtypes[name].kind == "f"


# -- elementwise ----------------------------------------------------------------------------------------
def _exp_below_zero(x, alpha, scale=1.0):
    """``alpha·(exp(x·scale) − 1)`` for x ≤ 0 and ``x`` above: exp never sees a large positive x."""
    return gc.where(x > 0, x, alpha * (gc.exp(gc.minimum(x, 0) * scale) - 1))


def _later(op: str, node: _Node):
    if not hasattr(gc, op):
        raise node.refuse(f"needs gc.{op}, which this graphc does not have yet")
    return getattr(gc, op)


UNARY = {
    "Sigmoid": lambda x, node: gc.sigmoid(x),
    "Tanh": lambda x, node: gc.tanh(x),
    "Softplus": lambda x, node: gc.softplus(x),
    "Exp": lambda x, node: gc.exp(x),
    "Log": lambda x, node: gc.log(x),
    "Sqrt": lambda x, node: gc.sqrt(x),
    "Neg": lambda x, node: -x,
    "Reciprocal": lambda x, node: 1 / x,
    "Relu": lambda x, node: gc.relu(x) if x.dtype.startswith("float") else gc.where(x > 0, x, 0),
    "Abs": lambda x, node: gc.abs(x) if x.dtype.startswith("float") else gc.where(x < 0, -x, x),
    "Softsign": lambda x, node: x / (1 + gc.abs(x)),
    "Mish": lambda x, node: x * gc.tanh(gc.softplus(x)),
    "LeakyRelu": lambda x, node: gc.leaky_relu(x, node.attr("alpha", 0.01)),
    "Elu": lambda x, node: _exp_below_zero(x, node.attr("alpha", 1.0)),
    "Selu": lambda x, node: node.attr("gamma", 1.05070102214813232421875) * _exp_below_zero(
        x, node.attr("alpha", 1.67326319217681884765625)),
    "Celu": lambda x, node: _exp_below_zero(x, node.attr("alpha", 1.0), 1 / node.attr("alpha", 1.0)),
    "HardSigmoid": lambda x, node: gc.maximum(0, gc.minimum(1, node.attr("alpha", 0.2) * x + node.attr("beta", 0.5))),
    "HardSwish": lambda x, node: x * gc.maximum(0, gc.minimum(1, x / 6 + 0.5)),
    "ThresholdedRelu": lambda x, node: gc.where(x > node.attr("alpha", 1.0), x, 0),
    "Erf": lambda x, node: _later("erf", node)(x),
    "Gelu": lambda x, node: _later("gelu", node)(x, approximate=node.attr("approximate", "none")),
}


@handles(*UNARY)
def _unary(imp, node, x):
    return UNARY[node.op](imp.tensor(x, node, "the input"), node)


@handles("PRelu")
def _prelu(imp, node, x, slope):
    x = imp.tensor(x, node, "the input")
    return gc.where(x < 0, imp.operand(slope, node, "slope") * x, x)


ARITHMETIC = {"Add": lambda a, b: a + b, "Sub": lambda a, b: a - b, "Mul": lambda a, b: a * b,
              "Div": lambda a, b: a / b, "Pow": lambda a, b: a ** b}


@handles(*ARITHMETIC)
def _arithmetic(imp, node, a, b):
    if node.op in ("Div", "Pow") and not _is_float(imp, node.inputs[0]):
        raise node.refuse(f"{node.op} of {imp.dtypes[node.inputs[0]]} values: graphc computes it in floating "
                          "point, ONNX in integers")
    return ARITHMETIC[node.op](imp.operand(a, node, "input A"), imp.operand(b, node, "input B"))


@handles("Add", "Sub", "Mul", symbolic=True)
def _dim_arithmetic(imp, node, a, b):
    return np.asarray(ARITHMETIC[node.op](a.astype(object), b.astype(object)), dtype=object)


COMPARE = {"Greater": lambda a, b: gc.greater(a, b), "Less": lambda a, b: gc.less(a, b),
           "Equal": lambda a, b: gc.equal(a, b), "GreaterOrEqual": lambda a, b: gc.greater_equal(a, b),
           "LessOrEqual": lambda a, b: gc.less_equal(a, b)}


@handles(*COMPARE)
def _compare(imp, node, a, b):
    return COMPARE[node.op](imp.operand(a, node, "input A"), imp.operand(b, node, "input B"))


@handles("And", "Or", "Xor", "Not")
def _logical(imp, node, *args):
    count = sum(gc.where(imp.tensor(a, node, "an input"), 1, 0) for a in args)  # how many inputs are true
    return {"And": lambda: gc.equal(count, 2), "Or": lambda: gc.greater(count, 0),
            "Xor": lambda: gc.equal(count, 1), "Not": lambda: gc.equal(count, 0)}[node.op]()


VARIADIC = {"Sum": lambda a, b: a + b, "Mean": lambda a, b: a + b,
            "Max": lambda a, b: gc.maximum(a, b), "Min": lambda a, b: gc.minimum(a, b)}


@handles(*VARIADIC)
def _variadic(imp, node, *args):
    xs = [imp.operand(a, node, f"input {i}") for i, a in enumerate(args)]
    xs.sort(key=lambda v: not isinstance(v, gc.Tensor))  # a tensor first: it carries the graph and the dtype
    out = xs[0]
    for x in xs[1:]:
        out = VARIADIC[node.op](out, x)
    return out / len(xs) if node.op == "Mean" else out


@handles("Where")
def _where(imp, node, cond, a, b):
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):  # a tensor branch gives the result its dtype
        a = imp.tensor(a, node, "input X")
    return gc.where(imp.tensor(cond, node, "the condition"), imp.operand(a, node, "input X"),
                    imp.operand(b, node, "input Y"))


@handles("Clip")
def _clip(imp, node, x, low=None, high=None):
    y = imp.tensor(x, node, "the input")
    if low is not None:
        y = gc.maximum(y, imp.operand(low, node, "min"))
    if high is not None:
        y = gc.minimum(y, imp.operand(high, node, "max"))
    return y


@handles("Identity")
def _identity(imp, node, x):
    return x


@handles("Dropout")
def _dropout(imp, node, x, ratio=None, training=None):
    if training is not None and imp.static(training, node, "training_mode").any():
        raise node.refuse("training_mode=True is not supported (graphc imports models for inference: the dropout "
                          "is left out)")
    if len(node.outputs) < 2 or not node.outputs[1]:
        return x
    if isinstance(x, np.ndarray):
        return x, np.ones(x.shape, dtype=bool)
    return x, gc.broadcast_to(_const(np.array(True), "bool"), x.shape)


# -- casts ----------------------------------------------------------------------------------------------
@handles("Cast", "CastLike")
def _cast(imp, node, x, like=None):
    if node.op == "Cast":
        target = np.dtype(imp.onnx.helper.tensor_dtype_to_np_dtype(node.attr("to")))
    else:
        target = imp.dtypes[node.inputs[1]]
    source = imp.dtypes[node.inputs[0]]
    x = imp.tensor(x, node, "the input")
    if target == source or (target == np.dtype("int64") and source in WIDENED):
        return x
    if target not in DTYPES:
        raise node.refuse(f"a cast from {source} to {target}: graphc computes in float32, float64, int64 and bool")
    return _convert_dtype(node, x, DTYPES[target])


def _convert_dtype(node: _Node, x, target: str):
    """Exact conversions only: widening ones multiply by a one of the target type, bools choose between two."""
    if target == "bool":
        return gc.greater(gc.where(gc.equal(x, 0), 0, 1), 0)
    if x.dtype == "bool":
        return gc.where(x, _const(np.ones((), target), target), 0)
    if target.startswith("float") and (x.dtype == "int64" or (x.dtype, target) == ("float32", "float64")):
        return x * _const(np.ones((), target), target)
    raise node.refuse(f"a cast from {x.dtype} to {target}: graphc has no op that "
                      + ("rounds float64 to float32" if target == "float32" else "truncates floats to integers"))


# -- constants and shapes -------------------------------------------------------------------------------
@handles("Constant")
def _constant(imp, node):
    for key in ("value", "value_float", "value_floats", "value_int", "value_ints"):
        if key in node.attrs:
            value = node.attrs[key]
            dtype = np.float32 if key.startswith("value_float") else np.int64 if key.startswith("value_int") else None
            arr = np.array(value, dtype=dtype)
            if arr.dtype == object or arr.dtype.kind not in "biuf":
                raise node.refuse(f"a constant of dtype {arr.dtype} (graphc holds numbers and bools)")
            return arr
    raise node.refuse(f"only tensor and number constants are supported, not {sorted(node.attrs)}")


@handles("Shape", symbolic=True)
@handles("Shape")
def _shape(imp, node, x):
    dims = list(x.shape)
    start, end = node.attr("start", 0), node.attr("end", len(dims))
    return _dims_array(dims[start:end])  # Python slicing clamps like ONNX does


@handles("Size", symbolic=True)
@handles("Size")
def _size(imp, node, x):
    count = sympy.Mul(*[sympy.sympify(d) for d in x.shape])
    return np.array(int(count), dtype=np.int64) if count.is_Integer else np.array(count, dtype=object)


@handles("ConstantOfShape", symbolic=True)
def _constant_of_shape(imp, node, shape):
    value = np.asarray(node.attr("value", np.zeros(1, np.float32))).reshape(())
    return gc.broadcast_to(imp.tensor(value, node, "the value"), tuple(_as_dim(d) for d in shape))


@handles("Reshape")
def _reshape(imp, node, x, shape):
    x = imp.tensor(x, node, "the data")
    return gc.reshape(x, _target_shape(imp, node, x.shape, shape))


@handles("Reshape", symbolic=True)
def _reshape_known(imp, node, x, shape):
    dims = _target_shape(imp, node, x.shape, shape)
    if any(not isinstance(d, int) for d in dims):
        raise node.refuse(f"reshaping a known value to the symbolic shape {dims}")
    return x.reshape(dims)


def _target_shape(imp, node, in_shape, shape) -> tuple:
    """A Reshape's target: 0 copies the input's dim (unless allowzero), one -1 takes what is left."""
    target = imp.static(shape, node, "the target shape")
    out = []
    for i, d in enumerate(_as_dim(v) for v in target.reshape(-1)):
        if isinstance(d, int) and d == 0:
            if node.attr("allowzero", 0):
                raise node.refuse("allowzero=1 with a 0 in the shape makes an empty tensor; graphc has none")
            if i >= len(in_shape):
                raise node.refuse(f"a 0 at position {i} of the shape copies no dim of a {len(in_shape)}-d input")
            d = in_shape[i]
        out.append(d)
    return tuple(out)


@handles("Transpose")
def _transpose(imp, node, x):
    x = imp.tensor(x, node, "the input")
    return gc.transpose(x, node.attr("perm", list(reversed(range(x.ndim)))))


@handles("Flatten")
def _flatten(imp, node, x):
    x = imp.tensor(x, node, "the input")
    axis = node.attr("axis", 1)
    if not -x.ndim <= axis <= x.ndim:
        raise node.refuse(f"axis {axis} is out of range for a {x.ndim}-d tensor")
    axis = axis + x.ndim if axis < 0 else axis
    return gc.reshape(x, (sympy.Mul(*x.shape[:axis]), sympy.Mul(*x.shape[axis:])))


def _squeezed(imp, node, shape, axes) -> tuple:
    if axes is None:
        if any(not d.is_number for d in map(sympy.sympify, shape)):
            raise node.refuse(f"squeezing every size-1 axis of {tuple(shape)}: a symbolic dim may be 1 or not")
        return tuple(d for d in shape if d != 1)
    axes = _axes(node, imp.ints(axes, node, "axes"), len(shape))
    for a in axes:
        if shape[a] != 1:
            raise node.refuse(f"axis {a} has size {shape[a]}, not 1, and cannot be squeezed")
    return tuple(d for i, d in enumerate(shape) if i not in axes)


def _unsqueezed(imp, node, shape, axes) -> tuple:
    axes = imp.ints(axes, node, "axes")
    out = list(shape)
    for a in _axes(node, axes, len(shape) + len(axes)):  # axes count in the output's rank
        out.insert(a, 1)
    return tuple(out)


@handles("Squeeze", "Unsqueeze")
def _squeeze(imp, node, x, axes=None):
    x = imp.tensor(x, node, "the input")
    shaped = _squeezed if node.op == "Squeeze" else _unsqueezed
    return gc.reshape(x, shaped(imp, node, x.shape, axes))


@handles("Squeeze", "Unsqueeze", symbolic=True)
def _squeeze_known(imp, node, x, axes=None):
    shaped = _squeezed if node.op == "Squeeze" else _unsqueezed
    return x.reshape(tuple(int(d) for d in shaped(imp, node, x.shape, axes)))


@handles("Concat")
def _concat(imp, node, *xs):
    tensors = [imp.tensor(x, node, f"input {i}") for i, x in enumerate(xs)]
    return gc.concat(tensors, axis=_axis(node, node.attr("axis"), tensors[0].ndim))


@handles("Concat", symbolic=True)
def _concat_known(imp, node, *xs):
    return np.concatenate(xs, axis=_axis(node, node.attr("axis"), xs[0].ndim))


@handles("Slice")
def _slice(imp, node, x, starts, ends, axes=None, steps=None):
    x = imp.tensor(x, node, "the data")
    index = [slice(None)] * x.ndim
    for axis, start, end, step in _slice_args(imp, node, x.ndim, starts, ends, axes, steps):
        if step <= 0:
            raise node.refuse(f"step {step} on axis {axis}: only positive steps are supported")
        index[axis] = _positive_slice(node, x.shape[axis], start, end, step)
    return x[tuple(index)]


@handles("Slice", symbolic=True)
def _slice_known(imp, node, x, starts, ends, axes=None, steps=None):
    index = [slice(None)] * x.ndim
    for axis, start, end, step in _slice_args(imp, node, x.ndim, starts, ends, axes, steps):
        index[axis] = slice(start, end, step)  # Python's slicing clamps like ONNX's, for both signs of step
    return x[tuple(index)]


def _slice_args(imp, node, ndim, starts, ends, axes, steps):
    starts, ends = imp.ints(starts, node, "starts"), imp.ints(ends, node, "ends")
    axes = list(range(len(starts))) if axes is None else [_axis(node, a, ndim) for a in imp.ints(axes, node, "axes")]
    steps = [1] * len(starts) if steps is None else imp.ints(steps, node, "steps")
    if not len(starts) == len(ends) == len(axes) == len(steps) or len(set(axes)) != len(axes):
        raise node.refuse("starts, ends, axes and steps must have one entry per distinct axis")
    return zip(axes, starts, ends, steps)


BIG = 2**31 - 1  # exporters write INT_MAX-like ends for "to the end"


def _positive_slice(node, d, start: int, end: int, step: int) -> slice:
    """ONNX's clamping of start and end for a positive step; a symbolic dim is assumed long enough."""
    if d.is_number:
        n = int(d)
        start, end = (min(max(v + n if v < 0 else v, 0), n) for v in (start, end))
        if end <= start:
            raise node.refuse(f"the slice {start}:{end} of a dim of size {n} is empty; graphc has no empty tensors")
        return slice(start, end, step)
    start = d + start if start < 0 else start
    end = d if end >= BIG else d + end if end < 0 else end
    return slice(start, end, step)


@handles("Gather")
def _gather(imp, node, x, indices):
    x = imp.tensor(x, node, "the data")
    axis = _axis(node, node.attr("axis", 0), x.ndim)
    if isinstance(indices, np.ndarray):
        return _gather_known(node, x, axis, imp.ints(indices, node, "indices"), indices.shape)
    take = _later("take", node)
    d = x.shape[axis]
    ids = imp.tensor(indices, node, "indices")
    return take(x, gc.where(ids < 0, ids + d, ids), axis=axis)  # ONNX counts negative indices from the end


def _gather_known(node, x, axis, flat, shape):
    """Known indices: one slice where they step evenly, else a concat of single slices; then the index shape."""
    d = x.shape[axis]
    if d.is_number:
        n = int(d)
        if any(not -n <= i < n for i in flat):
            raise node.refuse(f"indices {flat} are out of range for axis {axis} of size {n}")
        flat = [i % n for i in flat]
    elif any(i < 0 for i in flat):
        flat = [d + i if i < 0 else i for i in flat]
    steps = {sympy.sympify(b - a) for a, b in zip(flat, flat[1:])}
    if len(steps) <= 1 and all(s.is_number and s > 0 for s in steps):
        step = int(steps.pop()) if steps else 1
        picked = _along(x, axis, slice(flat[0], flat[-1] + 1, step))
    else:
        picked = gc.concat([_along(x, axis, slice(i, i + 1)) for i in flat], axis=axis)
    return gc.reshape(picked, (*x.shape[:axis], *shape, *x.shape[axis + 1:]))


@handles("Gather", symbolic=True)
def _gather_values(imp, node, x, indices):
    axis = _axis(node, node.attr("axis", 0), x.ndim)
    n = x.shape[axis]
    idx = indices.astype(np.int64)
    if ((idx < -n) | (idx >= n)).any():
        raise node.refuse(f"indices {idx.tolist()} are out of range for axis {axis} of size {n}")
    return np.asarray(np.take(x, idx % n, axis=axis), dtype=x.dtype)  # take gives a 0-d result as a scalar


@handles("Expand")
def _expand(imp, node, x, shape):
    x = imp.tensor(x, node, "the input")
    target = [_as_dim(d) for d in imp.static(shape, node, "the shape").reshape(-1)]
    rank = max(len(target), x.ndim)
    a = [1] * (rank - x.ndim) + list(x.shape)
    b = [1] * (rank - len(target)) + target
    out = []
    for p, q in zip(a, b):
        if p != q and p != 1 and q != 1:
            raise node.refuse(f"shape {target} does not broadcast with the input's {tuple(x.shape)}")
        out.append(p if q == 1 else q)
    return gc.broadcast_to(x, tuple(out))


@handles("Split")
def _split(imp, node, x, split=None):
    x = imp.tensor(x, node, "the input")
    axis = _axis(node, node.attr("axis", 0), x.ndim)
    d = x.shape[axis]
    if not d.is_number:
        raise node.refuse(f"splitting the symbolic dim {d}")
    n = len(node.outputs)
    if split is not None:
        sizes = imp.ints(split, node, "split")
    else:  # opset 18's num_outputs: equal parts, the last one smaller
        chunk = -(-int(d) // n)
        sizes = [chunk] * (n - 1) + [int(d) - chunk * (n - 1)]
    if sum(sizes) != int(d) or len(sizes) != n or min(sizes) <= 0:
        raise node.refuse(f"sizes {sizes} do not split a dim of {d} into {n} non-empty parts")
    starts = np.cumsum([0, *sizes])
    return [_along(x, axis, slice(int(a), int(b))) for a, b in zip(starts, starts[1:])]


@handles("Tile")
def _tile(imp, node, x, repeats):
    x = imp.tensor(x, node, "the input")
    for axis, r in enumerate(imp.ints(repeats, node, "repeats")):
        if r < 1:
            raise node.refuse(f"repeat {r} on axis {axis} (graphc has no empty tensors)")
        if r > 1:
            x = gc.concat([x] * r, axis=axis)
    return x


# -- padding --------------------------------------------------------------------------------------------
def _pad_axis(x, axis: int, lo: int, hi: int, fill):
    """``x`` with ``lo``/``hi`` entries added along ``axis``: copies of the edge (fill "edge") or a constant."""
    def block(n, edge_index):
        shape = tuple(n if i == axis else d for i, d in enumerate(x.shape))
        if fill == "edge":
            return gc.broadcast_to(_along(x, axis, edge_index), shape)
        return gc.broadcast_to(gc.const(np.full((1,) * x.ndim, fill), dtype=x.dtype), shape)
    parts = [block(lo, slice(0, 1))] if lo else []
    parts.append(x)
    if hi:
        parts.append(block(hi, slice(-1, None)))
    return gc.concat(parts, axis=axis) if len(parts) > 1 else x


@handles("Pad")
def _pad(imp, node, x, pads, value=None, axes=None):
    x = imp.tensor(x, node, "the data")
    mode = node.attr("mode", "constant")
    if mode not in ("constant", "edge"):
        raise node.refuse(f"mode {mode!r} is not supported (constant and edge are)")
    pads = imp.ints(pads, node, "pads")
    axes = list(range(x.ndim)) if axes is None else [_axis(node, a, x.ndim) for a in imp.ints(axes, node, "axes")]
    if len(pads) != 2 * len(axes):
        raise node.refuse(f"{len(pads)} pads for {len(axes)} axes")
    fill = "edge" if mode == "edge" else 0 if value is None else imp.static(value, node, "the constant value").item()
    if fill != "edge" and not np.isfinite(fill):
        raise node.refuse(f"padding with {fill}, which graphc's generated code cannot hold yet")
    for axis, lo, hi in zip(axes, pads, pads[len(axes):]):
        x = _along(x, axis, slice(max(-lo, 0), None if hi >= 0 else hi))  # negative pads crop
        x = _pad_axis(x, axis, max(lo, 0), max(hi, 0), fill)
    return x


# -- reductions and softmax -----------------------------------------------------------------------------
REDUCE = {
    "ReduceSum": lambda x, axes, keep: gc.sum(x, axes, keep),
    "ReduceMean": lambda x, axes, keep: gc.mean(x, axes, keep),
    "ReduceMax": lambda x, axes, keep: gc.max(x, axes, keep),
    "ReduceMin": lambda x, axes, keep: -gc.max(-x, axes, keep),
    "ReduceLogSumExp": lambda x, axes, keep: gc.logsumexp(x, axes, keep),
    "ReduceSumSquare": lambda x, axes, keep: gc.sum(gc.square(x), axes, keep),
    "ReduceL1": lambda x, axes, keep: gc.sum(gc.abs(x), axes, keep),
    "ReduceL2": lambda x, axes, keep: gc.sqrt(gc.sum(gc.square(x), axes, keep)),
    "ReduceLogSum": lambda x, axes, keep: gc.log(gc.sum(x, axes, keep)),
}


@handles(*REDUCE)
def _reduce(imp, node, x, axes=None):
    x = imp.tensor(x, node, "the input")
    if x.dtype == "bool" and node.op in ("ReduceMax", "ReduceMin"):
        return _any_all(imp, node, x, axes)
    if not x.dtype.startswith("float") and node.op not in ("ReduceSum", "ReduceSumSquare"):
        raise node.refuse(f"{node.op} of {x.dtype} values: graphc reduces floats (and sums integers)")
    axes, keep = _reduce_axes(imp, node, x, axes)
    return x if axes is None else REDUCE[node.op](x, axes, keep)


def _any_all(imp, node, x, axes):
    """ReduceMax of bools is "any", ReduceMin "all": counts of the true (false) elements."""
    axes, keep = _reduce_axes(imp, node, x, axes)
    if axes is None:
        return x
    if node.op == "ReduceMax":
        return gc.greater(gc.sum(gc.where(x, 1, 0), axes, keep), 0)
    return gc.equal(gc.sum(gc.where(x, 0, 1), axes, keep), 0)


def _reduce_axes(imp, node, x, axes):
    """The reduced axes (None for a no-op) and keepdims, from the attribute (older opsets) or the input."""
    if "axes" in node.attrs:  # opset 13 (ReduceSum: 11) and earlier take the axes as an attribute
        axes = list(node.attrs["axes"])
    elif axes is not None:
        axes = imp.ints(axes, node, "axes")
    keep = bool(node.attr("keepdims", 1))
    if not axes:
        if node.attr("noop_with_empty_axes", 0):
            return None, keep
        axes = range(x.ndim)
    return _axes(node, axes, x.ndim), keep


@handles("Softmax", "LogSoftmax")
def _softmax(imp, node, x):
    x = imp.tensor(x, node, "the input")
    fn = gc.softmax if node.op == "Softmax" else gc.log_softmax
    return fn(x, axis=_axis(node, node.attr("axis", -1), x.ndim))


# -- dense ----------------------------------------------------------------------------------------------
@handles("MatMul")
def _matmul(imp, node, a, b):
    return gc.matmul(imp.tensor(a, node, "input A"), imp.tensor(b, node, "input B"))


@handles("Gemm")
def _gemm(imp, node, a, b, c=None):
    a, b = imp.tensor(a, node, "input A"), imp.tensor(b, node, "input B")
    if a.ndim != 2 or b.ndim != 2:
        raise node.refuse(f"A and B must be matrices, not {a.ndim}-d and {b.ndim}-d")
    y = (a.T if node.attr("transA", 0) else a) @ (b.T if node.attr("transB", 0) else b)
    alpha, beta = node.attr("alpha", 1.0), node.attr("beta", 1.0)
    if alpha != 1.0:
        y = y * alpha
    if c is None:
        return y
    c = imp.operand(c, node, "input C")
    return y + (c * beta if beta != 1.0 else c)


# -- normalization --------------------------------------------------------------------------------------
def _per_channel(imp, node, value, ndim: int, what: str):
    """A (C,) operand shaped (C, 1, …, 1) to broadcast over the channel axis of an ``ndim``-d (N, C, …) input."""
    if isinstance(value, np.ndarray):
        return imp.tensor(value.reshape(value.shape + (1,) * (ndim - 2)), node, what)
    return gc.reshape(value, (*value.shape, *(1,) * (ndim - 2)))


@handles("BatchNormalization")
def _batch_norm(imp, node, x, scale, bias, mean, var):
    if node.attr("training_mode", 0):
        raise node.refuse("training_mode=1 is not supported (graphc imports the inference form, with the "
                          "running statistics as constants)")
    if any(node.outputs[1:]):
        raise node.refuse("the running-statistics outputs exist only in training mode")
    x = imp.tensor(x, node, "the input")
    if x.ndim < 2:
        raise node.refuse(f"the input must have a channel axis, not be {x.ndim}-d")
    mean, var, scale, bias = (_per_channel(imp, node, v, x.ndim, w) for v, w in
                              ((mean, "the mean"), (var, "the variance"), (scale, "the scale"), (bias, "the bias")))
    return (x - mean) / gc.sqrt(var + node.attr("epsilon", 1e-5)) * scale + bias


@handles("InstanceNormalization")
def _instance_norm(imp, node, x, scale, bias):
    x = imp.tensor(x, node, "the input")
    axes = tuple(range(2, x.ndim))
    y, _, _ = _normalized(x, axes, node.attr("epsilon", 1e-5))
    return y * _per_channel(imp, node, scale, x.ndim, "the scale") + _per_channel(imp, node, bias, x.ndim, "the bias")


def _normalized(x, axes, eps):
    """``(x − mean) / sqrt(var + eps)`` over ``axes``, with the mean and the inverse standard deviation."""
    mean = gc.mean(x, axes, keepdims=True)
    centered = x - mean
    inv_std = 1 / gc.sqrt(gc.mean(gc.square(centered), axes, keepdims=True) + eps)
    return centered * inv_std, mean, inv_std


@handles("LayerNormalization")
def _layer_norm(imp, node, x, scale, bias=None):
    x = imp.tensor(x, node, "the input")
    axis = _axis(node, node.attr("axis", -1), x.ndim)
    if x.dtype == "float64" and node.attr("stash_type", 1) == 1 and any(node.outputs[1:]):
        raise node.refuse("the mean and inverse std outputs are float32 for a float64 input (stash_type=1); "
                          "graphc computes them in float64")
    y, mean, inv_std = _normalized(x, tuple(range(axis, x.ndim)), node.attr("epsilon", 1e-5))
    y = y * imp.operand(scale, node, "the scale")
    if bias is not None:
        y = y + imp.operand(bias, node, "the bias")
    return y, mean, inv_std


# -- convolution and pooling ----------------------------------------------------------------------------
def _geometry(node, sizes, spans) -> tuple[list, list]:
    """Strides and ((lo, hi), …) pads per spatial axis from strides, pads and auto_pad (``spans``: window extents)."""
    r = len(sizes)
    strides = list(node.attr("strides", [1] * r))
    auto = node.attr("auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        totals = [max((-(-n // s) - 1) * s + k - n, 0) for n, k, s in zip(sizes, spans, strides)]
        small, big = [t // 2 for t in totals], [t - t // 2 for t in totals]
        pads = list(zip(small, big) if auto == "SAME_UPPER" else zip(big, small))
    elif auto == "VALID":
        pads = [(0, 0)] * r
    elif auto == "NOTSET":
        flat = list(node.attr("pads", [0] * 2 * r))
        pads = list(zip(flat[:r], flat[r:]))
    else:
        raise node.refuse(f"auto_pad={auto!r} is not supported")
    if any(p < 0 for pair in pads for p in pair):
        raise node.refuse(f"negative pads {pads}")
    return strides, pads


def _conv_input(imp, node, x):
    """``x`` as (N, C, H, W) and the number of its spatial axes (a 1-d input gets a leading size-1 axis)."""
    x = imp.tensor(x, node, "the input")
    if x.ndim == 3:
        return gc.reshape(x, (x.shape[0], x.shape[1], 1, x.shape[2])), 1
    if x.ndim != 4:
        raise node.refuse(f"the input is {x.ndim}-d: graphc has 1-d and 2-d convolution (3- or 4-d inputs)")
    return x, 2


def _hw(t) -> tuple[int, int]:
    if not (t.shape[2].is_number and t.shape[3].is_number):
        raise GraphError(f"spatial dims {tuple(t.shape[2:])} must be concrete")
    return int(t.shape[2]), int(t.shape[3])


def _as_2d(values, r: int, fill):
    """Per-spatial-axis values of a 1-d op, with the added leading axis's value in front."""
    return [fill, *values] if r == 1 else list(values)


def _back(y, r: int):
    return gc.reshape(y, (y.shape[0], y.shape[1], y.shape[3])) if r == 1 else y


@handles("Conv")
def _conv(imp, node, x, w, bias=None):
    x, r = _conv_input(imp, node, x)
    w = imp.tensor(w, node, "the weights")
    if w.ndim != r + 2:
        raise node.refuse(f"weights of rank {w.ndim} for a {r}-d convolution")
    if node.attr("group", 1) != 1:
        raise node.refuse(f"group={node.attr('group')} is not supported (only 1)")
    if r == 1:
        w = gc.reshape(w, (w.shape[0], w.shape[1], 1, w.shape[2]))
    kernel = [int(d) for d in w.shape[2:]]
    if any(d != 1 for d in node.attr("dilations", [1] * r)):
        raise node.refuse(f"dilations {node.attr('dilations')} are not supported (only 1)")
    if "kernel_shape" in node.attrs and _as_2d(node.attrs["kernel_shape"], r, 1) != kernel:
        raise node.refuse(f"kernel_shape {node.attrs['kernel_shape']} differs from the weights' {kernel[-r:]}")
    strides, pads = _geometry(node, _hw(x)[-r:], kernel[-r:])
    y = gc.conv2d(x, w, stride=tuple(_as_2d(strides, r, 1)), padding=tuple(_as_2d(pads, r, (0, 0))),
                  bias=imp.tensor(bias, node, "the bias"))
    return _back(y, r)


def _pool_geometry(node, x):
    """Kernel, strides, dilations, pads and output size per spatial axis of a MaxPool or AveragePool."""
    r = x.ndim - 2
    if r not in (1, 2, 3) or any(not d.is_number for d in x.shape[2:]):
        raise node.refuse(f"the input {tuple(x.shape)} must be (N, C, …) with 1 to 3 concrete spatial dims")
    if len(node.outputs) > 1 and node.outputs[1]:
        raise node.refuse("the Indices output is not supported")
    n = [int(d) for d in x.shape[2:]]
    kernel = list(node.attr("kernel_shape", []))
    dilations = list(node.attr("dilations", [1] * r))
    if len(kernel) != r or len(dilations) != r:
        raise node.refuse(f"kernel_shape {kernel} and dilations {dilations} for {r} spatial axes")
    spans = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    strides, pads = _pool_pads(node, n, spans)
    out = []
    for size, span, s, (lo, hi) in zip(n, spans, strides, pads):
        count = (size + lo + hi - span) / s + 1
        if not node.attr("ceil_mode", 0):
            out.append(int(np.floor(count)))
        else:  # the last window must start in the input or its leading padding
            o = int(np.ceil(count))
            out.append(o - 1 if (o - 1) * s >= size + lo else o)
    extra = [max((o - 1) * s + span - (size + lo + hi), 0) for o, s, span, size, (lo, hi)
             in zip(out, strides, spans, n, pads)]
    if max(extra) > 1:  # onnx's reference then shifts the windows by half of it
        raise node.refuse(f"ceil_mode=1 with windows {max(extra)} past the padding is not supported")
    return kernel, strides, dilations, [(lo, hi + e) for (lo, hi), e in zip(pads, extra)], out, pads


def _pool_pads(node, n, spans):
    if node.attr("auto_pad", "NOTSET") != "NOTSET" and node.attr("ceil_mode", 0):
        raise node.refuse("ceil_mode=1 with auto_pad is not defined")
    return _geometry(node, n, spans)


def _windows(x, kernel, strides, dilations, out):
    """One strided slice of ``x`` per position in the kernel: together they are every window's elements."""
    for offsets in np.ndindex(*kernel):
        index = [slice(None)] * 2
        for o, d, s, size in zip(offsets, dilations, strides, out):
            index.append(slice(o * d, o * d + (size - 1) * s + 1, s))
        yield x[tuple(index)]


def _native(x, dilations) -> bool:
    """graphc's own 2-d pooling applies: no dilation, 1 or 2 spatial axes."""
    return x.ndim <= 4 and all(d == 1 for d in dilations)


@handles("MaxPool")
def _max_pool(imp, node, x):
    x = imp.tensor(x, node, "the input")
    kernel, strides, dilations, pads, out, given = _pool_geometry(node, x)
    for axis, (lo, hi), (lo0, hi0), k in zip(range(2, x.ndim), pads, given, kernel):
        if lo0 >= k or hi0 >= k or ((lo or hi) and dilations[axis - 2] != 1):
            raise node.refuse(f"padding {pads} (ceil_mode's included) with kernel {kernel} and dilations "
                              f"{dilations}: a window could miss the input's edge")
        x = _pad_axis(x, axis, lo, hi, "edge")  # a copy of the edge is in every window it enters
    if _native(x, dilations):
        return _pool2d(gc.max_pool2d, x, kernel, strides)
    parts = list(_windows(x, kernel, strides, dilations, out))
    y = parts[0]
    for part in parts[1:]:
        y = gc.maximum(y, part)
    return y


@handles("AveragePool")
def _avg_pool(imp, node, x):
    x = imp.tensor(x, node, "the input")
    kernel, strides, dilations, pads, out, given = _pool_geometry(node, x)
    n = [int(d) for d in x.shape[2:]]
    for axis, (lo, hi) in zip(range(2, x.ndim), pads):
        x = _pad_axis(x, axis, lo, hi, 0)
    include = bool(node.attr("count_include_pad", 0))
    counts = [_window_counts(size, k, s, d, lo, hi0 if include else 0, o, include)
              for size, k, s, d, (lo, _), (_, hi0), o in zip(n, kernel, strides, dilations, pads, given, out)]
    divisor = np.ones(out)
    for axis, c in enumerate(counts):
        divisor = divisor * c.reshape([-1 if i == axis else 1 for i in range(len(out))])
    area = int(np.prod(kernel))
    if _native(x, dilations):
        y = _pool2d(gc.avg_pool2d, x, kernel, strides)
        return y if (divisor == area).all() else y * _const((area / divisor).astype(x.dtype), x.dtype)
    total = sum(_windows(x, kernel, strides, dilations, out))
    return total / _const(divisor.astype(x.dtype), x.dtype)


def _pool2d(pool, x, kernel, strides):
    if x.ndim == 4:
        return pool(x, tuple(kernel), tuple(strides))
    y = pool(gc.reshape(x, (x.shape[0], x.shape[1], 1, x.shape[2])), (1, kernel[0]), (1, strides[0]))
    return gc.reshape(y, (y.shape[0], y.shape[1], y.shape[3]))


def _window_counts(n: int, k: int, s: int, d: int, lo: int, hi: int, out: int, include_pad: bool) -> np.ndarray:
    """How many elements of each window lie in the input (or, with ``include_pad``, in the padded input)."""
    pos = (np.arange(out) * s - lo)[:, None] + np.arange(k) * d
    low, high = (-lo, n + hi) if include_pad else (0, n)
    return ((pos >= low) & (pos < high)).sum(axis=1)


@handles("GlobalAveragePool", "GlobalMaxPool")
def _global_pool(imp, node, x):
    x = imp.tensor(x, node, "the input")
    if x.ndim < 3:
        raise node.refuse(f"the input must be (N, C, …spatial), not {x.ndim}-d")
    axes = tuple(range(2, x.ndim))
    return (gc.mean if node.op == "GlobalAveragePool" else gc.max)(x, axes, keepdims=True)
