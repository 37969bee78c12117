"""The README's list of op functions, made from graphc's public API: every function's signature and the first
line of its docstring. ``python docs/api.py`` rewrites the list in README.md; a test checks they agree."""
import inspect
from pathlib import Path

import graphc as gc

README = Path(__file__).resolve().parent.parent / "README.md"
START, END = "<!-- ops: made by docs/api.py -->", "<!-- /ops -->"
NOT_OPS = {"Graph", "GraphError", "OPS", "Program", "SGD", "Tensor", "compile", "dim", "input", "param", "const",
           "init_params", "grad", "load_module", "render", "per_example_grads", "per_example_norms",
           "clipped_mean_grads", "from_onnx", "state", "assign", "init_state", "Adam", "AdamW", "schedules"}


def ops_markdown() -> str:
    """One line per op function, alphabetical: ``name(signature)`` and what it does."""
    rows = []
    for name in sorted(set(gc.__all__) - NOT_OPS, key=str.lower):
        fn = getattr(gc, name)
        params = inspect.signature(fn).parameters.values()
        signature = ", ".join(p.name if p.default is p.empty else f"{p.name}={p.default!r}" for p in params)
        doc = (inspect.getdoc(fn) or "").split("\n\n")[0].replace("\n", " ").replace("``", "`")
        rows.append(f"- `{name}({signature})` — {doc}")
    return "\n".join([START, *rows, END])


def readme_with_ops(text: str) -> str:
    head, rest = text.split(START, 1)
    return head + ops_markdown() + rest.split(END, 1)[1]


if __name__ == "__main__":
    README.write_text(readme_with_ops(README.read_text()))
