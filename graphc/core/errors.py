"""The one error type a user of graphc sees."""


class GraphError(ValueError):
    """A mistake in a graph or its feeds: names the op, the tensors and their symbolic shapes."""
