"""Thread limits for the benchmarks: every library on the same cores with the same thread count. Call ``limit``
before NumPy, PyTorch or JAX load their thread pools (this module imports none of them)."""
import os

VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "BLIS_NUM_THREADS",
             "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")


def limit(threads: int) -> None:
    for var in VARIABLES:
        os.environ[var] = str(threads)
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen="
                               + ("true" if threads > 1 else "false")).strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    if hasattr(os, "sched_setaffinity"):  # the hard limit: every thread of this process runs on the same cores
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:threads])
