"""cupy.cuda: one device and its streams. Kernels run synchronously, so synchronizing does nothing."""
from . import compiler, runtime  # noqa: F401


class Device:
    def __init__(self, device=None):
        self.id = 0 if device is None else int(device)
        runtime.setDevice(self.id)

    compute_capability = "90"

    def use(self):
        return self

    def synchronize(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def __eq__(self, other):
        return isinstance(other, Device) and other.id == self.id

    def __hash__(self):
        return hash(self.id)


class Stream:
    def __init__(self, null=False, non_blocking=False, ptds=False):
        self.ptr = 0 if null else id(self)

    def use(self):
        return self

    def synchronize(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


Stream.null = Stream(null=True)


def get_current_stream():
    return Stream.null


def get_device_id() -> int:
    return 0


def is_available() -> bool:
    return True
