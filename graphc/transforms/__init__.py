"""The transforms layer: graphs made from graphs by rules read off the ops — reverse-mode differentiation
(``autodiff``) and per-example gradients (``per_example``, batching by each op's batch-axis rule)."""
