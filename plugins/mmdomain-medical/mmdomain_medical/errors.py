"""The plugin's one error type: a file that cannot be used, named by path, never by content."""

from __future__ import annotations

from pathlib import Path

from mmdomain import DataError


class MedicalDataError(DataError):
    """``MedicalDataError(path, reason)``: the message is ``"<path>: <reason>"``.

    ``reason`` must never carry header values or report text (they may be PHI); callers
    pass the exception *type* of a library failure, not its message.
    """

    def __init__(self, path: str | Path | None, reason: str):
        self.path = str(path) if path is not None else None
        self.reason = reason
        super().__init__(f"{self.path}: {reason}" if self.path else reason)


def library_failure(path: str | Path, what: str, exc: BaseException) -> MedicalDataError:
    """Wrap a third-party exception without its message (which may quote header values)."""
    return MedicalDataError(path, f"{what} failed ({type(exc).__name__})")
