"""The dtypes a graph holds, and how they combine."""
from __future__ import annotations

FLOATS = ("float32", "float64")
DTYPES = ("bool", "int64", "float32", "float64")  # in promotion order


def is_float(dtype: str) -> bool:
    return dtype in FLOATS


def promote(*dtypes: str) -> str:
    """The widest of ``dtypes`` in bool < int64 < float32 < float64."""
    return max(dtypes, key=DTYPES.index) if dtypes else "float32"
