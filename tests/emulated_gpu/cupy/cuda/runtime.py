"""cupy.cuda.runtime: one emulated device."""
is_hip = False


class CUDARuntimeError(RuntimeError):
    pass


def getDeviceCount() -> int:
    return 1


def getDevice() -> int:
    return 0


def setDevice(device: int) -> None:
    if device != 0:
        raise CUDARuntimeError("cudaErrorInvalidDevice: invalid device ordinal")


def deviceSynchronize() -> None:  # kernels run synchronously on the host
    pass


def runtimeGetVersion() -> int:
    return 12000
