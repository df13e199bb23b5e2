"""Radiology report text: sections, scrubbing, and the layouts reports come in
(MIMIC-CXR ``sNNNN.txt``, OpenI / IU X-ray XML, CSV/Parquet manifests; SR in ``sr.py``)."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Iterable

from .errors import MedicalDataError
from .facts import DEFAULT_REPORT_SECTIONS, REPORT_SECTIONS

# -- sections -------------------------------------------------------------------------------
_HEADING_TO_SECTION = {h: s for s, hs in REPORT_SECTIONS.items() for h in hs}
_HEADING = re.compile(
    r"^[ \t]*(" + "|".join(sorted((re.escape(h) for h in _HEADING_TO_SECTION), key=len, reverse=True))
    + r")[ \t]*:", re.IGNORECASE | re.MULTILINE)


def split_sections(text: str) -> dict[str, str]:
    """``{"indication": ..., "comparison": ..., "findings": ..., "impression": ...}`` (those present).

    Text before the first heading is dropped (MIMIC's "FINAL REPORT" banner); a report
    with no heading at all is treated as findings.
    """
    out: dict[str, str] = {}
    matches = list(_HEADING.finditer(text))
    if not matches:
        body = " ".join(text.split())
        return {"findings": body} if body else {}
    for i, m in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        section = _HEADING_TO_SECTION[m.group(1).upper()]
        body = " ".join(text[m.end():end].split())
        if body:
            out[section] = (out[section] + " " + body) if section in out else body
    return out


def select_sections(text: str, sections: Iterable[str] = DEFAULT_REPORT_SECTIONS) -> str:
    """The chosen sections, in the order asked, as ``"INDICATION: ..."`` lines; '' if none present."""
    sections = list(sections)
    unknown = [s for s in sections if s not in REPORT_SECTIONS]
    if unknown:
        raise MedicalDataError(None, f"unknown report sections {unknown}; known: {list(REPORT_SECTIONS)}")
    parts = split_sections(text)
    return "\n".join(f"{s.upper()}: {parts[s]}" for s in sections if parts.get(s))


# -- scrubbing ------------------------------------------------------------------------------
_MONTHS = r"(?:jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]*\.?"
_NAME = r"[A-Z][a-zA-Z'\-]+"
SCRUB_PATTERNS: tuple[tuple[str, re.Pattern], ...] = (
    ("email", re.compile(r"\b[\w.+-]+@[\w-]+\.[\w.-]+\b")),
    ("phone", re.compile(r"(?:\+?1[ .-]?)?(?:\(\d{3}\)|\b\d{3})[ .-]?\d{3}[ .-]\d{4}\b")),
    ("date", re.compile(r"\b\d{1,4}[/.-]\d{1,2}[/.-]\d{1,4}\b")),
    ("date", re.compile(r"\b" + _MONTHS + r"\s+\d{1,2}(?:st|nd|rd|th)?,?\s+\d{2,4}\b", re.IGNORECASE)),
    ("date", re.compile(r"\b\d{1,2}(?:st|nd|rd|th)?\s+" + _MONTHS + r",?\s+\d{2,4}\b", re.IGNORECASE)),
    ("time", re.compile(r"\b\d{1,2}:\d{2}(?::\d{2})?\s*(?:[ap]\.?m\.?)?", re.IGNORECASE)),
    ("id", re.compile(r"\b(?:MRN|MR#|medical record(?: number)?|acc(?:ession)?(?: no\.?| number| #)?|"
                      r"patient id|id)\s*[:#]?\s*[A-Z0-9-]*\d[A-Z0-9-]*\b", re.IGNORECASE)),
    ("id", re.compile(r"\b[A-Z]{0,4}\d{6,}\b")),
    ("address", re.compile(r"\b\d{1,6}\s+(?:[A-Z][a-z]+\s+){1,3}(?:Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|"
                           r"Lane|Ln|Drive|Dr|Court|Ct|Way|Place|Pl)\b\.?(?:,?\s+[A-Z][a-z]+)*(?:,?\s+[A-Z]{2})?"
                           r"(?:\s+\d{5}(?:-\d{4})?)?")),
    ("zip", re.compile(r"\b[A-Z]{2}\s+\d{5}(?:-\d{4})?\b")),
    ("name", re.compile(r"\b(?:Dr|Doctor|Mr|Mrs|Ms|Miss|Prof)\.?\s+" + _NAME + r"(?:\s+" + _NAME + r")?")),
    ("name", re.compile(r"(?i:\b(?:patient(?: name)?|name|pt|signed by|dictated by|reviewed by|attending|"
                        r"electronically signed by|discussed with|called to|communicated to)\b)\s*:?\s*"
                        + _NAME + r"(?:[ ,^]+" + _NAME + r")?")),
)
REDACTED = "___"


def scrub_text(text: str, known: Iterable[str] = ()) -> str:
    """Remove PHI from report text: the header's own values first (exact, case-insensitive),
    then names after titles/labels, dates, times, IDs, phone numbers, e-mails, addresses."""
    for value in sorted({k for k in known if k and len(k.strip()) >= 2}, key=len, reverse=True):
        text = re.sub(r"(?<![A-Za-z0-9])" + re.escape(value.strip()) + r"(?![A-Za-z0-9])", REDACTED, text,
                      flags=re.IGNORECASE)
    for _, pattern in SCRUB_PATTERNS:
        text = pattern.sub(REDACTED, text)
    return text


# -- layouts ---------------------------------------------------------------------------------
def read_text_report(path: str | Path) -> str:
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise MedicalDataError(path, f"report unreadable ({type(exc).__name__})") from None


def mimic_report_path(dicom_path: Path) -> Path:
    """MIMIC-CXR keeps ``files/pXX/pNNNN/sNNNN.txt`` beside the study folder ``sNNNN/``."""
    study_dir = dicom_path.parent
    return study_dir.parent / f"{study_dir.name}.txt"


def read_openi_xml(path: str | Path) -> dict:
    """One OpenI / IU X-ray report: ``{"text", "images": [parentImage ids]}`` (sections as headings)."""
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as exc:
        raise MedicalDataError(path, f"not a readable OpenI XML report ({type(exc).__name__})") from None
    parts = []
    for node in root.iter("AbstractText"):
        label = (node.get("Label") or "").strip().upper()
        body = " ".join((node.text or "").split())
        if label and body:
            parts.append(f"{label}: {body}")
    images = [img.get("id") for img in root.iter("parentImage") if img.get("id")]
    if not parts:
        raise MedicalDataError(path, "OpenI XML has no AbstractText sections")
    return {"text": "\n".join(parts), "images": images}


MANIFEST_COLUMNS = ("path", "report", "report_path", "study", "accession")


def read_manifest(path: str | Path):
    """A CSV or Parquet manifest: one row per image (``path``), with ``report`` text or ``report_path``,
    optional ``study``/``accession`` join keys, ``split`` and label columns."""
    import pandas as pd

    path = Path(path)
    try:
        df = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as exc:  # noqa: BLE001
        raise MedicalDataError(path, f"manifest unreadable ({type(exc).__name__})") from None
    if "path" not in df.columns and "report" not in df.columns and "report_path" not in df.columns:
        raise MedicalDataError(path, "manifest needs a 'path' column (image) and/or 'report' / 'report_path'")
    return df
