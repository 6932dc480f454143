"""User-facing errors: each names the file, key or parameter at fault."""

from __future__ import annotations


class NegsetError(Exception):
    """An error caused by the user's input, shown without a traceback.

    ``message`` names what is wrong (file, key, parameter); ``hint`` says
    what to do about it.
    """

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\n  hint: {self.hint}"
        return self.message
