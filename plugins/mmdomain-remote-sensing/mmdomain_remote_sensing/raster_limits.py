"""What a raster, a metadata file or a folder may ask of the readers, checked before GDAL or a
parser touches it: the plugin's typed error (``RasterDataError``), its ceilings, and the one
helper every file of a scene folder goes through before it is opened (``check_file``).

- ``check_file``: the path resolves (symlinks followed) to a regular file inside the data root:
  no FIFO (GDAL would block on it), no device (a symlink to ``/dev/zero``), no directory, nothing
  outside the root; text files are also refused past a size.
- ``check_declared_bytes``: a JPEG 2000 file's boxes and tile-parts, a TIFF's strips and tiles
  (every IFD: overviews and masks too) end inside the file; a truncated band is refused when
  it is opened, not half-way through an epoch.
- ``check_dimensions``: width x height, bands and block size of an opened raster against
  ``RasterLimits``, before any pixel is read (a header declaring 100000 x 100000 is refused
  at once, whatever the file's size).
- ``gdal_errors``: turns whatever rasterio / GDAL raises inside a read into the typed error
  naming the file and what was being read.
- ``finite_number``: metadata values (offsets, quantification) that must be finite numbers in a
  range; ``dataset_size``: ``patch_size``/``stride`` against the core ceiling
  (``mmdomain.limits``).

``RasterLimits`` are a dataset option (``raster_limits={"pixels": ..., "bands": ...}``) of every
dataset of the plugin; ``DEFAULT_LIMITS`` is used where none is given.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import os
import struct
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from mmdomain import DataError
from mmdomain import limits as core_limits
from mmdomain.data.files import regular_file


class RasterDataError(DataError):
    """``RasterDataError(path, reason, field=None)``: ``"<path>: <field>: <reason>"``.
    ``path`` is the file (or folder) at fault, ``field`` what in it (a band, an XML element, a
    JSON key) when there is one."""

    def __init__(self, path: str | Path | None, reason: str, field: str | None = None):
        self.path = None if path is None else str(path)
        self.field, self.reason = field, reason
        text = f"{field}: {reason}" if field else reason
        super().__init__(f"{self.path}: {text}" if self.path else text)


@dataclass(frozen=True)
class RasterLimits:
    """Ceilings on what one file or grid may ask for. The defaults sit above every real input:
    a Sentinel-2 tile is 10,980 x 10,980 (1.2e8 pixels), a full Sentinel-1 GRD IW image about
    26,000 x 21,000 (5.5e8), SEN12MS / BigEarthNet patches 256 / 120 pixels a side."""

    pixels: int = 2**30  # width x height of one band of a file, and of a scene's grid (32,768 a side)
    bands: int = 1_024  # bands of one file (hyperspectral sensors have ~250)
    block_pixels: int = 2**27  # one tile / strip GDAL decodes whole (an untiled 10,980 px S2 band: 1.2e8)
    patch_pixels: int = 2**22  # the grid of one sample of a patch layout (2,048 x 2,048)
    xml_bytes: int = 16 * 2**20  # MTD_MSIL2A.xml (real ones: ~60 KB)
    json_bytes: int = core_limits.CONFIG_BYTES  # classes.json, dataset.json

    @classmethod
    def from_options(cls, options: Mapping[str, Any] | RasterLimits | None, where: str = "raster_limits"
                     ) -> RasterLimits:
        """The limits a dataset option names (others keep their defaults); a clear error on an
        unknown name or a value that is not a positive integer."""
        if options is None:
            return DEFAULT_LIMITS
        if isinstance(options, RasterLimits):
            return options
        if not isinstance(options, Mapping):
            raise DataError(f"{where} must be a table of ceilings ({', '.join(f.name for f in fields(cls))}), "
                            f"got {type(options).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise DataError(f"{where}: unknown ceiling(s) {unknown}; the ceilings are {sorted(known)}")
        for k, v in options.items():
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise DataError(f"{where}.{k} must be a positive integer, got {v!r}")
        return cls(**dict(options))


DEFAULT_LIMITS = RasterLimits()

#: Files GDAL reads next to a raster (metadata, overviews, masks, world files): each is checked
#: as the raster is, so a sidecar cannot bring in pixels or text from outside the root.
SIDECARS = (".aux.xml", ".ovr", ".msk", ".aux")
WORLD_FILES = {".tif": (".tfw", ".tifw", ".wld"), ".tiff": (".tfw", ".tiffw", ".wld"), ".jp2": (".j2w", ".wld")}

def check_file(path: str | Path, root: str | Path | None = None, *, what: str = "file",
               max_bytes: int | None = None) -> Path:
    """The resolved path of ``path`` once it is known to be a regular file (symlinks followed)
    inside ``root`` (resolved too; no containment check without one) and, with ``max_bytes``,
    no larger than that (``mmdomain.data.files``, the rule every plugin's reads share).
    ``RasterDataError`` naming ``path`` otherwise: nothing is opened."""
    return regular_file(path, root=root, max_bytes=max_bytes, ceiling_name="raster_limits", what=what,
                        error=RasterDataError)[0]


def check_sidecars(real: Path, root: str | Path | None) -> None:
    """Each sidecar GDAL would read next to ``real`` that exists passes ``check_file``."""
    names = [real.name + s for s in SIDECARS] + [real.stem + s for s in WORLD_FILES.get(real.suffix.lower(), ())]
    for name in names:
        side = real.with_name(name)
        if os.path.lexists(side):
            check_file(side, root, what=f"sidecar of {real.name}")


# -- declared sizes against the bytes present ------------------------------------------------------------

_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
_SOC, _SOT, _EOC = b"\xff\x4f", b"\xff\x90", b"\xff\xd9"
_MAX_BOXES = 100_000
_MAX_TILE_PARTS = 1 << 22
_MAX_IFDS = 4_096


def check_declared_bytes(real: Path, name: str | Path | None = None) -> None:
    """Refuse a JPEG 2000 or TIFF file whose structure declares more bytes than it holds (a
    truncated download or copy); other formats are left to GDAL. Reads only headers."""
    name = real if name is None else name
    size = real.stat().st_size
    with open(real, "rb") as f:
        head = f.read(16)
        if head[:12] == _JP2_SIGNATURE:
            _jp2_boxes(f, size, name)
        elif head[:4] == b"\xff\x4f\xff\x51":  # a bare codestream (.j2k)
            _codestream(f, 0, size, name)
        elif head[:2] in (b"II", b"MM"):
            _tiff(f, size, head, name)


def _truncated(name, what: str, need: int, end: int, within: str = "the file has {end:,} bytes") -> RasterDataError:
    return RasterDataError(name, f"{what} declares data up to byte {need:,} but {within.format(end=end)} "
                                 "(truncated? copy or download it again)")


_IN_CODESTREAM = "its codestream ends at byte {end:,}"


def _jp2_boxes(f, size: int, name) -> None:
    pos, found = 0, False
    for _ in range(_MAX_BOXES):
        if pos >= size:
            break
        f.seek(pos)
        hdr = f.read(8)
        if len(hdr) < 8:
            raise _truncated(name, "a JPEG 2000 box header", pos + 8, size)
        length, kind = struct.unpack(">I4s", hdr)
        head = 8
        if length == 1:
            ext = f.read(8)
            if len(ext) < 8:
                raise _truncated(name, "a JPEG 2000 box header", pos + 16, size)
            length, head = struct.unpack(">Q", ext)[0], 16
        elif length == 0:  # the last box: to the end of the file
            length = size - pos
        label = kind.decode("latin-1", "replace")
        if length < head:
            raise RasterDataError(name, f"JPEG 2000 box {label!r} at byte {pos:,} declares {length} bytes, "
                                        "less than its own header (corrupt file)")
        if pos + length > size:
            raise _truncated(name, f"JPEG 2000 box {label!r}", pos + length, size)
        if kind == b"jp2c":
            _codestream(f, pos + head, pos + length, name)
            found = True
        pos += length
    else:
        raise RasterDataError(name, f"more than {_MAX_BOXES:,} JPEG 2000 boxes (corrupt file)")
    if not found:
        raise RasterDataError(name, "a JPEG 2000 file without a codestream box (jp2c): truncated or corrupt")


def _codestream(f, start: int, end: int, name) -> None:
    """The main header's markers, then every tile-part (its Psot length), end inside the codestream."""
    f.seek(start)
    if f.read(2) != _SOC:
        raise RasterDataError(name, f"the JPEG 2000 codestream at byte {start:,} does not start with SOC "
                                    "(corrupt file)")
    pos = start + 2
    for _ in range(_MAX_BOXES):  # main header: marker segments up to the first tile-part
        f.seek(pos)
        m = f.read(4)
        if len(m) < 2 or pos + 2 > end:
            raise _truncated(name, "the JPEG 2000 main header", pos + 2, end, _IN_CODESTREAM)
        if m[:2] in (_SOT, _EOC):
            break
        if m[0] != 0xFF or len(m) < 4:
            raise RasterDataError(name, f"no JPEG 2000 marker at byte {pos:,} of the main header (corrupt file)")
        pos += 2 + struct.unpack(">H", m[2:4])[0]
        if pos > end:
            raise _truncated(name, "a JPEG 2000 main-header marker", pos, end, _IN_CODESTREAM)
    for _ in range(_MAX_TILE_PARTS):
        if pos >= end:
            raise _truncated(name, "the JPEG 2000 codestream (no EOC marker at its end)", pos + 2, end, _IN_CODESTREAM)
        f.seek(pos)
        m = f.read(12)
        if m[:2] == _EOC:
            return
        if m[:2] != _SOT or len(m) < 12:
            raise RasterDataError(name, f"expected a JPEG 2000 tile-part (SOT) at byte {pos:,} (corrupt file)")
        _lsot, tile, psot = struct.unpack(">HHI", m[2:10])
        if psot == 0:  # the last tile-part: to the EOC marker that must end the codestream
            f.seek(end - 2)
            if f.read(2) != _EOC:
                raise RasterDataError(name, f"JPEG 2000 tile {tile} runs to the end of the codestream, which lacks "
                                            "its EOC marker (truncated? copy or download it again)")
            return
        if psot < 12:
            raise RasterDataError(name, f"JPEG 2000 tile-part of tile {tile} declares {psot} bytes (corrupt file)")
        if pos + psot > end:
            raise _truncated(name, f"JPEG 2000 tile-part of tile {tile}", pos + psot, end, _IN_CODESTREAM)
        pos += psot
    raise RasterDataError(name, f"more than {_MAX_TILE_PARTS:,} JPEG 2000 tile-parts (corrupt file)")


_TIFF_TYPES = {3: "H", 4: "I", 16: "Q"}  # SHORT, LONG, LONG8: the types of offsets and byte counts
_TIFF_DATA = {273: "offsets", 324: "offsets", 279: "counts", 325: "counts"}  # strips, tiles
#: bytes per value of each TIFF field type (unknown types are skipped, as the standard says)
_TIFF_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4, 16: 8, 17: 8, 18: 8}


