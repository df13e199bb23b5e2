"""Radiology report text: sections, scrubbing, and the layouts reports come in
(MIMIC-CXR ``sNNNN.txt``, OpenI / IU X-ray XML, CSV/Parquet manifests; SR in ``sr.py``).

Hostile text: every pattern here runs in time linear in the text (bounded or possessive
quantifiers, no two quantifiers that can split the same run between them), and a text longer
than ``mmdomain.limits.REPORT_FILE_BYTES`` characters is refused (``MedicalDataError``, logged by
its length only) before any pattern runs, so a 50 MB one-line "report" costs nothing.
"""

from __future__ import annotations

import functools
import logging
import re
import unicodedata
import xml.etree.ElementTree as ET
from array import array
from itertools import accumulate
from pathlib import Path
from typing import Iterable

from mmdomain import limits

from .errors import MedicalDataError
from .facts import DEFAULT_REPORT_SECTIONS, REPORT_SECTIONS

log = logging.getLogger(__name__)


def check_report_length(text: str, path: str | Path | None = None) -> None:
    """Refuse a report text over ``limits.REPORT_FILE_BYTES`` characters (read at call time):
    ``MedicalDataError`` naming ``path`` (when given) and the length, never the text."""
    ceiling = limits.REPORT_FILE_BYTES
    if len(text) > ceiling:
        log.warning("report text of %d characters refused (ceiling %d, mmdomain.limits.REPORT_FILE_BYTES)",
                    len(text), ceiling)
        raise MedicalDataError(path, f"report text of {len(text):,} characters is over the ceiling of "
                                     f"{ceiling:,} (mmdomain.limits.REPORT_FILE_BYTES): refused")


# -- sections -------------------------------------------------------------------------------
_HEADING_TO_SECTION = {h: s for s, hs in REPORT_SECTIONS.items() for h in hs}
_HEADING = re.compile(  # possessive blanks: a 300k-blank line is one pass, not one pass per heading
    r"^[ \t]*+(" + "|".join(sorted((re.escape(h) for h in _HEADING_TO_SECTION), key=len, reverse=True))
    + r")[ \t]*+:", re.IGNORECASE | re.MULTILINE)


def split_sections(text: str, *, path: str | Path | None = None) -> dict[str, str]:
    """``{"indication": ..., "comparison": ..., "findings": ..., "impression": ...}`` (those present).

    Text before the first heading is dropped (MIMIC's "FINAL REPORT" banner); a report
    with no heading at all is treated as findings. A text over the ceiling is refused
    (``check_report_length``; ``path`` names it in the error).
    """
    check_report_length(text, path)
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


# -- scrubbing: the header's own values, after normalisation --------------------------------
REDACTED = "___"
_TOKEN = re.compile(r"[^\W_]+")  # letters and digits, any script
_PIECES = re.compile(r"([^\W\d_]+|\d+)")  # a run of letters or a run of digits: "a87654321" -> a, 87654321
MAX_VALUE_CHARS = 256  # a known value longer than this is cut (DICOM PN / LO values are at most 64 a group)
MAX_GAP = 3  # punctuation / spacing between two pieces of one value ("O'Brien", "123-4567", "March 3, 1961")
MAX_PIECES = 16  # pieces of the text one value may span ("1 2 3 4 5 6 7", "12 Maple Street, Apt 4B")


@functools.lru_cache(maxsize=8192)
def _fold_char(c: str) -> str:
    """Compatibility-decomposed (NFKD), accents dropped, case-folded: "É" -> "e", "ﬁ" -> "fi"."""
    return "".join(ch for ch in unicodedata.normalize("NFKD", c) if not unicodedata.combining(ch)).casefold()


def fold(text: str) -> str:
    """``text`` folded as known values are matched: case, accents and compatibility forms."""
    return text.translate({ord(c): _fold_char(c) for c in set(text)})


def skeleton(value: str) -> str:
    """The letters and digits of ``value``, folded: what matching compares ("O'Brien-Smith" ->
    "obriensmith", "(617) 555-0199" -> "6175550199", "José" -> "jose")."""
    return "".join(_TOKEN.findall(fold(str(value)[:MAX_VALUE_CHARS])))


def _folded_with_map(text: str) -> tuple[str, array | None]:
    """``(folded, where)``: ``where[k]`` is the index in ``text`` of folded character ``k`` (plus
    a sentinel ``len(text)``); ``None`` when folding kept every character one character (the
    usual case: ASCII, and accented letters folded to their base letter)."""
    table = {ord(c): _fold_char(c) for c in set(text)}
    folded = text.translate(table)
    if len(folded) == len(text) and all(len(v) == 1 for v in table.values()):
        return folded, None
    irregular = "".join(chr(o) for o, v in table.items() if len(v) != 1)
    where = array("q")
    pos = 0
    for m in re.finditer("[" + re.escape(irregular) + "]", text):
        i = m.start()
        where.extend(range(pos, i))
        where.extend([i] * len(table[ord(text[i])]))
        pos = i + 1
    where.extend(range(pos, len(text)))
    where.append(len(text))
    return folded, where


