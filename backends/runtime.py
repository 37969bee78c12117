"""Runtime helpers every generated module carries: real Python, copied into each file with ``inspect.getsource``
(so a generated file runs without graphc). They name no array module: NumPy and CuPy modules share them."""


def _explain(feeds, names):
    """The error for feeds that are not a dict of exactly the expected names."""
    if not isinstance(feeds, dict):
        raise ValueError(f"feeds must be a dict of name -> array, not {type(feeds).__name__}")
    extra = sorted(set(feeds) - set(names))
    if extra:
        raise ValueError(f"unknown feeds {extra}; expected {sorted(names)}")
    missing = [n for n in names if n not in feeds]
    raise ValueError(f"missing feeds {missing}: " + ", ".join(f"{n} {_SPEC[n][0]}" for n in missing))


def _shape_of(feeds, name, axis):
    """The size of one axis of a feed: how a symbolic dim is bound."""
    shape = getattr(feeds[name], "shape", None)
    if shape is None or len(shape) <= axis:
        raise ValueError(f"{name} expects shape {_SPEC[name][0]}, got {shape or type(feeds[name]).__name__}")
    return shape[axis]


class _Buffers(list):
    """Planned buffers by index, plus named helper arrays (row numbers) by key."""

    def __init__(self, arrays, named):
        super().__init__(arrays)
        self.named = named

    def __getitem__(self, key):
        return self.named[key] if isinstance(key, str) else list.__getitem__(self, key)
