"""pydicom's parse of a DICOM header: quiet, tolerant, and telling where the pixels start.

- ``read_header`` parses the whole header with values over 2 KB deferred (pixel data, big
  LUTs are read only if used); ``parse_header`` stops before the pixels and gives the offset
  of the PixelData element in the file too (``pixel_offset`` says when that offset is usable).
- A file without preamble or file meta is accepted when it parses as DICOM; its transfer
  syntax is inferred from how it was actually encoded.
- pydicom's reading validation is silenced only while we read (``quiet_validation``): its
  warnings quote header values, i.e. PHI. ``pydicom.config`` is set and restored around each
  read, never changed for other users at import.
- Only regular files are read (``read_regular`` / ``open_regular``: an open that cannot block on
  a FIFO, then ``fstat`` on the open file; ``regular_file``: a stat, for a check without opening):
  FIFOs, devices, sockets, folders and symlinks to them are refused before anything is read, and
  so is a file over ``limits.DICOM_FILE_BYTES``.
- A Deflated Explicit VR Little Endian file is inflated once here, into nothing, counting the
  bytes (``check_deflated``): past ``limits.DICOM_INFLATED_BYTES`` it is refused before pydicom,
  which inflates the whole data set in memory, ever sees it.
- Any failure is a ``MedicalDataError`` naming the file and the reason (the library's exception
  type, never its message).
"""

from __future__ import annotations

import io
import logging
import os
import struct
import warnings
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import pydicom
import pydicom.config
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from mmdomain import limits
from mmdomain.data import files

from .errors import MedicalDataError, library_failure

PIXEL_DATA = 0x7FE00010
PIXEL_TAG = b"\xe0\x7f\x10\x00"  # (7FE0,0010) little endian
_DEFER = 2048  # bytes: larger values (pixel data, big LUTs) are read only if used
DEFLATED = "1.2.840.10008.1.2.1.99"
_DEFLATED_UID = DEFLATED.encode()
_STREAM_SYNTAXES = frozenset({"1.2.840.10008.1.2.2", DEFLATED})  # big endian, deflated
_META_BYTES = 65_536  # read for the File Meta's transfer syntax (a real File Meta is < 1 KB)
_LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())  # a 4-byte length in explicit VR
_INFLATE_IN, _INFLATE_OUT = 1 << 20, 1 << 24  # bytes read / inflated at a time while counting


@contextmanager
def quiet_validation(*, all_warnings: bool = True):
    """pydicom's validation warnings quote header values (PHI), and its logger names the file
    (``End of file reached before delimiter ... in file <path>``): keep both out of logs, for the
    duration of our own reads only (restored afterwards; not thread-safe, like pydicom's own
    settings object). ``all_warnings=False`` silences pydicom's only, so the plugin's own (a
    BurnedInAnnotation warning) still reach the user."""
    settings = pydicom.config.settings
    before = settings.reading_validation_mode, settings.writing_validation_mode
    logger = logging.getLogger("pydicom")
    was_disabled = logger.disabled
    settings.reading_validation_mode = settings.writing_validation_mode = pydicom.config.IGNORE
    logger.disabled = True
    try:
        with warnings.catch_warnings():
            if all_warnings:
                warnings.simplefilter("ignore")
            else:
                warnings.filterwarnings("ignore", module=r"pydicom(\.|$)")
            yield
    finally:
        settings.reading_validation_mode, settings.writing_validation_mode = before
        logger.disabled = was_disabled


def not_a_file(path: Path) -> MedicalDataError:
    """The error for a path that is not a readable file's."""
    return MedicalDataError(path, "is a folder, not a file" if path.is_dir() else "no such file")


def _ceiling(limit: str | None) -> dict:
    """``mmdomain.data.files``' ceiling arguments for ``limits.<limit>`` (none without a limit)."""
    return {"max_bytes": getattr(limits, limit), "ceiling_name": f"mmdomain.limits.{limit}"} if limit else {}


def _check_stat(path: Path, st: os.stat_result, limit: str | None) -> None:
    """``mmdomain.data.files.check_stat`` (the rule every plugin's reads share) with the ceiling
    ``limits.<limit>``, raising ``MedicalDataError`` (file names shown as pseudonyms)."""
    files.check_stat(path, st, **_ceiling(limit), error=MedicalDataError)


def regular_file(path: str | Path, limit: str | None = None) -> os.stat_result:
    """The stat of ``path`` (symlinks followed), without opening it; ``MedicalDataError`` for a
    missing file, a folder, a FIFO, a device, a socket, or one larger than ``limits.<limit>``."""
    return files.regular_file(path, **_ceiling(limit), error=MedicalDataError)[1]


def _open_flags() -> int:
    return os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


