"""The optimizers layer: update rules as graph nodes, and the training graph that applies them."""
from graphc.optim.sgd import LR, SGD, training_graph

__all__ = ["LR", "SGD", "training_graph"]
