"""graphc: a symbolic computational-graph compiler for deep learning.

Declare a static graph, differentiate it symbolically, optimize it, and emit a standalone NumPy or CuPy file.
The package's layers, each importing only the ones before it: core → dsl → ops → transforms → passes, optim →
backends, viz → program (with ``api``, the public names) → cli, onnx, dask (``import graphc.dask``: training on a
Dask cluster). This module re-exports the public API.
"""
from graphc import api
from graphc.api import *  # noqa: F403 - the public API, as listed in graphc.api
from graphc.onnx import from_onnx

__version__ = "0.1.0"
__all__ = [*api.__all__, "from_onnx"]