def _tiff(f, size: int, head: bytes, name) -> None:
    """Every strip / tile of every IFD (classic or BigTIFF, either byte order) ends inside the file."""
    if len(head) < 8:  # the byte order, magic number and first IFD offset
        raise _truncated(name, "the TIFF header", 8, size)
    e = "<" if head[:2] == b"II" else ">"
    magic = struct.unpack(e + "H", head[2:4])[0]
    if magic == 42:
        big, ifd = False, struct.unpack(e + "I", head[4:8])[0]
    elif magic == 43 and len(head) >= 16:
        big, ifd = True, struct.unpack(e + "Q", head[8:16])[0]
    else:
        return  # not a TIFF after all: GDAL decides
    entry, count_fmt, count_len, off_fmt = (20, "Q", 8, "Q") if big else (12, "H", 2, "I")
    seen: set[int] = set()
    for _ in range(_MAX_IFDS):
        if ifd == 0:
            return
        if ifd in seen:
            raise RasterDataError(name, "its TIFF directories (IFDs) form a loop (corrupt file)")
        seen.add(ifd)
        if ifd + count_len > size:
            raise _truncated(name, "a TIFF directory (IFD)", ifd + count_len, size)
        f.seek(ifd)
        n = struct.unpack(e + count_fmt, f.read(count_len))[0]
        table_end = ifd + count_len + n * entry + (8 if big else 4)
        if n > 65_535 or table_end > size:
            raise _truncated(name, f"a TIFF directory of {n:,} entries", table_end, size)
        raw = f.read(n * entry + (8 if big else 4))
        arrays: dict[str, np.ndarray] = {}
        for i in range(n):
            rec = raw[i * entry:(i + 1) * entry]
            tag, typ = struct.unpack(e + "HH", rec[:4])
            cnt = struct.unpack(e + ("Q" if big else "I"), rec[4:12] if big else rec[4:8])[0]
            value = rec[12:20] if big else rec[8:12]
            if tag not in _TIFF_DATA:  # any other tag's values (GeoTIFF keys, metadata) must be in the file too
                nbytes = cnt * _TIFF_SIZES.get(typ, 0)
                if nbytes > len(value):
                    at = struct.unpack(e + off_fmt, value)[0]
                    if at + nbytes > size:
                        raise _truncated(name, f"TIFF tag {tag}", at + nbytes, size)
                continue
            code = _TIFF_TYPES.get(typ)
            if code is None:
                raise RasterDataError(name, f"TIFF tag {tag} has type {typ}, not an integer (corrupt file)")
            itemsize = struct.calcsize(code)
            nbytes = cnt * itemsize
            if cnt > 1 << 26:
                raise RasterDataError(name, f"TIFF tag {tag} declares {cnt:,} strips / tiles (corrupt file)")
            if nbytes <= len(value):
                data = value[:nbytes]
            else:
                at = struct.unpack(e + off_fmt, value)[0]
                if at + nbytes > size:
                    raise _truncated(name, f"TIFF tag {tag} (strip / tile table)", at + nbytes, size)
                f.seek(at)
                data = f.read(nbytes)
            arrays[_TIFF_DATA[tag]] = np.frombuffer(data, dtype=np.dtype(code).newbyteorder(e)).astype(np.uint64)
        if arrays:
            offs, counts = arrays.get("offsets"), arrays.get("counts")
            if offs is None or counts is None or offs.size != counts.size:
                raise RasterDataError(name, "its TIFF strip / tile offsets and byte counts do not match (corrupt "
                                            "file)")
            ends = np.where(counts > 0, offs + counts, 0)
            need = int(ends.max()) if ends.size else 0
            if need > size:
                raise _truncated(name, "a TIFF strip / tile", need, size)
        ifd = struct.unpack(e + off_fmt, raw[n * entry:])[0]
    raise RasterDataError(name, f"more than {_MAX_IFDS:,} TIFF directories (corrupt file)")