class _SizedReader(io.BufferedReader):
    """A regular file opened for pydicom: ``read(n)`` asks for no more than the file holds (its size
    at the ``fstat``), so a value length a header declares (4 GB in a 3 KB file) is never allocated:
    Python's buffered ``read(n)`` allocates ``n`` bytes before it reads (issue #17 fuzzing: a
    truncated SR parsed with ``force=True`` raised MemoryError under a 2 GiB address-space limit)."""

    size = 0

    def read(self, n: int | None = -1, /) -> bytes:
        if n is not None and n > 65_536:
            n = min(n, max(self.size - self.tell(), 0))
        return super().read(n)


def open_regular(path: str | Path, limit: str | None = "DICOM_FILE_BYTES") -> BinaryIO:
    """``path`` opened for reading, if it is a regular file within ``limits.<limit>``: opened
    without blocking (``O_NONBLOCK``: a FIFO returns at once) and checked on the open file
    (``fstat``) before anything is read; no read asks for more than the file holds
    (``_SizedReader``). The file object is named by the path (pydicom reads deferred values by
    that name)."""
    path = Path(path)
    try:
        fp = _SizedReader(io.FileIO(os.fspath(path), "rb",
                                    opener=lambda name, flags: os.open(name, flags | os.O_NONBLOCK)))
    except FileNotFoundError:
        raise not_a_file(path) from None
    except IsADirectoryError:
        raise MedicalDataError(path, "is a folder, not a file") from None
    except (OSError, ValueError) as exc:
        raise MedicalDataError(path, f"unreadable ({type(exc).__name__})") from None
    try:
        st = os.fstat(fp.fileno())
        _check_stat(path, st, limit)
        fp.size = st.st_size
        os.set_blocking(fp.fileno(), True)
        return fp
    except BaseException:
        fp.close()
        raise


def _reopen(name: str, mode: str = "rb") -> BinaryIO:
    """How pydicom reopens a file for a deferred value (``Dataset.fileobj_type``): checked and sized
    as the first open (``open_regular``), not the builtin ``open`` a ``BufferedReader`` gets, whose
    ``read(n)`` would allocate the value's declared length (issue #17 fuzzing: a JPEG 2000 file's
    deferred PatientName declared 4 GB: MemoryError under a 2 GiB limit)."""
    return open_regular(name)


