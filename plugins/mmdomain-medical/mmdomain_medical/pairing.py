"""Pair images with reports in a folder tree: one record (``Study``) per study.

Joins, in order: MIMIC-CXR folders (``sNNNN/`` + ``sNNNN.txt``), DICOM SR files by
StudyInstanceUID (then AccessionNumber), OpenI XML by ``<parentImage id>`` = image file
stem. Records hold paths and internal join keys; what leaves (``manifest_rows``) names
the study only by keyed pseudonym. Where the index reads a header (loose DICOM files, to
join them), it keeps the first image's as a ``DicomHeader`` record, so that nothing reads
that header again.

Hostile trees: nothing outside the root is read (``within_root``, the one check for symlinks
here and for a manifest's paths in the dataset: resolve, then require the root); FIFOs,
devices and sockets are never opened; a report file is size-checked before it is parsed
(``check_report_file``); a file whose header cannot be read or declares an image past the
ceilings (``dicom_pixels.check_pixel_budget``) is skipped. Skipped files are listed in
``index_tree.errors`` (named by pseudonym, ``errors.shown``), and the rest of the tree loads.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset

from mmdomain import limits
from mmdomain.data.files import inside_root

from .deid import DEFAULT_KEY, pseudonym
from .dicom_header import DicomHeader, header_facts, header_record
from .dicom_parse import parse_header, quiet_validation, read_regular, regular_file
from .dicom_pixels import check_pixel_budget
from .errors import MedicalDataError, library_failure, site_naming
from .facts import DICOM_SUFFIXES, NATIVE_LITTLE_ENDIAN
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


def within_root(root: Path, path: str | Path) -> Path:
    """``path`` (relative to ``root``, or absolute) as ``root / path``, if it resolves inside
    ``root`` once ``..`` and every symlink are resolved (``mmdomain.data.files.inside_root``);
    ``MedicalDataError`` otherwise (a manifest's ``../../etc/passwd``, an absolute path
    elsewhere, a symlink out of the tree)."""
    p = Path(path)
    full = p if p.is_absolute() else root / p
    inside_root(full, root, error=MedicalDataError)
    return full


_REPORT_LIMITS = {"txt": "REPORT_FILE_BYTES", "xml": "REPORT_XML_BYTES", "sr": "SR_FILE_BYTES"}


def check_report_file(path: Path, kind: str) -> None:
    """Refuse, before it is parsed, a report file that is not a regular file, is larger than its
    ceiling (``limits.REPORT_FILE_BYTES``, ``REPORT_XML_BYTES``, ``SR_FILE_BYTES``), or, for XML,
    holds more markup than ``limits.REPORT_XML_NODES`` or declares entities."""
    limit = _REPORT_LIMITS.get(kind, "REPORT_FILE_BYTES")
    if kind != "xml":
        regular_file(path, limit)
        return
    data = read_regular(path, limit)
    if data.count(b"<") > limits.REPORT_XML_NODES:
        raise MedicalDataError(path, f"XML report with more than {limits.REPORT_XML_NODES:,} elements "
                                     "(mmdomain.limits.REPORT_XML_NODES): refused before parsing")
    if b"<!ENTITY" in data:
        raise MedicalDataError(path, "XML report declares entities: refused before parsing")


def _entry(root: Path, p: Path, errors: list[str]) -> bool:
    """Whether ``p``, met walking the tree, is a regular file inside the root to index; a symlink
    out of the root, or a FIFO / device / socket with a name the index reads, is listed in
    ``errors``; folders and other names are passed over."""
    try:
        st = os.lstat(p)
        if stat.S_ISLNK(st.st_mode):
            within_root(root, p)
            st = os.stat(p)
    except MedicalDataError as exc:
        errors.append(str(exc))
        return False
    except OSError:  # a dangling symlink, a file gone meanwhile
        if _is_dicom_name(p) or p.suffix.lower() in (".txt", ".xml"):
            errors.append(str(MedicalDataError(p, "no such file (a dangling symlink?)")))
        return False
    if stat.S_ISREG(st.st_mode):
        return True
    if not stat.S_ISDIR(st.st_mode) and (_is_dicom_name(p) or p.suffix.lower() in (".txt", ".xml")):
        try:
            regular_file(p)
        except MedicalDataError as exc:
            errors.append(str(exc))
    return False


def index_tree(root: str | Path, *, read_headers: bool = True, keep_headers: bool = True,
               key: str = DEFAULT_KEY) -> list[Study]:
    """Every study under ``root``; unreadable or refused files are skipped (``errors`` on the
    function, naming files by pseudonym under ``key``). ``keep_headers``: keep the headers read
    (for a dataset; a manifest does not need them)."""
    root = Path(root)
    if not root.is_dir():
        raise MedicalDataError(root, "not a folder")
    errors: list[str] = []
    index_tree.errors = errors  # type: ignore[attr-defined]
    with site_naming(root, key):
        return _index(root, errors, read_headers, keep_headers)


def _index(root: Path, errors: list[str], read_headers: bool, keep_headers: bool) -> list[Study]:
    studies: dict[str, Study] = {}
    loose: list[Path] = []
    xmls: list[Path] = []
    for p in sorted(root.rglob("*")):
        if not _entry(root, p, errors):
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
        try:  # everything that reads the header first, then the records: a bad file changes nothing
            with quiet_validation():  # pydicom's warnings on converting a value quote it (PHI)
                ds, offset = parse_header(p)
                uid = str(ds.get("StudyInstanceUID", "") or "") or f"file:{p}"
                acc = str(ds.get("AccessionNumber", "") or "")
                sr = is_sr(ds)
                if not sr:
                    _check_image(p, ds, offset)
                    first = keep_headers and not (uid in studies and studies[uid].images)
                    record = header_record(p, ds, offset) if first else None  # raises: the file is skipped
        except MedicalDataError as exc:
            errors.append(str(exc))
            continue
        except Exception as exc:  # noqa: BLE001 - e.g. pydicom's NotImplementedError for an unknown VR
            errors.append(str(library_failure(p, "DICOM header parse", exc)))
            continue
        if sr:
            pending_sr.append((p, uid, acc))
            continue
        st = studies.setdefault(uid, Study(uid, subject=uid))
        if first:  # files come in path order: this is the study's first image
            st.header = record
        st.images.append(p)
        if acc:
            by_accession[acc] = uid
    for p, uid, acc in pending_sr:
        key = uid if uid in studies else by_accession.get(acc, uid)
        st = studies.setdefault(key, Study(key, subject=key))
        if st.report is None:
            st.report, st.report_kind = p, "sr"


def _check_image(path: Path, ds: Dataset, offset: int) -> None:
    """A file that is not an image, or whose header declares more than the ceilings allow or
    (uncompressed) more pixel bytes than the file holds, is refused here, at index time
    (``check_pixel_budget``), as the reader would refuse it."""
    facts = header_facts(ds)
    if not facts["Rows"] or not facts["Columns"]:  # the reader refuses it too
        raise MedicalDataError(path, "not an image (no Rows / Columns) and not a structured report")
    present = None
    if offset >= 0 and facts["TransferSyntaxUID"] in NATIVE_LITTLE_ENDIAN:
        present = path.stat().st_size - offset  # at most: the element's own header is in it
    check_pixel_budget(path, facts, present)


def _join_openi(xmls: list[Path], studies: dict[str, Study], errors: list[str]) -> None:
    """OpenI XML reports by ``<parentImage id>`` = an image's file stem."""
    by_stem = {img.stem: st for st in studies.values() for img in st.images}
    for x in xmls:
        try:
            check_report_file(x, "xml")
            ids = read_openi_xml(x)["images"]
        except MedicalDataError as exc:
            errors.append(str(exc))
            continue
        except Exception as exc:  # noqa: BLE001
            errors.append(str(library_failure(x, "XML report parse", exc)))
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