# -- dimensions of an opened raster ------------------------------------------------------------------------


def check_dimensions(src, name: str | Path, limits: RasterLimits = DEFAULT_LIMITS) -> None:
    """Width x height, band count and block size of an opened raster within ``limits``."""
    w, h, n = int(src.width), int(src.height), int(src.count)
    if w < 1 or h < 1 or n < 1:
        raise RasterDataError(name, f"declares {w} x {h} pixels and {n} bands: an empty raster")
    if w * h > limits.pixels:
        raise RasterDataError(name, f"declares {w:,} x {h:,} pixels ({w * h:,}); a raster may have at most "
                                    f"{limits.pixels:,} per band (raster_limits.pixels)", "size")
    if n > limits.bands:
        raise RasterDataError(name, f"declares {n:,} bands; at most {limits.bands:,} (raster_limits.bands)", "bands")
    for i, (bh, bw) in enumerate(src.block_shapes):
        if bh * bw > limits.block_pixels:
            raise RasterDataError(name, f"band {i + 1} is stored in blocks of {bw:,} x {bh:,} pixels, which GDAL "
                                        f"decodes whole; at most {limits.block_pixels:,} (raster_limits."
                                        "block_pixels)", "block size")


def check_grid(grid, where: str | Path, ceiling: int, option: str = "pixels") -> None:
    """A grid the readers allocate onto holds at most ``ceiling`` pixels."""
    w, h = grid.width, grid.height
    if w * h > ceiling:
        raise RasterDataError(where, f"would be read onto a grid of {w:,} x {h:,} pixels ({w * h:,}); at most "
                                     f"{ceiling:,} (raster_limits.{option}): {grid.describe()}", "grid")


