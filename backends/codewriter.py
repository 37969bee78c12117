"""A tiny helper for writing indented Python source, and the naming of generated variables."""
from __future__ import annotations

import builtins
import keyword
import re


class CodeWriter:
    def __init__(self):
        self.lines: list[str] = []
        self.depth = 0

    def line(self, text: str = "") -> None:
        for part in text.split("\n"):  # a statement may span lines (a loop and its body)
            self.lines.append(("    " * self.depth + part) if part else "")

    def block(self, header: str):
        writer = self

        class _Block:
            def __enter__(self):
                writer.line(header)
                writer.depth += 1

            def __exit__(self, *exc):
                writer.depth -= 1

        return _Block()

    def text(self) -> str:
        return "\n".join(self.lines).rstrip() + "\n"


RESERVED = {"np", "cp", "os", "math", "B", "i", "feeds", "params", "batch", "state", "step", "run", "train_step",
            "init_params", "init_state", "save", "load", "out", "lr", "dims",
            "value", "name", "names", "shape", "dtype", "expected", "extra", "missing", *dir(builtins)}


class Names:
    """Readable, unique Python names for graph values: the user's names first, else the op's."""

    def __init__(self, taken=()):
        self.used = set(RESERVED) | set(taken)

    def fresh(self, wanted: str) -> str:
        base = re.sub(r"\W", "_", wanted) or "v"
        if base[0].isdigit():
            base = "v" + base
        name, k = base, 1
        while name in self.used or keyword.iskeyword(name):
            k += 1
            name = f"{base}_{k}"
        self.used.add(name)
        return name