def read_regular(path: str | Path, limit: str = "DICOM_FILE_BYTES") -> bytes:
    """The bytes of a regular file within ``limits.<limit>``: opened without blocking and checked
    on the open file (``fstat``: never a FIFO, a device, a socket) before it is read."""
    name = os.fspath(path)
    try:
        fd = os.open(name, _open_flags())
    except FileNotFoundError:
        raise not_a_file(Path(name)) from None
    except (OSError, ValueError) as exc:
        raise MedicalDataError(name, f"unreadable ({type(exc).__name__})") from None
    try:
        st = os.fstat(fd)
        _check_stat(Path(name), st, limit)
        os.set_blocking(fd, True)
        chunks, size = [], 0
        while size <= st.st_size:  # one read for a regular file; more only if it grew meanwhile
            chunk = os.read(fd, st.st_size + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise MedicalDataError(name, f"unreadable ({type(exc).__name__})") from None
    finally:
        os.close(fd)
    data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    ceiling = getattr(limits, limit)
    if len(data) > ceiling:  # it grew after the check
        raise MedicalDataError(name, f"over the ceiling of {ceiling:,} bytes (mmdomain.limits.{limit})")
    return data


def file_meta_syntax(head: bytes) -> tuple[str | None, int]:
    """``(transfer syntax, offset of the data set)`` from a file's first bytes: its File Meta group
    (after the preamble, or at the start as pydicom also accepts; explicit or implicit VR);
    ``(None, -1)`` without one, and offset -1 when the group runs past ``head``."""
    pos = 132 if head[128:132] == b"DICM" else 0 if head[:2] == b"\x02\x00" else -1
    if pos < 0:
        return None, -1
    unpack, end, ts = struct.unpack_from, len(head), None
    while pos + 8 <= end:
        group, element = unpack("<HH", head, pos)
        if group != 2:
            return ts, pos
        vr = head[pos + 4:pos + 6]
        if not vr.isalpha() or not vr.isupper():  # implicit VR
            length, start = unpack("<L", head, pos + 4)[0], pos + 8
        elif vr in _LONG_VRS:
            if pos + 12 > end:
                break
            length, start = unpack("<L", head, pos + 8)[0], pos + 12
        else:
            length, start = unpack("<H", head, pos + 6)[0], pos + 8
        if length == 0xFFFFFFFF:
            break
        if element == 0x0010:
            ts = head[start:start + length].decode("ascii", "replace").strip(" \0")
        pos = start + length
    return ts, -1


def _deflated_at(head: bytes) -> int | None:
    """Where the data set starts if ``head`` (a file's first bytes) is a deflated file's, else None.
    The syntax as the File Meta walk reads it, or its UID anywhere in the File Meta group (so that
    a File Meta pydicom reads differently from the walk cannot slip a deflated data set past)."""
    ts, start = file_meta_syntax(head)
    end = start if start >= 0 else min(len(head), _META_BYTES)
    if ts == DEFLATED or head.find(_DEFLATED_UID, 0, end) >= 0:
        return start
    return None


def _count_inflated(path: Path, fp: BinaryIO, start: int) -> None:
    """Inflate ``fp`` from ``start`` into nothing, counting; refuse past ``limits.DICOM_INFLATED_BYTES``."""
    if start < 0:
        raise MedicalDataError(path, f"File Meta of a deflated file longer than {_META_BYTES:,} bytes")
    ceiling, total = limits.DICOM_INFLATED_BYTES, 0
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    fp.seek(start)
    try:
        while not inflater.eof:
            chunk = fp.read(_INFLATE_IN)
            if not chunk:
                break
            while chunk and not inflater.eof:
                total += len(inflater.decompress(chunk, _INFLATE_OUT))
                if total > ceiling:
                    raise MedicalDataError(path, f"the deflated data set inflates past {ceiling:,} bytes "
                                                 "(mmdomain.limits.DICOM_INFLATED_BYTES): refused")
                chunk = inflater.unconsumed_tail
    except zlib.error as exc:
        raise library_failure(path, "inflating the deflated data set", exc) from None


def check_deflated(path: Path, fp: BinaryIO) -> None:
    """If ``fp`` (at its start) holds a Deflated Explicit VR Little Endian file, inflate it into
    nothing, counting, and refuse it past ``limits.DICOM_INFLATED_BYTES``: the ceiling is
    reached without holding more than one chunk. ``fp`` is left at its start."""
    start = _deflated_at(fp.read(_META_BYTES))
    if start is not None:
        _count_inflated(path, fp, start)
    fp.seek(0)


def check_deflated_bytes(path: Path, data: bytes) -> None:
    """``check_deflated`` of a file's bytes already in memory (the File Meta walked in place, a few
    microseconds for a file that is not deflated)."""
    if data[128:132] != b"DICM" and data[:2] != b"\x02\x00":
        return
    start = _deflated_at(data)
    if start is not None:
        _count_inflated(path, io.BytesIO(data), start)


def read_header(path: str | Path, *, stop_before_pixels: bool = False) -> Dataset:
    """Parse the header (pixel data deferred); a clear error for anything that is not DICOM."""
    return _parse(Path(path), stop_before_pixels)[0]


def parse_header(path: str | Path) -> tuple[Dataset, int]:
    """The header up to the pixels, and the offset of the PixelData element in the file (-1 when
    unknown: no pixel data, or a file whose pixels need pydicom's general route)."""
    return _parse(Path(path), True)


def _parse(path: Path, stop_before_pixels: bool) -> tuple[Dataset, int]:
    try:
        with quiet_validation(), open_regular(path) as fp:
            check_deflated(path, fp)
            return _parse_file(path, fp, stop_before_pixels)
    except MedicalDataError:
        raise
    except Exception as exc:  # noqa: BLE001 - every library failure becomes our error, without its text
        raise library_failure(path, "DICOM header parse", exc) from None


def _parse_file(path: Path, fp: BinaryIO, stop_before_pixels: bool) -> tuple[Dataset, int]:
    try:
        ds = pydicom.dcmread(fp, defer_size=_DEFER, stop_before_pixels=stop_before_pixels)
    except InvalidDicomError:
        # no preamble/meta: some real files are like that; accept only if it parses as DICOM
        # (not deferred: a deferred value is re-read later without force, which fails)
        fp.seek(0)
        ds = pydicom.dcmread(fp, stop_before_pixels=stop_before_pixels, force=True)
        if "SOPClassUID" not in ds and PIXEL_DATA not in ds and "Modality" not in ds:
            raise MedicalDataError(path, "not a DICOM file (no preamble, no DICOM attributes)") from None
        _infer_transfer_syntax(ds)
        return ds, -1
    ds.fileobj_type = _reopen
    if not stop_before_pixels:
        return ds, -1
    pos = fp.tell()
    offset = pixel_offset(ds, fp.read(4), pos)
    return ds, -1 if offset is None else offset


def pixel_offset(ds: Dataset, head: bytes, pos: int) -> int | None:
    """Where a parse that stopped before the pixels left off: ``pos`` when ``head`` (the bytes
    there) is the PixelData tag, -1 when the header has no pixel data; None when the pixels need
    pydicom's general route: no file meta, big endian or deflated (whose offsets are not the
    file's), float pixel data."""
    meta = getattr(ds, "file_meta", None)
    if meta is None or "TransferSyntaxUID" not in meta or str(meta.TransferSyntaxUID) in _STREAM_SYNTAXES:
        return None
    if head[:2] == b"\xe0\x7f" and head[:4] != PIXEL_TAG:
        return None
    return pos if head[:4] == PIXEL_TAG else -1


def _infer_transfer_syntax(ds: Dataset) -> None:
    """A file without file meta: name the syntax it was actually encoded in."""
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        return
    implicit, little = getattr(ds, "original_encoding", (True, True))
    if meta is None:
        ds.file_meta = meta = FileMetaDataset()
    meta.TransferSyntaxUID = (ImplicitVRLittleEndian if implicit else
                              ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
