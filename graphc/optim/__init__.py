"""The optimizers layer: update rules as graph nodes (SGD, Adam, AdamW, with DP-SGD's gradients and global norm
clipping), learning-rate schedules, and the training graph that applies them."""
from graphc.optim import schedules
from graphc.optim.adam import Adam, AdamW
from graphc.optim.base import LR, Optimizer
from graphc.optim.sgd import SGD
from graphc.optim.training import grad_step_graph, training_graph, update_graph

__all__ = ["LR", "Adam", "AdamW", "Optimizer", "SGD", "schedules", "training_graph", "grad_step_graph", "update_graph"]
