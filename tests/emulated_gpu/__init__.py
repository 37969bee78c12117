"""The emulated GPU: ``cupy/`` is a CPU stand-in for the part of CuPy 13 that graphc's generated modules use.

``install()`` makes ``import cupy`` give it (what the GPU tests do on a machine without a GPU); ``load(name)``
imports a private copy under another module name, leaving ``cupy`` alone.
"""
import importlib.util
import sys
from pathlib import Path

PACKAGE = Path(__file__).parent / "cupy"


def load(name: str = "cupy"):
    """The emulation imported as module ``name`` (once per name)."""
    module = sys.modules.get(name)
    if getattr(module, "EMULATED", False):
        return module
    spec = importlib.util.spec_from_file_location(name, PACKAGE / "__init__.py",
                                                  submodule_search_locations=[str(PACKAGE)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def install():
    """From now on ``import cupy`` gives the emulation; a real CuPy already imported (no device) is dropped."""
    if not getattr(sys.modules.get("cupy"), "EMULATED", False):
        for key in [k for k in sys.modules if k == "cupy" or k.startswith("cupy.")]:
            del sys.modules[key]
    return load("cupy")
