"""The ops layer: every op defined once, in its family's module, with its rules and traits side by side
(``graphc.core.registry.Op``); ``functions`` holds the elementwise functions, one record each; ``methods``
installs Tensor's operators and methods, in one place. Importing this package registers every op.
"""
from graphc.core.registry import OPS
from graphc.ops import conv, elementwise, functions, indexing, linalg, methods, nn, random, reduce, shape  # noqa: F401 - registration

__all__ = ["OPS"]
