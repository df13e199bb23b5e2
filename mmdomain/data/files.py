"""One rule for the files a dataset reads from a site's folder, before any decoder sees them.

A file is read only if it is a *regular* file (never a FIFO, which would block; a device, which
never ends; a socket or a folder), no larger than its ceiling, and, when the dataset has a data
root, inside that root once every ``..`` and symlink is resolved (a manifest's
``../../etc/passwd``, an absolute path elsewhere, a symlink out of the tree are refused).

Every check raises ``error(path, reason)``: the plugin's own error type (its ``DataError``
subclass, which decides how the path is shown: the medical plugin pseudonymises file names).
Reasons never contain a path, so nothing about a file's name reaches a message that way.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Callable

from ..errors import DataError


class FileRefused(DataError):
    """``FileRefused(path, reason)``: ``"<path>: <reason>"`` (the default ``error``)."""

    def __init__(self, path: str | Path | None, reason: str):
        self.path, self.reason = (None if path is None else str(path)), reason
        super().__init__(f"{self.path}: {reason}" if self.path else reason)


ErrorType = Callable[[Path, str], Exception]

_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def file_kind(mode: int) -> str | None:
    """What a file of this ``st_mode`` is when it is not a regular file (None when it is)."""
    if stat.S_ISREG(mode):
        return None
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def inside_root(path: str | Path, root: str | Path, *, what: str = "file", error: ErrorType = FileRefused) -> Path:
    """``path`` fully resolved (relative paths are taken from the working directory; join them to
    ``root`` first), if that lies inside ``root`` resolved too."""
    path = Path(path)
    try:
        real, top = path.resolve(), Path(root).resolve()
    except (OSError, RuntimeError, ValueError) as exc:  # a symlink loop, a permission error, a NUL byte
        raise error(path, f"cannot be resolved ({type(exc).__name__})") from None
    if real != top and not real.is_relative_to(top):
        raise error(path, f"resolves outside the data root: refused; a {what} must lie inside the folder it "
                          "belongs to (copy it in, or point the dataset at a root that holds it)")
    return real


def check_stat(path: str | Path, st: os.stat_result, *, max_bytes: int | None = None, ceiling_name: str = "",
               what: str = "file", error: ErrorType = FileRefused) -> None:
    """Refuse a stat (``os.stat`` of a path, or ``os.fstat`` of a file already opened without
    blocking) that is not a regular file's or is larger than ``max_bytes`` (``ceiling_name``
    says which ceiling, e.g. ``mmdomain.limits.DICOM_FILE_BYTES``)."""
    kind = file_kind(st.st_mode)
    if kind is not None:
        raise error(Path(path), f"is {kind}, not a regular {what}: refused without reading it")
    if max_bytes is not None and st.st_size > max_bytes:
        raise error(Path(path), f"is {st.st_size:,} bytes, over the ceiling of {max_bytes:,}"
                                + (f" ({ceiling_name})" if ceiling_name else "") + "; refused without reading it")


def regular_file(path: str | Path, *, root: str | Path | None = None, max_bytes: int | None = None,
                 ceiling_name: str = "", what: str = "file", error: ErrorType = FileRefused
                 ) -> tuple[Path, os.stat_result]:
    """The resolved path and stat of ``path`` (symlinks followed) once it is known to be a regular
    file, inside ``root`` when one is given, within ``max_bytes``; nothing is opened."""
    path = Path(path)
    real = inside_root(path, root, what=what, error=error) if root is not None else path
    try:
        st = os.stat(real)
    except FileNotFoundError:
        raise error(path, f"no such {what}") from None
    except (OSError, ValueError) as exc:
        raise error(path, f"cannot be read ({type(exc).__name__})") from None
    check_stat(path, st, max_bytes=max_bytes, ceiling_name=ceiling_name, what=what, error=error)
    return (real if root is not None else path.resolve()), st
