"""Text out of DICOM Structured Reports (Basic Text, Enhanced, Comprehensive SR).

Walks ``ContentSequence`` recursively: CONTAINER items give section headings (their
concept name), TEXT / CODE / NUM / PNAME... give lines. A malformed item (no ValueType,
no concept name, an empty sequence) is skipped, never fatal: real files have them. An SR file
over ``limits.SR_FILE_BYTES`` is refused before it is parsed, and one with more than
``limits.SR_ITEMS`` content items when it is walked.
"""

from __future__ import annotations

from pathlib import Path

from pydicom.dataset import Dataset

from mmdomain import limits

from .dicom_parse import quiet_validation, read_header, regular_file
from .errors import MedicalDataError
from .facts import SR_SOP_CLASSES

MAX_DEPTH = 64


class _TooManyItems(Exception):
    pass


def _concept(item: Dataset, kw: str = "ConceptNameCodeSequence") -> str:
    seq = item.get(kw, None)
    try:
        return str(seq[0].get("CodeMeaning", "") or "") if seq else ""
    except Exception:  # noqa: BLE001 - malformed code item
        return ""


def walk(items, lines: list[str], depth: int = 0, seen: list[int] | None = None) -> None:
    """Append the text of ``items`` (a ContentSequence) to ``lines``; ``seen`` counts the items
    walked, past ``limits.SR_ITEMS`` the walk stops (``_TooManyItems``)."""
    if depth > MAX_DEPTH or items is None:
        return
    seen = [0] if seen is None else seen
    for item in items:
        seen[0] += 1
        if seen[0] > limits.SR_ITEMS:
            raise _TooManyItems
        if not isinstance(item, Dataset):
            continue
        vtype = str(item.get("ValueType", "") or "").upper()
        name = _concept(item)
        if vtype == "CONTAINER":
            if name:
                lines.append(f"\n{name.upper()}:")
        elif vtype == "TEXT":
            text = str(item.get("TextValue", "") or "").strip()
            if text:
                lines.append(text)
        elif vtype == "CODE":
            code = _concept(item, "ConceptCodeSequence")
            if code:
                lines.append(f"{name}: {code}" if name else code)
        elif vtype == "NUM":
            mv = item.get("MeasuredValueSequence", None)
            try:
                if mv:
                    unit = _concept(mv[0], "MeasurementUnitsCodeSequence")
                    lines.append(f"{name}: {mv[0].get('NumericValue', '')} {unit}".strip())
            except Exception:  # noqa: BLE001
                pass
        # PNAME, DATE, DATETIME, UIDREF and items with no ValueType carry no report text
        if "ContentSequence" in item:
            walk(item.ContentSequence, lines, depth + 1, seen)


def sr_text(ds: Dataset, path: str | Path | None = None) -> str:
    """The report text of an SR dataset, with section headings; '' if it has none."""
    if "ContentSequence" not in ds:
        return ""
    lines: list[str] = []
    try:
        with quiet_validation():
            walk(ds.ContentSequence, lines)
    except _TooManyItems:
        raise MedicalDataError(path, f"SR content tree has more than {limits.SR_ITEMS:,} items "
                                     "(mmdomain.limits.SR_ITEMS)") from None
    except Exception as exc:  # noqa: BLE001
        raise MedicalDataError(path, f"SR content tree unreadable ({type(exc).__name__})") from None
    return "\n".join(lines).strip()


def is_sr(ds: Dataset) -> bool:
    """Whether ``ds`` is a structured report (pydicom may raise on a value it cannot convert,
    e.g. ``NotImplementedError`` for an unknown VR: the callers name the file)."""
    return str(ds.get("SOPClassUID", "")) in SR_SOP_CLASSES or str(ds.get("Modality", "")) == "SR"


def read_sr(path: str | Path) -> str:
    """Read an SR file's text; ``MedicalDataError`` if it is not an SR, is too large, or has no text."""
    regular_file(path, "SR_FILE_BYTES")
    ds = read_header(path)
    try:
        with quiet_validation():
            sr = is_sr(ds)
    except Exception as exc:  # noqa: BLE001
        raise MedicalDataError(path, f"DICOM header unreadable ({type(exc).__name__})") from None
    if not sr:
        raise MedicalDataError(path, "not a structured report (SOP class is not an SR class)")
    text = sr_text(ds, path)
    if not text:
        raise MedicalDataError(path, "structured report has no text content")
    return text
