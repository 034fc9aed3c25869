"""Input errors that name the file, the line and the offending text."""

from __future__ import annotations


class TraceError(Exception):
    """Bad input: reported as `file:line: message: text`, exit code 3."""

    def __init__(self, path: str, line: int, message: str, text: str = ""):
        self.path, self.line, self.message, self.text = path, line, message, text
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else self.path
        shown = self.text.rstrip("\n")
        if len(shown) > 160:
            shown = shown[:157] + "..."
        return f"{where}: {self.message}" + (f": {shown!r}" if shown else "")


class LineErrors:
    """Strict mode raises on the first bad line; lenient mode counts and skips."""

    def __init__(self, path: str, lenient: bool):
        self.path, self.lenient = path, lenient
        self.skipped = 0
        self.first: TraceError | None = None

    def bad(self, line: int, message: str, text: str) -> None:
        err = TraceError(self.path, line, message, text)
        if not self.lenient:
            raise err
        self.skipped += 1
        if self.first is None:
            self.first = err
