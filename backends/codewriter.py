"""A tiny helper for writing indented Python source; generated variables are named by ``graphc.core.naming``."""
from __future__ import annotations

from graphc.core.naming import RESERVED, Names  # noqa: F401 - the backends' names come from here


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
