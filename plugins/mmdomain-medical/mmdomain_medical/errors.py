"""The plugin's one error type: a file that cannot be used, named by path, never by content.

Inside a dataset (``site_naming(root, key)``, which ``MedicalDataset`` and ``index_tree`` enter)
a file is named by a keyed pseudonym of its path relative to the root, ``file-<16 hex>`` plus its
suffix, in every error, warning and log message the plugin writes: hospitals name files after
patients (``DOE_JOHN_MRN1234567.dcm``), and those messages reach the site's logs and, through
the federation, places outside the site. ``mmdomain medical locate ROOT NAME`` turns a pseudonym
back into the path, on the site's own machine. Outside such a block (a direct ``read_dicom(path)``
call, ``mmdomain medical inspect FILE``) the caller's own path is echoed back as given.
"""

from __future__ import annotations

import contextvars
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from mmdomain import DataError

FILE_PREFIX = "file-"
#: the dataset's own files, named as they are (they are named by the layout, not after patients)
SITE_FILES = frozenset({"manifest.csv", "manifest.parquet", "labels.csv", "labels-from-reports.csv"})
_NAMING: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar("mmdomain_medical_naming",
                                                                                 default=None)


@contextmanager
def site_naming(root: str | Path, key: str) -> Iterator[None]:
    """Name files by pseudonym (``shown``) while the block runs: those under ``root`` and any other."""
    token = _NAMING.set((os.path.abspath(root), key))
    try:
        yield
    finally:
        _NAMING.reset(token)


def relative_name(root: str | Path, path: str | Path) -> str:
    """``path`` relative to ``root`` (lexically, '/'-separated): what a file's pseudonym is made of."""
    return Path(os.path.relpath(os.path.abspath(path), os.path.abspath(root))).as_posix()


def file_pseudonym(root: str | Path, path: str | Path, key: str) -> str:
    """``file-<16 hex><suffix>``: the keyed pseudonym of ``path`` under ``root`` (``deid.pseudonym``)."""
    from .deid import pseudonym  # deid imports this module

    suffix = Path(path).suffix
    suffix = suffix if suffix[1:].isalnum() and len(suffix) <= 8 else ""
    return pseudonym(relative_name(root, path), key, FILE_PREFIX) + suffix.lower()


def shown(path: str | Path) -> str:
    """How messages name ``path``: its pseudonym inside ``site_naming`` (the root itself and the
    dataset's own files by name), else the path as given."""
    naming = _NAMING.get()
    if naming is None:
        return str(path)
    root, key = naming
    absolute = os.path.abspath(path)
    if absolute == root:
        return str(path)
    if Path(absolute).name in SITE_FILES and os.path.dirname(absolute) == root:
        return Path(absolute).name
    return file_pseudonym(root, absolute, key)


class MedicalDataError(DataError):
    """``MedicalDataError(path, reason)``: the message is ``"<path>: <reason>"``, the path as
    ``shown`` names it (a pseudonym inside a dataset); ``.path`` keeps the real path, for the
    site's own code only.

    ``reason`` must never carry header values or report text (they may be PHI); callers
    pass the exception *type* of a library failure, not its message.
    """

    def __init__(self, path: str | Path | None, reason: str):
        self.path = str(path) if path is not None else None
        self.reason = reason
        super().__init__(f"{shown(path)}: {reason}" if self.path else reason)


def is_interrupt(exc: BaseException) -> bool:
    """Whether ``exc`` must pass through a catch-all: an interrupt or exit, not a library failure
    (pyo3's ``PanicException``, a native decoder's panic, derives from BaseException too)."""
    return isinstance(exc, (KeyboardInterrupt, SystemExit, GeneratorExit))


def library_failure(path: str | Path, what: str, exc: BaseException) -> MedicalDataError:
    """Wrap a third-party exception without its message (which may quote header values)."""
    return MedicalDataError(path, f"{what} failed ({type(exc).__name__})")
