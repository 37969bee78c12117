"""Runtime helpers every generated module carries: real Python, copied into each file with ``inspect.getsource``
(so a generated file runs without graphc). NumPy and CuPy modules share them: they read the module's own tables
(``_SPEC``, ``PARAMS``, ``STATE``) and use NumPy (``np``) only for host arrays (checkpoints)."""


def _explain(feeds, names):
    """The error for feeds that are not a dict of exactly the expected names: the optimizer's state is named as
    such (the call that lacks it was given no state, or a checkpoint of another optimizer)."""
    kind = "state" if names and set(names) <= set(globals().get("STATE", ())) else "feeds"
    if not isinstance(feeds, dict):
        hint = " (state = init_state(params), or the state load() returns)" if kind == "state" else ""
        raise ValueError(f"{kind} must be a dict of name -> array, not {type(feeds).__name__}: expected "
                         f"{', '.join(names)}{hint}")
    extra = sorted(set(feeds) - set(names))
    if extra:
        raise ValueError(f"unknown {kind} {extra}; expected {sorted(names)}")
    missing = [n for n in names if n not in feeds]
    raise ValueError(f"missing {kind} {missing}: " + ", ".join(f"{n} {_SPEC[n][0]}" for n in missing))


def _writable(params, state):
    """Params and state are written in place: a read-only one (a memory-mapped checkpoint) is refused before any
    array is written, so no step is half taken."""
    for kind, arrays in (("param", params), ("state", state or {})):
        for name, a in arrays.items():
            if not getattr(a.flags, "writeable", True):
                raise ValueError(f"{kind} {name} is read-only, and the step updates it in place: pass a writable "
                                 "copy (np.array(a))")


def _real(name, value):
    """A hyper-parameter a step is given (the learning rate), as a Python number: refused by name where it is not
    one (None, a string, an array of several values)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real number, not {value!r}") from None


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


def _check_classes(labels, classes, name):
    """Raise ValueError where integer ids (class ids, rows of a table) fall outside 0 … classes − 1: they would
    read another row, or memory outside the array."""
    if labels.size:
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= classes:
            raise ValueError(f"{name} holds the id {low if low < 0 else high}, outside 0..{classes - 1}")


def _only(feeds, names):
    """The feeds of ``names`` alone: the graph's other inputs and params (labels) are ignored, unknown names kept
    (so the check reports them)."""
    if not isinstance(feeds, dict) or len(feeds) == len(names):
        return feeds
    return {name: value for name, value in feeds.items() if name in names or name not in _SPEC}


def _buffers(cache, dims, allocate, keep=4):
    """This thread's buffers for a call at ``dims``: allocated on first use and kept for the last ``keep`` sizes
    the thread used (each thread has its own, so threads never share a buffer)."""
    sizes = cache.__dict__.setdefault("sizes", {})
    B = sizes.pop(dims, None)
    if B is None:
        B = allocate(*dims)
        while len(sizes) >= keep:
            sizes.pop(next(iter(sizes)))  # the least recently used size
    sizes[dims] = B
    return B


def save(path, params, state=None):
    """Write params and state (as train_step keeps them) to the NumPy file ``path`` (.npz, no pickles), atomically: into
    a temporary file of the same folder, renamed over ``path`` once complete, so no reader sees half a checkpoint."""
    _check(params, tuple(PARAMS), _ANY_DIMS)
    _check({} if state is None else state, tuple(STATE), _ANY_DIMS)
    arrays = {**{f"params/{k}": v for k, v in params.items()}, **{f"state/{k}": v for k, v in (state or {}).items()}}
    arrays = {k: v.get() if hasattr(v, "get") else v for k, v in arrays.items()}  # device arrays come to the host
    path = os.fspath(path)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _read_checkpoint(path):
    """(params, state) as host arrays from a file written by ``save``: no pickles, exactly the declared arrays."""
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except FileNotFoundError:
        raise
    except Exception as exc:  # noqa: BLE001 - damaged, truncated, one array, pickles: each its own exception type
        raise ValueError(f"{path} is not a checkpoint written by save: {type(exc).__name__}: {exc}") from None
    params = {k[len("params/"):]: v for k, v in arrays.items() if k.startswith("params/")}
    state = {k[len("state/"):]: v for k, v in arrays.items() if k.startswith("state/")}
    if len(params) + len(state) != len(arrays):
        stray = sorted(k for k in arrays if not k.startswith(("params/", "state/")))
        raise ValueError(f"{path} holds arrays that are neither params nor state: {stray}")
    _check(params, tuple(PARAMS), _ANY_DIMS)
    _check(state, tuple(STATE), _ANY_DIMS)
    return params, state
