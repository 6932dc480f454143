"""User-facing errors: each names the file, key or parameter at fault."""

from __future__ import annotations

import os


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


# The folder of each step's outputs under data/, and the step that writes it (for "run X first").
_STEP_OF_FOLDER = {"ingest": "ingest", "embed": "embed", "tags": "tag", "select": "select", "negatives": "export"}
# OS errors that are about a file and will not pass by retrying (the network's do: they are left alone)
_FILE_ERRNOS = {2: "missing", 13: "permission denied", 1: "operation not permitted", 30: "read-only file system",
                28: "no space left on the device", 21: "is a folder, expected a file", 20: "not a folder",
                122: "disk quota exceeded"}


def _producer(path: str) -> str | None:
    """The step whose output folder (under a data/ folder) holds ``path``, or None."""
    parts = path.replace("\\", "/").split("/")
    for i in range(len(parts) - 2, -1, -1):
        folder = parts[i + 1]
        if folder.startswith(".") and folder.endswith(".staging"):  # a step's staging folder (core/staging.py)
            folder = folder[1 : -len(".staging")]
        if parts[i] == "data" and folder in _STEP_OF_FOLDER:
            return _STEP_OF_FOLDER[folder]
    return None


def missing_input(path, what: str = "") -> NegsetError:
    """The error for an input file that is not there: names the step that writes it when it is a step output."""
    text = str(path)
    step = _producer(text)
    label = f" ({what})" if what else ""
    if step is not None:
        return NegsetError(f"{text}: missing{label}; the '{step}' step has not run (or did not finish)",
                           hint=f"run `negset {step}` (or `dvc repro`) first")
    return NegsetError(f"{text}: missing{label}", hint="check the path in params.yaml")


def damaged_input(path, detail: str) -> NegsetError:
    """The error for an input file that cannot be parsed (damaged Parquet or JSON)."""
    text = str(path)
    step = _producer(text)
    detail = " ".join(str(detail).split())[:200]  # one line, not a page
    hint = f"run `negset {step}` again to rebuild it" if step else "replace the file with a valid one"
    return NegsetError(f"{text}: damaged or not the expected format ({detail})", hint=hint)


def user_error(exc: BaseException) -> NegsetError | None:
    """The one-line ``NegsetError`` for an OS error about a named file, or None when ``exc`` is not one.

    The single place that turns ``FileNotFoundError``, ``PermissionError``, a
    read-only or full disk into a message naming the file: steps and commands
    let these rise, ``negset.pipeline.run_step`` and the command line translate
    them. Errors without a file name (network resets, timeouts) stay as they are,
    so retries still apply to them.
    """
    if isinstance(exc, NegsetError):
        return exc
    if not isinstance(exc, OSError):
        return None
    name = exc.filename
    if name is None:
        # pyarrow puts the path in the message only: "Failed to open local file '/x'. Detail: [errno 2] ..."
        import re

        found = re.search(r"local file '([^']+)'", str(exc))
        name = found.group(1) if found else None
    if name is None or exc.errno not in _FILE_ERRNOS:
        return None
    name = str(name if isinstance(name, str) else os.fsdecode(name))
    if exc.errno == 2:
        return missing_input(name)
    what = _FILE_ERRNOS[exc.errno]
    if exc.errno in (13, 1, 30):
        hint = "make data/ (and the file) writable by this user, or run as the user that owns it"
    elif exc.errno in (28, 122):
        hint = "free some disk space and run again; nothing already built was replaced"
    else:
        hint = "check the path"
    if exc.filename2:
        name = f"{name} -> {exc.filename2}"
    return NegsetError(f"{name}: {what}", hint=hint)
