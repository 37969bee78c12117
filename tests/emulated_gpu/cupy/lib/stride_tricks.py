"""cupy.lib.stride_tricks: views with chosen strides, written as CuPy writes them (with its device-side checks)."""
import numpy as np

from .. import _core


def as_strided(x, shape=None, strides=None):
    shape = x.shape if shape is None else tuple(shape)
    strides = x.strides if strides is None else tuple(strides)
    return _core.ndarray._wrap(np.lib.stride_tricks.as_strided(x._a, shape, strides))


def sliding_window_view(x, window_shape, axis=None, *, subok=False, writeable=False):
    """As CuPy 13 does it: the window shape goes to the device and each entry is checked there (one small
    allocation and transfer, then a comparison kernel and a transfer back per window dimension)."""
    from .. import array

    window_shape = tuple(window_shape) if np.iterable(window_shape) else (window_shape,)
    if writeable:
        raise NotImplementedError("Writeable views are not supported.")
    x = array(x, copy=False, subok=subok)
    for dim in array(window_shape):
        if dim < 0:
            raise ValueError("`window_shape` cannot contain negative values")
    if axis is None:
        axis = tuple(range(x.ndim))
        if len(window_shape) != len(axis):
            raise ValueError(f"Since axis is `None`, must provide window_shape for all dimensions of `x`; got "
                             f"{len(window_shape)} window_shape elements and `x.ndim` is {x.ndim}.")
    else:
        axis = tuple(a % x.ndim for a in (axis if np.iterable(axis) else (axis,)))
        if len(window_shape) != len(axis):
            raise ValueError(f"Must provide matching length window_shape and axis; got {len(window_shape)} "
                             f"window_shape elements and {len(axis)} axes elements.")
    out_strides = x.strides + tuple(x.strides[ax] for ax in axis)
    trimmed = list(x.shape)
    for ax, dim in zip(axis, window_shape):
        if trimmed[ax] < dim:
            raise ValueError("window shape cannot be larger than input array shape")
        trimmed[ax] -= dim - 1
    return as_strided(x, strides=out_strides, shape=tuple(trimmed) + window_shape)
