"""The CuPy backend: a standalone module that runs on an NVIDIA GPU with CuPy.

It shares the emitter framework (statements, buffer plan, checks, API) and NumPy's lowering table, and differs
where the GPU pays off: fused groups are CUDA kernels (``kernels``) defined once at module level, matmuls go to
``cp.matmul`` (cuBLAS), the remaining ops are CuPy array calls.
"""
from __future__ import annotations

from graphc.backends import emitter
from graphc.backends.codewriter import CodeWriter, Names
from graphc.backends.cupy import conv  # noqa: F401 - registers the conv and pooling kernels
from graphc.backends.cupy.kernels import C_TYPES, OUTSIDE, Kernel
from graphc.backends.cupy.lowering import LOWERINGS, gathered_picks
from graphc.backends.cupy.runtime import _check_classes, _check_finite, _device, _finite, _write_back
from graphc.backends.numpy.printer import NumPyScalarPrinter
from graphc.dsl import STEP_COUNTER

__all__ = ["C_TYPES", "ModuleEmitter"]


class ModuleEmitter(emitter.ModuleEmitter):
    BACKEND, TITLE, XP = "cupy", "CuPy", "cp"
    IMPORTS = ("import cupy as cp", "import numpy as np")
    ARRAY = "(np.ndarray, cp.ndarray)"
    LOWERINGS = LOWERINGS
    RUNTIME = (*(f for f in emitter.ModuleEmitter.RUNTIME if f.__name__ != "_check_classes"), _check_classes,
               _device, _write_back)
    NUMERICS = (_finite, _check_finite)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.kernels: dict[Kernel, str] = {}
        self.kernel_names = Names()

    @staticmethod
    def printer(names):
        return NumPyScalarPrinter(names, "cp")

    @staticmethod
    def reduce(ufunc: str, x: str, axis, keepdims, out: str) -> str:
        keep = "" if keepdims is None else f", keepdims={keepdims}"
        return f"cp.{ {'add': 'sum', 'maximum': 'max'}[ufunc]}({x}, axis={axis!r}{keep}, out={out})"

    @staticmethod
    def take(src: str, index: str, out: str, axis=None) -> str:
        along = "" if axis is None else f", axis={axis}"
        return f"cp.take({src}, {index}{along}, out={out})"

    @staticmethod
    def put(dst: str, index: str, values: str) -> str:
        return f"cp.put({dst}, {index}, {values})"

    def dtype(self, dtype: str) -> str:
        return "cp.bool_" if dtype == "bool" else f"cp.{dtype}"  # cp.bool exists from CuPy 14 only

    def numerics_begin(self) -> str:
        return "_checks = []  # check_numerics: one flag per value, read back once"

    def numerics_check(self, value: str, what: str) -> str:
        return f"_checks.append(({value!r}, {what!r}, _finite({value})))"

    def numerics_end(self) -> str:
        return "_check_finite(_checks)"

    def inlined(self, graph, candidates) -> set:
        return gathered_picks(graph, candidates)

    def class_check(self, labels: str, classes: str, name: str) -> str:
        """Counted on the device by one reduction; only its result is read back."""
        return f"_check_classes({self.kernel(OUTSIDE, '_count_outside')}({labels}, {classes}), {labels}, {classes}, " \
               f"{name!r})"

    def generator(self, node) -> str:
        """One device generator per seed (cuRAND's own streams, not NumPy's), drawing into planned buffers."""
        key = ("rng", node.attr("seed"))
        if key not in self.constants:
            self.constants[key] = (f"_RNG{len(self.constants)}", f"cp.random.default_rng({node.attr('seed')})")
        return self.constants[key][0]

    def kernel(self, kernel: Kernel, label: str) -> str:
        """The module-level name of ``kernel``, defined once however many nodes launch it."""
        if kernel not in self.kernels:
            self.kernels[kernel] = self.kernel_names.fresh(label)
        return self.kernels[kernel]

    def _array_text(self, host: str) -> str:
        return f"cp.asarray({host})"

    def _definitions(self, w: CodeWriter) -> None:
        super()._definitions(w)
        w.line("")
        w.line("# CUDA kernels: compiled by CuPy on first launch and cached")
        for kernel, name in self.kernels.items():
            for text in kernel.definition(name):
                w.line(text)
        w.line("")
        w.line("")

    def _to_device(self, w: CodeWriter, *tables: str) -> None:
        for table in tables:
            if table in ("params", "state"):  # written back after the step
                keep = (STEP_COUNTER,) if table == "state" else ()  # a host number: read without waiting on the GPU
                w.line(f"host_{table}, {table} = {table}, _device({table}{f', {keep!r}' if keep else ''})")
            else:
                w.line(f"{table} = _device({table})")

    def _train_args(self, w: CodeWriter, hypers) -> None:
        for name in hypers:  # a device scalar of any dtype: as a number, the kernels' types convert it
            w.line(f"{name} = float({name}) if isinstance({name}, cp.ndarray) else {name}")

    def _write_back(self, w: CodeWriter) -> None:
        w.line("_write_back(host_params, params)")
        if self.state_names():
            w.line("_write_back(host_state, state)")
