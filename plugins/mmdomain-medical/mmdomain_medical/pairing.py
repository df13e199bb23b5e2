"""Pair images with reports in a folder tree: one record (``Study``) per study.

Joins, in order: MIMIC-CXR folders (``sNNNN/`` + ``sNNNN.txt``), DICOM SR files by
StudyInstanceUID (then AccessionNumber), OpenI XML by ``<parentImage id>`` = image file
stem. Records hold paths and internal join keys; what leaves (``manifest_rows``) names
the study only by keyed pseudonym. Where the index reads a header (loose DICOM files, to
join them), it keeps the first image's as a ``DicomHeader`` record, so that nothing reads
that header again.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset

from .deid import DEFAULT_KEY, pseudonym
from .dicom_header import DicomHeader, header_record
from .dicom_parse import parse_header
from .errors import MedicalDataError
from .facts import DICOM_SUFFIXES
from .reports import read_openi_xml
from .sr import is_sr

_MIMIC_STUDY = re.compile(r"^s\d+$")
_MIMIC_SUBJECT = re.compile(r"^p\d+$")


@dataclass
class Study:
    key: str  # internal join key (MIMIC study folder, or study UID); never exported raw
    images: list[Path] = field(default_factory=list)  # in path order
    report: Path | None = None
    report_kind: str = ""  # txt | sr | xml
    subject: str = ""  # MIMIC subject folder (for patient-level splits), else the study key
    label_key: str = ""  # MIMIC study_id number
    report_text: str | None = None  # a manifest's report column (unscrubbed)
    split: str = ""  # train | val | test (set by the dataset)
    values: dict[str, str] | None = None  # raw label values by label name, if the study has labels
    header: DicomHeader | None = None  # of images[0], read once: by the index, else on first use
    sections: frozenset[str] | None = None  # the sections of the unscrubbed report, once it was read


def _is_dicom_name(p: Path) -> bool:
    return p.suffix.lower() in DICOM_SUFFIXES


def _record(path: Path, ds: Dataset, offset: int) -> DicomHeader | None:
    try:
        return header_record(path, ds, offset)
    except MedicalDataError:  # the dataset reads it again when it needs it, and then names the failure
        return None


def index_tree(root: str | Path, *, read_headers: bool = True, keep_headers: bool = True) -> list[Study]:
    """Every study under ``root``; unreadable files are skipped (``errors`` on the function).
    ``keep_headers``: keep the headers read (for a dataset; a manifest does not need them)."""
    root = Path(root)
    if not root.is_dir():
        raise MedicalDataError(root, "not a folder")
    studies: dict[str, Study] = {}
    errors: list[str] = []
    index_tree.errors = errors  # type: ignore[attr-defined]
    loose: list[Path] = []
    xmls: list[Path] = []
    for p in sorted(root.rglob("*")):
        if not p.is_file():
            continue
        if _is_dicom_name(p) and _MIMIC_STUDY.match(p.parent.name) and _MIMIC_SUBJECT.match(p.parent.parent.name):
            st = studies.setdefault(p.parent.name, Study(p.parent.name, subject=p.parent.parent.name,
                                                         label_key=p.parent.name[1:]))
            st.images.append(p)
        elif p.suffix == ".txt" and _MIMIC_STUDY.match(p.stem) and _MIMIC_SUBJECT.match(p.parent.name):
            st = studies.setdefault(p.stem, Study(p.stem, subject=p.parent.name, label_key=p.stem[1:]))
            st.report, st.report_kind = p, "txt"
        elif p.suffix.lower() == ".xml":
            xmls.append(p)
        elif _is_dicom_name(p):
            loose.append(p)
    if loose and read_headers:
        _join_dicom(loose, studies, errors, keep_headers)
    if xmls:
        _join_openi(xmls, studies, errors)
    return [studies[k] for k in sorted(studies)]


def _join_dicom(loose: list[Path], studies: dict[str, Study], errors: list[str], keep_headers: bool) -> None:
    """Images by StudyInstanceUID, then SR reports by the same UID, else by AccessionNumber."""
    by_accession: dict[str, str] = {}
    pending_sr = []
    for p in loose:
        try:
            ds, offset = parse_header(p)
        except MedicalDataError as exc:
            errors.append(str(exc))
            continue
        uid = str(ds.get("StudyInstanceUID", "") or "") or f"file:{p}"
        acc = str(ds.get("AccessionNumber", "") or "")
        if is_sr(ds):
            pending_sr.append((p, uid, acc))
            continue
        st = studies.setdefault(uid, Study(uid, subject=uid))
        if keep_headers and not st.images:  # files come in path order: this is the study's first image
            st.header = _record(p, ds, offset)
        st.images.append(p)
        if acc:
            by_accession[acc] = uid
    for p, uid, acc in pending_sr:
        key = uid if uid in studies else by_accession.get(acc, uid)
        st = studies.setdefault(key, Study(key, subject=key))
        if st.report is None:
            st.report, st.report_kind = p, "sr"


def _join_openi(xmls: list[Path], studies: dict[str, Study], errors: list[str]) -> None:
    """OpenI XML reports by ``<parentImage id>`` = an image's file stem."""
    by_stem = {img.stem: st for st in studies.values() for img in st.images}
    for x in xmls:
        try:
            ids = read_openi_xml(x)["images"]
        except MedicalDataError as exc:
            errors.append(str(exc))
            continue
        st = next((by_stem[i] for i in ids if i in by_stem), None)
        if st is None:
            st = studies.setdefault(f"xml:{x}", Study(f"xml:{x}", subject=f"xml:{x}"))
        if st.report is None:
            st.report, st.report_kind = x, "xml"


def manifest_rows(root: str | Path, studies: list[Study], key: str = DEFAULT_KEY) -> list[dict[str, str]]:
    """One row per image (or per report-only study): path, report_path, report_kind, study pseudonym."""
    root = Path(root)
    rows = []
    for st in studies:
        rel_report = str(st.report.relative_to(root)) if st.report else ""
        study = pseudonym(st.key, key, "st-")
        subject = pseudonym(st.subject, key, "pt-")
        for img in st.images or [None]:
            rows.append({"path": str(img.relative_to(root)) if img else "", "report_path": rel_report,
                         "report_kind": st.report_kind, "study": study, "subject": subject,
                         "label_key": st.label_key})
    return rows