# -- GDAL errors while reading --------------------------------------------------------------------------------


def _gdal_types() -> tuple[type[BaseException], ...]:
    from rasterio._err import CPLE_BaseError
    from rasterio.errors import RasterioError

    return (RasterioError, CPLE_BaseError, OSError, ValueError, IndexError, MemoryError, RuntimeError)


def _reason(exc: BaseException) -> str:
    """The first line of GDAL's own message (rasterio's 'see previous exception' points at the cause)."""
    for e in (exc.__cause__, exc.__context__, exc):
        text = str(e or "").strip()
        if text and "previous exception" not in text:
            return f"{type(e).__name__}: {text.splitlines()[0][:300]}"
    return type(exc).__name__


@contextlib.contextmanager
def gdal_errors(path: str | Path, what: str) -> Iterator[None]:
    """Inside the block, an exception from rasterio / GDAL becomes ``RasterDataError(path, ..., what)``."""
    try:
        yield
    except DataError:
        raise
    except _gdal_types() as exc:
        raise RasterDataError(path, f"cannot be read ({_reason(exc)}); the file is truncated or corrupt",
                              what) from None


# -- metadata values ------------------------------------------------------------------------------------------


def finite_number(value: Any, path: str | Path, field: str, *, low: float, high: float) -> float:
    """``value`` (text from XML / tags, or a number) as a finite float in ``[low, high]``."""
    text = value.strip() if isinstance(value, str) else value
    try:
        if isinstance(text, bool) or text is None or text == "":
            raise ValueError
        x = float(text)
    except (TypeError, ValueError):
        raise RasterDataError(path, f"{_show(value)} is not a number", field) from None
    if not math.isfinite(x) or not low <= x <= high:
        raise RasterDataError(path, f"{_show(value)} is out of range; it must be a finite number in "
                                    f"[{low:g}, {high:g}]", field)
    return x


def dataset_size(value: Any, where: str | Path, field: str) -> int:
    """``patch_size`` / ``stride``: one int in ``[1, ceiling]``, the core's ceiling on patch sides
    (``mmdomain.limits``, the same one configs are checked against)."""
    ceiling = core_limits.SIZE_LIMITS.get("patch_size", core_limits.PIXELS)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise RasterDataError(where, f"must be one positive integer (the side of a square patch, in pixels), got "
                                     f"{_show(value)}", field)
    if not 1 <= int(value) <= ceiling:
        raise RasterDataError(where, f"{int(value):,} is out of range; it must be between 1 and {ceiling:,} "
                                     "(mmdomain.limits)", field)
    return int(value)


def _show(value: Any, n: int = 60) -> str:
    import reprlib

    text = reprlib.repr(value)
    return text if len(text) <= n else text[: n - 3] + "..."
