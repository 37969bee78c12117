"""The codegen layer, installed as ``graphc.backends``: the backend-neutral emitter framework (``emitter``,
``schedule``, ``codewriter``, ``runtime``) and one package per target, each a lowering table plus a small
``ModuleEmitter`` subclass (``numpy``, ``cupy``). ``BACKENDS`` is the one registry of them."""
from graphc.backends import cupy, numpy

BACKENDS = {"numpy": numpy.ModuleEmitter, "cupy": cupy.ModuleEmitter}
