"""The public API, gathered from the layers below (the program layer): what ``graphc`` re-exports, and the
namespace modules of the layer above (the ONNX importer) build graphs with."""
import functools
import inspect

from graphc.core.errors import GraphError
from graphc.core.files import load_module
from graphc.core.registry import OPS
from graphc.core.shapes import dim
from graphc.dsl import Tensor, assign, const, init_params, init_state, input, param, state
from graphc.ops import OPS as _REGISTERED  # noqa: F401 - importing the ops registers them
from graphc.ops import functions
from graphc.ops.conv import avg_pool2d, conv2d, flatten, max_pool2d
from graphc.ops.elementwise import cast, equal, greater, greater_equal, less, less_equal, not_equal
from graphc.ops.functions import *  # noqa: F403 - the elementwise functions, as listed in their module
from graphc.ops.functions import abs_ as abs
from graphc.ops.indexing import take
from graphc.ops.linalg import matmul
from graphc.ops.nn import batch_norm, layer_norm, log_softmax, softmax, softmax_cross_entropy
from graphc.ops.random import dropout, random_normal, random_uniform
from graphc.ops.reduce import logsumexp, mean, std, var
from graphc.ops.reduce import reduce_max as max
from graphc.ops.reduce import reduce_min as min
from graphc.ops.reduce import reduce_sum as sum
from graphc.ops.shape import broadcast_to, concat, one_hot, reshape, transpose
from graphc.optim import SGD, Adam, AdamW, schedules
from graphc.program import Graph, Program, compile
from graphc.transforms.autodiff import grad
from graphc.transforms.per_example import clipped_mean_grads, per_example_grads, per_example_norms
from graphc.viz import render

__all__ = [
    "Graph", "GraphError", "OPS", "Program", "Tensor", "compile", "dim", "input", "param", "state", "assign", "const",
    "init_params", "init_state", "grad", "load_module", "render", "SGD", "Adam", "AdamW", "schedules",
    "abs", "equal", "not_equal", "greater", "greater_equal", "less", "less_equal", *functions.__all__,
    "sum", "mean", "max", "min", "var", "std", "logsumexp", "matmul", "broadcast_to", "concat", "one_hot", "reshape",
    "transpose", "take", "cast", "softmax", "log_softmax", "softmax_cross_entropy", "layer_norm", "batch_norm",
    "conv2d", "max_pool2d", "avg_pool2d", "flatten", "dropout", "random_normal", "random_uniform",
    "clipped_mean_grads", "per_example_grads", "per_example_norms",
]


def _tensor_operands_checked(fn, name: str):
    """``fn`` refusing, by name, a NumPy array, a list or a number where its signature declares a tensor (it
    failed deep inside, on a missing attribute)."""
    signature = inspect.signature(fn)
    declared = [p for p, v in signature.parameters.items() if str(v.annotation).startswith("Tensor")]
    if not declared:
        return fn

    @functools.wraps(fn)
    def checked(*args, **kwargs):
        given = signature.bind_partial(*args, **kwargs).arguments
        for p in declared:
            if p in given and given[p] is not None and not isinstance(given[p], Tensor):
                raise GraphError(f"{name}: {p} must be a tensor of the graph, not {type(given[p]).__name__} "
                                 "(gc.const holds a fixed array)")
        return fn(*args, **kwargs)
    return checked


globals().update({name: _tensor_operands_checked(globals()[name], name) for name in __all__
                  if inspect.isfunction(globals()[name])})
