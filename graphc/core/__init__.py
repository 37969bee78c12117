"""The core layer: what every other layer stands on, importing nothing of graphc above it.

``errors`` (GraphError), ``shapes`` (symbolic dims and broadcasting), ``dtypes``, ``registry`` (the ``Op`` record:
rules and traits of every op), ``ir`` (immutable nodes in a hash-consed ``Graph``, ``Rebuild``), ``interpret`` (the
one graph walker: the reference evaluator is an instance), ``describe`` (what a node computes, in words, for code
comments, diagrams and ``graphc explain`` alike), ``initializers`` and ``files``.
"""
