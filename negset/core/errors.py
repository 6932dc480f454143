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


class HideUserErrorTracebacks:
    """A logging filter: records about a ``NegsetError`` keep their message but lose the traceback.

    Orchestrators (Prefect) log a failed task's exception with its traceback;
    for a user's mistake the one-line message and hint are what helps.
    """

    def filter(self, record) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, NegsetError):
            record.exc_info = None
            record.exc_text = None
        return True


def hide_user_error_tracebacks(handlers) -> None:
    for handler in handlers:
        if not any(isinstance(f, HideUserErrorTracebacks) for f in handler.filters):
            handler.addFilter(HideUserErrorTracebacks())
