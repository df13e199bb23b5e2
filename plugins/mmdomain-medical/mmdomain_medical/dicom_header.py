"""A DICOM file's header: the facts read from it, defined once, and the record kept per file.

- **The facts** are the ~30 attributes the reader, the index and the dataset use (Image Pixel
  numbers, rescale and window values, UIDs, modality, vendor, view, whether LUT sequences and
  pixel data are present), by keyword, as plain values: ints, lists of floats (DS), strings,
  each None when missing; plus ``TransferSyntaxUID`` and ``invalid`` (the keywords of Image
  Pixel integers that are present but not numbers, counted as missing). One table
  (``_KINDS``) says how each attribute converts and one function (``collect_facts``) converts
  a header's elements. It has two sources: pydicom's parsed Dataset (``header_facts``, which
  falls back on pydicom's own conversion for anything that is not plain ASCII), and the walk
  over the file's bytes (``header_walk.walk_header``, which gives up instead). A corpus test
  checks that the two agree. ``Dataset.get`` costs ~25 us per attribute, which is why the
  Dataset source converts its raw elements itself.
- ``DicomHeader`` is one file's header read once (``read_header_record``, one pydicom parse by
  ``dicom_parse``): the facts, the PHI values the report scrubber needs, the offset of the
  PixelData element, the options pydicom derives from the header for its decoders, and the
  file's size and mtime. The index keeps one for each study's first image, the dataset reads
  the ones the index did not, and the reader takes it (``read_dicom(header=...)``) instead of
  reading the header again.
- ``safe_meta`` builds the PHI-free meta dict from the facts: a whitelist of acquisition
  attributes, with the study and series named by keyed pseudonyms.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.pixels.utils import as_pixel_options
from pydicom.uid import UID

from .deid import DEFAULT_KEY, known_phi, pseudonym
from .dicom_parse import PIXEL_TAG, parse_header, quiet_validation
from .errors import library_failure

RLE_LOSSLESS = "1.2.840.10008.1.2.5"
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"


# -- the facts: which attributes, converted how ---------------------------------------------------

_US, _IS, _DS, _TEXT, _PRESENT = "US", "IS", "DS", "TEXT", "PRESENT"
_KINDS: dict[str, tuple[str, ...]] = {
    _US: ("SamplesPerPixel", "PlanarConfiguration", "Rows", "Columns", "BitsAllocated", "BitsStored",
          "PixelRepresentation"),
    _IS: ("NumberOfFrames",),
    _DS: ("SliceThickness", "ImagerPixelSpacing", "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing",
          "WindowCenter", "WindowWidth", "RescaleIntercept", "RescaleSlope"),
    _TEXT: ("SOPClassUID", "Modality", "Manufacturer", "BodyPartExamined", "ViewPosition", "StudyInstanceUID",
            "SeriesInstanceUID", "PhotometricInterpretation", "BurnedInAnnotation"),
    _PRESENT: ("ModalityLUTSequence", "VOILUTSequence", "FloatPixelData", "DoubleFloatPixelData", "PixelData"),
}
WANTED: dict[int, tuple[str, str]] = {int(tag_for_keyword(kw)): (kw, kind) for kind, kws in _KINDS.items()
                                      for kw in kws}
_EMPTY: dict[str, Any] = {kw: False if kind == _PRESENT else None for kind, kws in _KINDS.items() for kw in kws}
_TEXT_VRS = (None, "CS", "LO", "SH", "UI")  # None: implicit VR (the dictionary's, one of these)
_DS_CHARS = b"0123456789+-.eE \\"
_SLOW, _INVALID = object(), object()

# (tag, VR or None if implicit, the value's bytes or None if not at hand, little endian)
Element = tuple[int, "str | None", "bytes | None", bool]


def _raw_value(kind: str, vr: str | None, value: bytes, little_endian: bool = True) -> Any:
    """An element's value converted straight from its bytes, or ``_SLOW`` when pydicom should
    convert it (another VR than the dictionary's, non-ASCII or multi-valued text, odd numbers)."""
    if vr not in (_TEXT_VRS if kind == _TEXT else (None, kind)):
        return _SLOW
    if kind == _US:
        if len(value) == 2:
            return int.from_bytes(value, "little" if little_endian else "big")
        return None if not value else _SLOW
    if not value.isascii():
        return _SLOW
    try:
        if kind == _DS:
            if value.translate(None, _DS_CHARS):
                return _SLOW
            text = value.decode().strip()
            return [float(v) for v in text.split("\\")] if text else None
        if kind == _IS:
            text = value.decode().strip(" \0")
            return int(text) if text.lstrip("+-").isdigit() else None if not text else _SLOW
    except ValueError:
        return _SLOW
    if b"\\" in value or b"\x1b" in value:
        return _SLOW  # multi-valued text, an escape sequence (ISO 2022): pydicom's rules
    return value.decode().rstrip(" \0")


def _float_list(value: Any) -> list[float] | None:
    if value is None or value == "":
        return None
    try:
        return [float(v) for v in (value if isinstance(value, (list, tuple)) or hasattr(value, "__iter__")
                                   and not isinstance(value, (str, bytes)) else [value])]
    except (TypeError, ValueError):
        return None


def _slow_value(kind: str, ds: Dataset, tag: int) -> Any:
    """pydicom's own conversion; never raises: a DS or text value it cannot convert counts as
    missing, a US / IS one (an Image Pixel attribute) is ``_INVALID``."""
    try:
        with quiet_validation():
            value = ds[tag].value
    except Exception:  # noqa: BLE001
        value = _INVALID
    if kind == _DS:
        return None if value is _INVALID else _float_list(value)
    if kind == _TEXT:
        return None if value is _INVALID else str(value) if value is not None and value != "" else ""
    try:  # US / IS
        return int(value) if value is not None and value != "" else None
    except (TypeError, ValueError):
        return _INVALID


def collect_facts(elements: Iterable[Element], transfer_syntax: str,
                  convert: Callable[[str, int], Any] | None = None) -> dict[str, Any] | None:
    """The facts from a header's top-level elements. A value that is not plain (``_raw_value``
    leaves it to pydicom) goes to ``convert(kind, tag)``; without ``convert`` the answer is None
    (the caller cannot convert it: it declines the file)."""
    facts = dict(_EMPTY)
    invalid: list[str] = []
    for tag, vr, value, little_endian in elements:
        want = WANTED.get(tag)
        if want is None:
            continue
        kw, kind = want
        if kind == _PRESENT:
            facts[kw] = True
            continue
        converted = _SLOW if value is None else _raw_value(kind, vr, value, little_endian)
        if converted is _SLOW:
            if convert is None:
                return None
            converted = convert(kind, tag)
            if converted is _INVALID:
                invalid.append(kw)
                converted = None
        facts[kw] = converted
    facts["TransferSyntaxUID"] = transfer_syntax
    facts["invalid"] = invalid
    return facts


def _dataset_elements(ds: Dataset) -> Iterator[Element]:
    for tag, elem in ds.items():  # the raw elements: converted already or deferred ones have no bytes here
        if type(elem) is RawDataElement:
            yield tag, elem.VR, elem.value, elem.is_little_endian
        else:
            yield tag, None, None, True


def header_facts(ds: Dataset) -> dict[str, Any]:
    """The facts of a pydicom header, in one pass over its raw elements."""
    facts = collect_facts(_dataset_elements(ds), _tsyntax(ds), lambda kind, tag: _slow_value(kind, ds, tag))
    return facts  # type: ignore[return-value]  # never None: with a converter every element converts


def _tsyntax(ds: Dataset) -> str:
    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    return str(ts) if ts else IMPLICIT_VR_LITTLE_ENDIAN


def pixel_options(ds: Dataset, facts: dict[str, Any]) -> dict[str, Any]:
    """The options pydicom's decoders take for this header's encapsulated PixelData: what
    ``pixel_array(file)`` derives from the header itself."""
    return as_pixel_options(ds, transfer_syntax_uid=UID(facts["TransferSyntaxUID"]), pixel_keyword="PixelData",
                            pixel_vr="OB")


# -- one file's header, read once --------------------------------------------------------------------

@dataclass(frozen=True)
class DicomHeader:
    """One file's header, read once. It holds PHI (``phi``, the UIDs among the facts) for
    internal use only, so its repr shows neither."""

    facts: dict[str, Any] = field(repr=False)
    phi: tuple[str, ...] = field(default=(), repr=False)  # deid.known_phi: values to scrub from reports
    pixel_offset: int = -1  # of the PixelData element; -1: unknown (the reader reads the header itself)
    pixel_options: dict[str, Any] | None = field(default=None, repr=False)  # compressed syntaxes only
    file_size: int = -1
    mtime_ns: int = -1

    def describes(self, data: bytes, mtime_ns: int) -> bool:
        """Whether this is still the header of ``data``, the file's bytes now (same size and
        mtime, the PixelData tag where it was)."""
        pos = self.pixel_offset
        return (pos >= 0 and len(data) == self.file_size and mtime_ns == self.mtime_ns
                and data[pos:pos + 4] == PIXEL_TAG)


def read_header_record(path: str | Path) -> DicomHeader:
    """One pydicom read of ``path``'s header (its pixels are not read), kept as a record."""
    path = Path(path)
    return header_record(path, *parse_header(path))


def header_record(path: Path, ds: Dataset, offset: int) -> DicomHeader:
    """The record of a header already parsed by ``parse_header(path)``."""
    try:
        facts = header_facts(ds)
        with quiet_validation():
            phi = tuple(known_phi(ds))
            try:
                options = pixel_options(ds, facts) if UID(facts["TransferSyntaxUID"]).is_encapsulated else None
            except Exception:  # noqa: BLE001 - the reader then takes pydicom's whole-file route, as for any doubt
                options = None
        stat = path.stat()
    except Exception as exc:  # noqa: BLE001
        raise library_failure(path, "DICOM header parse", exc) from None
    return DicomHeader(facts, phi, offset, options, stat.st_size, stat.st_mtime_ns)


def safe_meta(facts: dict[str, Any], key: str = DEFAULT_KEY) -> dict[str, Any]:
    """Acquisition facts only (no names, IDs, dates, UIDs); the study by keyed pseudonym."""
    f = facts
    meta: dict[str, Any] = {
        "modality": f["Modality"] or "",
        "manufacturer": f["Manufacturer"] or "",
        "photometric": f["PhotometricInterpretation"] or "",
        "transfer_syntax": f["TransferSyntaxUID"],
        "sop_class": f["SOPClassUID"] or "",
        "rows": f["Rows"] or 0,
        "columns": f["Columns"] or 0,
        "frames": f["NumberOfFrames"] or 1,
        "bits_stored": f["BitsStored"] or 0,
        "view_position": f["ViewPosition"] or "",
        "body_part": f["BodyPartExamined"] or "",
    }
    spacing = f["PixelSpacing"] or f["ImagerPixelSpacing"]
    if spacing:
        meta["pixel_spacing"] = list(spacing)  # copies: the facts may be a kept record's
    for kw, name in (("ImageOrientationPatient", "orientation"), ("ImagePositionPatient", "position")):
        if f[kw]:
            meta[name] = list(f[kw])
    if f["SliceThickness"]:
        meta["slice_thickness"] = f["SliceThickness"][0]
    if f["StudyInstanceUID"] is not None:
        meta["study_key"] = pseudonym(f["StudyInstanceUID"], key, "st-")
    if f["SeriesInstanceUID"] is not None:
        meta["series_key"] = pseudonym(f["SeriesInstanceUID"], key, "se-")
    return meta
