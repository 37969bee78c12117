"""graphc: a symbolic computational-graph compiler for deep learning.

Declare a static graph, differentiate it symbolically, optimize it, and emit a standalone NumPy or CuPy file.
The package's layers, each importing only the ones before it: core → dsl → ops → transforms → passes, optim →
backends, viz → program → cli. This module is the public API: it re-exports.
"""
from graphc.core.errors import GraphError
from graphc.core.files import load_module
from graphc.core.registry import OPS
from graphc.core.shapes import dim
from graphc.dsl import Tensor, const, init_params, input, param
from graphc.ops import OPS as _REGISTERED  # noqa: F401 - importing the ops registers them
from graphc.ops.conv import avg_pool2d, conv2d, flatten, max_pool2d
from graphc.ops.elementwise import equal, greater, greater_equal, less, less_equal
from graphc.ops.functions import abs_ as abs
from graphc.ops.functions import (
    binary_cross_entropy_with_logits,
    cos,
    erf,
    exp,
    gelu,
    leaky_relu,
    log,
    log1p,
    maximum,
    minimum,
    neg,
    relu,
    rsqrt,
    sigmoid,
    silu,
    sin,
    softplus,
    sqrt,
    square,
    tanh,
    where,
)
from graphc.ops.linalg import matmul
from graphc.ops.nn import log_softmax, softmax, softmax_cross_entropy
from graphc.ops.reduce import logsumexp, mean
from graphc.ops.reduce import reduce_max as max
from graphc.ops.reduce import reduce_sum as sum
from graphc.ops.shape import broadcast_to, concat, one_hot, reshape, transpose
from graphc.optim import SGD
from graphc.program import Graph, Program, compile
from graphc.transforms.autodiff import grad
from graphc.transforms.per_example import clipped_mean_grads, per_example_grads, per_example_norms
from graphc.viz import render

__version__ = "0.1.0"

__all__ = [
    "Graph", "GraphError", "OPS", "Program", "SGD", "Tensor", "compile",
    "abs", "avg_pool2d", "binary_cross_entropy_with_logits", "broadcast_to", "concat", "const", "conv2d", "cos",
    "dim", "equal", "erf", "exp", "flatten", "gelu", "grad", "greater", "greater_equal", "init_params", "input",
    "leaky_relu", "less", "less_equal", "log", "log1p", "log_softmax", "logsumexp", "matmul", "max", "max_pool2d",
    "maximum", "mean", "minimum", "neg", "one_hot", "param", "relu", "render", "reshape", "rsqrt", "sigmoid", "silu",
    "sin", "softmax", "softmax_cross_entropy", "softplus", "sqrt", "square", "sum", "tanh", "transpose", "where",
    "clipped_mean_grads", "per_example_grads", "per_example_norms", "load_module",
]
