"""Text out of DICOM Structured Reports (Basic Text, Enhanced, Comprehensive SR).

Walks ``ContentSequence`` recursively: CONTAINER items give section headings (their
concept name), TEXT / CODE / NUM / PNAME... give lines. A malformed item (no ValueType,
no concept name, an empty sequence) is skipped, never fatal: real files have them.
"""

from __future__ import annotations

from pathlib import Path

from pydicom.dataset import Dataset

from .dicom_parse import read_header
from .errors import MedicalDataError
from .facts import SR_SOP_CLASSES

MAX_DEPTH = 64


def _concept(item: Dataset, kw: str = "ConceptNameCodeSequence") -> str:
    seq = item.get(kw, None)
    try:
        return str(seq[0].get("CodeMeaning", "") or "") if seq else ""
    except Exception:  # noqa: BLE001 - malformed code item
        return ""


def walk(items, lines: list[str], depth: int = 0) -> None:
    if depth > MAX_DEPTH or items is None:
        return
    for item in items:
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
            walk(item.ContentSequence, lines, depth + 1)


def sr_text(ds: Dataset, path: str | Path | None = None) -> str:
    """The report text of an SR dataset, with section headings; '' if it has none."""
    if "ContentSequence" not in ds:
        return ""
    lines: list[str] = []
    try:
        walk(ds.ContentSequence, lines)
    except Exception as exc:  # noqa: BLE001
        raise MedicalDataError(path, f"SR content tree unreadable ({type(exc).__name__})") from None
    return "\n".join(lines).strip()


def is_sr(ds: Dataset) -> bool:
    return str(ds.get("SOPClassUID", "")) in SR_SOP_CLASSES or str(ds.get("Modality", "")) == "SR"


def read_sr(path: str | Path) -> str:
    """Read an SR file's text; ``MedicalDataError`` if it is not an SR or has no text."""
    ds = read_header(path)
    if not is_sr(ds):
        raise MedicalDataError(path, "not a structured report (SOP class is not an SR class)")
    text = sr_text(ds, path)
    if not text:
        raise MedicalDataError(path, "structured report has no text content")
    return text
