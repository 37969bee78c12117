"""graphc: a symbolic computational-graph compiler for deep learning.

Declare a static graph, differentiate it symbolically, optimize it, and emit a standalone NumPy or CuPy file.
"""
from graphc.autodiff import grad
from graphc.dsl import Tensor, const, init_params, input, param
from graphc.errors import GraphError
from graphc.files import load_module
from graphc.ir import Graph
from graphc.onnx import from_onnx
from graphc.ops import OPS
from graphc.ops.conv import avg_pool2d, conv2d, flatten, max_pool2d
from graphc.ops.elementwise import (
    abs_ as abs,
)
from graphc.ops.elementwise import (
    binary_cross_entropy_with_logits,
    equal,
    exp,
    greater,
    greater_equal,
    leaky_relu,
    less,
    less_equal,
    log,
    maximum,
    minimum,
    relu,
    sigmoid,
    softplus,
    sqrt,
    square,
    tanh,
    where,
)
from graphc.ops.elementwise import (
    log1p_ as log1p,
)
from graphc.ops.linalg import matmul
from graphc.ops.nn import log_softmax, softmax, softmax_cross_entropy
from graphc.ops.reduce import logsumexp, mean
from graphc.ops.reduce import reduce_max as max
from graphc.ops.reduce import reduce_sum as sum
from graphc.ops.shape import broadcast_to, concat, one_hot, reshape, transpose
from graphc.per_example import clipped_mean_grads, per_example_grads, per_example_norms
from graphc.program import Program, compile
from graphc.shapes import dim
from graphc.train import SGD
from graphc.viz import render

__version__ = "0.1.0"

__all__ = [
    "Graph", "GraphError", "OPS", "Program", "SGD", "Tensor", "compile",
    "abs", "avg_pool2d", "binary_cross_entropy_with_logits", "broadcast_to", "concat", "const", "conv2d", "dim",
    "equal", "exp", "flatten", "grad", "greater", "greater_equal", "init_params", "input", "leaky_relu", "less",
    "less_equal", "log", "log1p", "log_softmax", "logsumexp", "matmul", "max", "max_pool2d", "maximum", "mean",
    "minimum", "one_hot", "param", "relu", "render", "reshape", "sigmoid", "softmax", "softmax_cross_entropy",
    "softplus", "sqrt", "square", "sum", "tanh", "transpose", "where",
    "clipped_mean_grads", "per_example_grads", "per_example_norms", "load_module", "from_onnx",
]