@functools.lru_cache(maxsize=1024)
def _known_index(values: tuple[str, ...]) -> tuple[frozenset[str], frozenset[str]]:
    """The skeletons of a study's known values (2+ characters) and every prefix of them."""
    skeletons = frozenset(k for k in map(skeleton, values) if len(k) >= 2)
    return skeletons, frozenset(k[:i] for k in skeletons for i in range(1, len(k) + 1))


def known_spans(text: str, known: Iterable[str]) -> list[tuple[int, int]]:
    """Where in ``text`` a known value stands, after folding case, accents, punctuation and spacing.

    The folded text is cut into pieces (runs of letters, runs of digits); a value matches a run
    of adjacent pieces, at most ``MAX_GAP`` characters of punctuation / spacing apart, whose
    letters and digits are its skeleton: "OBrien-Smith", "O'Brien Smith" and "obrien smith" for
    O'Brien-Smith; "123-4567", "1234 567" for 1234567; "a87654321" for A87654321. A value of under
    four characters must be one piece. A value with a letter must stand alone (no letter or digit
    glued on either side); a digits-only one may touch letters ("MRN1234567"), never digits.
    Leftmost, then longest, match first; linear in the text (at most ``MAX_PIECES`` a start).
    """
    values = tuple(sorted({str(k).strip() for k in known if k and len(str(k).strip()) >= 2}))
    if not values or not text:
        return []
    skeletons, prefixes = _known_index(values)
    if not skeletons:
        return []
    folded, where = _folded_with_map(text)
    parts = _PIECES.split(folded)  # gap, piece, gap, piece, ..., gap
    words, gaps = parts[1::2], [len(g) for g in parts[0::2]]  # gaps[k]: before piece k, gaps[k + 1]: after
    starts = list(accumulate(map(len, parts), initial=0))[1::2]  # piece k begins at starts[k]
    n, spans, last = len(words), [], -1
    for i in [k for k, w in enumerate(words) if w in prefixes]:
        if i <= last:
            continue
        joined, best, j = words[i], -1, i
        while True:
            if joined in skeletons and (j == i or len(joined) >= 4):
                if joined.isdigit() or ((i == 0 or gaps[i]) and (j + 1 == n or gaps[j + 1])):
                    best = j
            if j + 1 >= n or j + 1 - i >= MAX_PIECES or gaps[j + 1] > MAX_GAP:
                break
            longer = joined + words[j + 1]
            if longer not in prefixes:
                break
            joined, j = longer, j + 1
        if best < 0:
            continue
        start, end = starts[i], starts[best] + len(words[best])
        if where is not None:
            start, end = where[start], where[end - 1] + 1
            while end < len(text) and not _fold_char(text[end]):  # a combining mark after the match
                end += 1
        spans.append((start, end))
        last = best
    return spans


def scrub_known(text: str, known: Iterable[str]) -> str:
    """``text`` with every known value (``deid.known_phi``) found by ``known_spans`` replaced by
    ``REDACTED``."""
    return _redact(text, known_spans(text, known))


# -- scrubbing: patterns for what no header holds ---------------------------------------------
# Every quantifier is bounded or possessive, so each pattern is linear in the text. A pattern with
# a group redacts the group only: the label or title stays ("MRN: ___", "Dr. ___").
_MONTHS = (r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|"
           r"sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)\.?")
_ORDINALS = "first|second|third|fourth|fifth|sixth|seventh|eighth|ninth"
_DAY = (r"(?:\d{1,2}(?:st|nd|rd|th)?|(?:twenty|thirty)[ -]?(?:" + _ORDINALS + r")|tenth|eleventh|twelfth|"
        r"thirteenth|fourteenth|fifteenth|sixteenth|seventeenth|eighteenth|nineteenth|twentieth|thirtieth|"
        + _ORDINALS + r")")
