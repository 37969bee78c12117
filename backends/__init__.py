"""Code emitters, installed as graphc.backends: one module per target (numpy, cupy)."""