_W = r"\s{1,3}"  # a word gap
_ANY_MONTH = re.compile(r"jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec", re.IGNORECASE)  # date_words need one
_LETTER = r"(?:[^\W\d_]|['\u2019\-])"  # a letter of a name (any script), an apostrophe or a hyphen
_NAME = r"[A-Z\u00C0-\u00D6\u00D8-\u00DE]" + _LETTER + r"{1,40}+"  # capitalised
SCRUB_PATTERNS: tuple[tuple[str, re.Pattern], ...] = (
    ("email", re.compile(r"(?<![\w.+-])[\w.+-]{1,64}+@[\w-]{1,63}+(?:\.[\w-]{1,63}+){1,8}\b")),
    ("phone", re.compile(r"(?:\+?1[ .-]?)?(?:\(\d{3}\)|\b\d{3})[ .-]?\d{3}[ .-]\d{4}\b")),
    ("date", re.compile(r"\b\d{1,4}[/.-]\d{1,2}[/.-]\d{1,4}\b")),
    # "March 3, 1961", "March third, 1961", "Mar. 3rd 1961"; "3rd of March 1961", "the third of March, 1961"
    ("date_words", re.compile(r"\b" + _MONTHS + _W + r"(?:the" + _W + r")?" + _DAY + r"\b(?:" + _W + r"of)?,?"
                              + _W + r"\d{2,4}\b", re.IGNORECASE)),
    ("date_words", re.compile(r"\b(?=[\dtfsen])(?:the" + _W + r")?" + _DAY + r"\b(?:" + _W + r"of)?" + _W
                              + _MONTHS + r",?" + _W + r"\d{2,4}\b", re.IGNORECASE)),
    # "March 1961", "March of 1961"; "March 3rd", "March third" ("may" alone is too often a verb)
    ("date_words", re.compile(r"\b" + _MONTHS + r",?" + _W + r"(?:of" + _W + r")?\d{4}\b", re.IGNORECASE)),
    ("date_words", re.compile(r"\b(?!may\b)" + _MONTHS + _W + r"(?:the" + _W + r")?" + _DAY + r"\b", re.IGNORECASE)),
    ("time", re.compile(r"\b\d{1,2}:\d{2}(?::\d{2})?(?:\s{0,2}[ap]\.?m\b\.?)?", re.IGNORECASE)),
    ("id", re.compile(r"\b(?:MRN|MR#|medical record(?: number)?|acc(?:ession)?(?: no\.?| number| #)?|"
                      r"patient id|id)\s{0,8}+[:#]?\s{0,8}+([A-Z-]{0,64}+\d[A-Z0-9-]{0,64}+)", re.IGNORECASE)),
    ("id", re.compile(r"\b[A-Z]{0,4}+\d{6,}+\b", re.IGNORECASE)),  # "A87654321", "a87654321"
    ("address", re.compile(r"\b\d{1,6}" + _W + r"(?:[A-Z][a-z]{1,30}" + _W + r"){1,3}(?:Street|St|Avenue|Ave|"
                           r"Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Way|Place|Pl)\b\.?"
                           r"(?:,?" + _W + r"[A-Z][a-z]{1,30}){0,4}(?:,?" + _W + r"[A-Z]{2})?"
                           r"(?:" + _W + r"\d{5}(?:-\d{4})?)?")),
    # "Apt 4B", "apartment #12", "Suite 200", "Unit B4", "P.O. Box 123"
    ("address", re.compile(r"\b(?:apt|apartment|unit|suite|ste|bldg|building|room|rm|p\.?\s?o\.?\s?box)\b\.?"
                           r"\s{0,3}(?:#|no\.?|number)?\s{0,3}(?:\d{1,5}[a-z]?|[a-z]\d{1,4})\b", re.IGNORECASE)),
    ("zip", re.compile(r"\b[A-Z]{2}" + _W + r"\d{5}(?:-\d{4})?\b")),
    ("name", re.compile(r"\b(?:Dr|Doctor|Mr|Mrs|Ms|Miss|Prof)\.?\s{1,3}+(" + _NAME + r"(?:\s{1,3}+" + _NAME
                        + r")?)")),
    ("name", re.compile(r"(?i:\b(?:patient(?: name)?|name|pt|signed by|dictated by|reviewed by|attending|"
                        r"electronically signed by|discussed with|called to|communicated to)\b)\s*+:?\s*+"
                        + "(" + _NAME + r"(?:[ ,^]++" + _NAME + r")?)")),
)


def scrub_text(text: str, known: Iterable[str] = (), *, path: str | Path | None = None) -> str:
    """Remove PHI from report text: the header's own values (``known_spans``: case, accents,
    punctuation and spacing folded, IDs in any grouping), names after titles/labels, dates (in
    figures or words), times, IDs, phone numbers, e-mails, addresses and their units. Every
    pattern runs on the original text and the union of what they find is replaced, so one
    match never hides a longer one ("21th of May 1970" when the header's "May 1970" is found
    first). A text over the ceiling is refused (``check_report_length``)."""
    check_report_length(text, path)
    spans = known_spans(text, known)
    skip = {label for label, absent in (("email", "@" not in text),
                                        ("date_words", _ANY_MONTH.search(text) is None)) if absent}
    for label, pattern in SCRUB_PATTERNS:
        if label not in skip:  # a pattern whose one required character / word is absent cannot match
            spans.extend(m.span(1 if pattern.groups else 0) for m in pattern.finditer(text))
    return _redact(text, spans)


def _redact(text: str, spans: list[tuple[int, int]]) -> str:
    """``text`` with each union of overlapping or touching ``spans`` replaced by one ``REDACTED``."""
    merged: list[list[int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        elif end > start:
            merged.append([start, end])
    out, last = [], 0
    for start, end in merged:
        out += [text[last:start], REDACTED]
        last = end
    return "".join(out) + text[last:]


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
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(path)
            # invalid UTF-8 in a string column: found here, not at a cell's first use (issue #17 fuzzing)
            table.validate(full=True)
            df = table.to_pandas()
        else:
            df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as exc:  # noqa: BLE001
        raise MedicalDataError(path, f"manifest unreadable ({type(exc).__name__})") from None
    if "path" not in df.columns and "report" not in df.columns and "report_path" not in df.columns:
        raise MedicalDataError(path, "manifest needs a 'path' column (image) and/or 'report' / 'report_path'")
    return df
