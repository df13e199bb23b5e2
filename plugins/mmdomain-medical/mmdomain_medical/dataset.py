"""``MedicalDataset``: one Sample per study: ``dicom_image`` (``[1, S, S]`` in [0, 1]) and
``report`` (the chosen sections of the scrubbed report text), either may be missing.

Reads a MIMIC-CXR-like tree (``files/...`` + ``labels.csv``), any folder of DICOM with SR /
OpenI XML reports, or a ``manifest.csv`` / ``manifest.parquet`` (columns ``path``,
``report`` or ``report_path``, optional ``study``, ``split`` and label columns). Without label
columns, labels come from the site's label file (``labels.find_label_file``; ``label_file=``
names another), which may be ``labels-from-reports.csv`` (``mmdomain medical label``).
The studies are the index's typed ``pairing.Study`` records, split by patient with the core's
``split_of``. Each study's first image header is read once into a ``DicomHeader``: by the
index (loose DICOM) or on first use (MIMIC layout, manifests). That one read serves the
sample's meta, the PHI values scrubbed from the report, and the image decode. Report text is
scrubbed (regex + the study header's own PHI values) before a section is selected.

``available(i)`` (the core's availability protocol) answers from the index, without decoding
the image or scrubbing the report. The image is there if the study has one. The report is
there if its unscrubbed text has one of the chosen sections; the sections are recorded on
the study when its report is first read. ``ds[i]`` applies the same rule, so the two agree.
If scrubbing ever removes a heading that the unscrubbed text has (a PHI value spelled like a
heading), the sample still gets the report: the chosen sections, scrubbed on their own.

What can leave the loader (the contract ``tests/test_deid_phi.py`` checks): pixels (after
the BurnedInAnnotation refuse/warn policy), the scrubbed text of the chosen sections, and
``Sample.meta`` built from a whitelist of acquisition facts (modality, manufacturer,
photometric, spacing, view, bits, transfer syntax) plus keyed pseudonyms; no header value
outside that whitelist, no path of a study, no UID. Errors, warnings and log messages name the
file by a keyed pseudonym of its path under the root (``errors.shown``: file names carry
patient names and MRNs; ``mmdomain medical locate`` maps one back, on the site) and the reason,
never a header value or report text.

Hostile input: no file outside the root is read (``pairing.within_root``: a manifest's paths,
symlinks in the tree), no FIFO or device is opened, reports are size-checked before they are
parsed, and image sizes are bounded before anything is decoded (``mmdomain.limits.DICOM_*``).
A file the index cannot read or refuses is skipped and listed in ``skipped`` (logged once,
with a count); the rest of the folder loads. A file that fails only when decoded raises
``MedicalDataError`` from ``ds[i]``.

Limits of the text scrubbing (documented, not solved):
- report-only studies get the PHI of the same patient's other studies in this dataset
  (MIMIC layout: the subject folder) plus the patterns; a report-only patient with no
  image anywhere is scrubbed by patterns only, so an untitled bare name ("seen with
  Smith") can survive;
- names of third parties never present in any header (family, other staff) are removed
  only after a title or label ("Dr.", "discussed with", "signed by"...);
- free-text dates/ages in unusual formats and rare identifiers (device serials in prose)
  may survive; pixels are not OCR-scrubbed (BurnedInAnnotation is trusted).
"""

from __future__ import annotations

import functools
import logging
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar

import torch

from mmdomain import Sample, limits
from mmdomain.data import availability_pattern, split_of

from .cache import TensorCache
from .deid import DEFAULT_KEY, pseudonym
from .dicom_header import DicomHeader, read_header_record, safe_meta
from .dicom_read import image_tensor
from .errors import MedicalDataError, shown, site_naming
from .facts import CHEXPERT_LABELS, DEFAULT_REPORT_SECTIONS
from .labels import encode, find_label_file, read_label_file
from .pairing import Study, check_report_file, index_tree, within_root
from .reports import read_manifest, read_openi_xml, read_text_report, scrub_text, select_sections, split_sections
from .sr import read_sr

SPLITS = ("train", "val", "test", "all")
IMAGE, TEXT = "dicom_image", "report"
log = logging.getLogger(__name__)
_META_KEYS = ("modality", "manufacturer", "photometric", "pixel_spacing", "view_position", "bits_stored",
              "transfer_syntax")
_SHOWN_SKIPPED = 5  # skipped files named in the log message
_F = TypeVar("_F", bound=Callable[..., Any])


def _named(method: _F) -> _F:
    """Run a method that reads the site's files with files named by pseudonym (``errors.site_naming``)."""
    @functools.wraps(method)
    def wrapper(self: MedicalDataset, *args: Any, **kwargs: Any) -> Any:
        with site_naming(self.root, self.key):
            return method(self, *args, **kwargs)
    return wrapper  # type: ignore[return-value]


class MedicalDataset(torch.utils.data.Dataset):
    def __init__(self, root: str | Path, split: str = "train", *, report_sections: Iterable[str] = DEFAULT_REPORT_SECTIONS,
                 uncertain: str = "ignore", blank: str = "zeros", image_size: int = 128, window: Any = None,
                 cache: str | None = "memory", cache_dir: str | Path | None = None, burned_in: str = "refuse",
                 deid_key: str = DEFAULT_KEY, labels: tuple[str, ...] | list[str] = CHEXPERT_LABELS,
                 label_file: str | Path | None = None):
        self.root = Path(root)
        if split not in SPLITS:
            raise MedicalDataError(None, f"split must be one of {SPLITS}, got {split!r}")
        if not self.root.is_dir():
            raise MedicalDataError(self.root, "dataset root is not a folder")
        self.split = split
        self.report_sections = tuple(report_sections)
        select_sections("", self.report_sections)  # validates the names
        encode({}, tuple(labels), uncertain, blank)  # validates the policies
        self.uncertain, self.blank, self.labels = uncertain, blank, tuple(labels)
        self.image_size, self.window, self.key, self.burned_in = image_size, window, deid_key, burned_in
        self.cache = TensorCache(cache, cache_dir)
        self.site = self.root.name
        self._image_meta: dict[int, dict[str, Any]] = {}  # safe_meta of each study's first image
        self._reports: dict[int, str | None] = {}  # scrubbed text only
        self.label_file = label_file  # None: the site's own (labels.find_label_file); else absolute or under root
        self.label_table: dict[str, dict[str, str]] = {}
        self.skipped: list[str] = []  # files the index skipped: "<pseudonym>: <reason>"
        self.studies: list[Study] = [s for s in self._index() if split == "all" or s.split == split]
        if self.skipped:
            log.warning("medical dataset %r: %d file(s) skipped (unreadable or refused), the rest loaded: %s%s",
                        self.site, len(self.skipped), "; ".join(self.skipped[:_SHOWN_SKIPPED]),
                        " ..." if len(self.skipped) > _SHOWN_SKIPPED else "")
        self._by_subject: dict[str, list[int]] = {}
        for i, st in enumerate(self.studies):
            if st.subject:
                self._by_subject.setdefault(st.subject, []).append(i)

    # -- index ------------------------------------------------------------------------------
    @_named
    def _index(self) -> list[Study]:
        for name in ("manifest.parquet", "manifest.csv"):
            if (self.root / name).is_file():
                return self._attach_labels(self._from_manifest(self.root / name))
        studies = index_tree(self.root, key=self.key)
        self.skipped.extend(getattr(index_tree, "errors", []))
        if not studies:
            raise MedicalDataError(self.root, "no DICOM image or report found under this folder")
        for st in studies:
            st.split = split_of(st.subject)
        return self._attach_labels(studies)

    def _attach_labels(self, studies: list[Study]) -> list[Study]:
        """Label values for the studies that have none yet (a manifest's label columns come first):
        from the label file, by MIMIC ``study_id`` or by the study pseudonym (``labels-from-reports.csv``)."""
        if all(st.values is not None for st in studies):
            return studies
        path = self._label_path()
        if path is None:
            return studies
        self.label_table = read_label_file(path)
        matched = 0
        for st in studies:
            if st.values is None:
                st.values = self.label_table.get(st.label_key) if st.label_key else None
            if st.values is None:
                st.values = self.label_table.get(pseudonym(st.key, self.key, "st-"))
            matched += st.values is not None
        if self.label_table and not matched:
            log.warning("%s: no study of %r is in this label file (another site's, or written with another "
                        "de-identification key?)", shown(path), self.site)
        return studies

    def _label_path(self) -> Path | None:
        if self.label_file is None:
            return find_label_file(self.root)
        path = Path(self.label_file)
        path = path if path.is_absolute() else self.root / path
        if not path.is_file():
            raise MedicalDataError(path, "label file not found")
        return path

    def _from_manifest(self, path: Path) -> list[Study]:
        """Studies from a manifest's rows. A path that resolves outside the root and a report text
        over ``limits.REPORT_FILE_BYTES`` are refused and listed in ``skipped``; a study left with
        neither image nor report by that is dropped."""
        df = read_manifest(path)
        groups: dict[str, Study] = {}
        refused: set[str] = set()

        def inside(row: int, column: str, value: Any) -> Path | None:
            try:
                return within_root(self.root, str(value))
            except MedicalDataError as exc:
                self.skipped.append(f"{shown(path)}: row {row}, {column}: {exc}")
                return None

        for i, r in enumerate(df.to_dict("records")):
            row = i + 2  # the line in the file, after its header
            key = str(r.get("study") or r.get("accession") or r.get("path") or f"row{i}")
            st = groups.get(key)
            if st is None:
                values = {n: str(r.get(n, "") or "") for n in self.labels} if any(n in r for n in self.labels) else None
                st = groups[key] = Study(key, split=str(r.get("split") or "") or split_of(key), values=values)
            if r.get("path"):
                image = inside(row, "path", r["path"])
                if image is None:
                    refused.add(key)
                else:
                    st.images.append(image)
            if r.get("report"):
                text = str(r["report"])
                if len(text) > limits.REPORT_FILE_BYTES:
                    self.skipped.append(f"{shown(path)}: row {row}, report: {len(text):,} characters, over the "
                                        f"ceiling of {limits.REPORT_FILE_BYTES:,} (mmdomain.limits.REPORT_FILE_BYTES)")
                    refused.add(key)
                else:
                    st.report_text = text
            elif r.get("report_path"):
                report = inside(row, "report_path", r["report_path"])
                if report is None:
                    refused.add(key)
                else:
                    st.report = report
                    st.report_kind = str(r.get("report_kind") or "") or _kind_of(st.report)
        return [groups[k] for k in sorted(groups)
                if k not in refused or groups[k].images or groups[k].report or groups[k].report_text is not None]

    # -- per study ---------------------------------------------------------------------------
    @_named
    def header(self, i: int) -> DicomHeader | None:
        """The header of study ``i``'s first image (None without one), read once: by the index,
        else here on first use."""
        st = self.studies[i]
        if st.header is None and st.images:
            st.header = read_header_record(st.images[0])
        return st.header

    @_named
    def image_meta(self, i: int) -> dict[str, Any]:
        """The PHI-free meta of study ``i``'s first image (``{}`` without one)."""
        if i not in self._image_meta:
            header = self.header(i)
            self._image_meta[i] = safe_meta(header.facts, self.key) if header is not None else {}
        return self._image_meta[i]

    def _phi(self, i: int) -> tuple[str, ...]:
        """The PHI values to scrub from study ``i``'s report: its image header's; for a report-only
        study, those of the same patient's other studies in this dataset."""
        header = self.header(i)
        if header is not None:
            return header.phi
        found: set[str] = set()
        for j in self._by_subject.get(self.studies[i].subject, []):
            if j != i and self.studies[j].images:
                found.update(self._phi(j))
        return tuple(sorted(found, key=len, reverse=True))

    @_named
    def _report_source(self, i: int) -> str | None:
        """The unscrubbed text of study ``i``'s report, or None; it never leaves this class."""
        st = self.studies[i]
        if st.report_text is not None:
            return st.report_text
        if st.report is None:
            return None
        check_report_file(st.report, st.report_kind)
        if st.report_kind == "sr":
            return read_sr(st.report)
        if st.report_kind == "xml":
            return read_openi_xml(st.report)["text"]
        return read_text_report(st.report)

    def _sections(self, i: int, text: str | None = None) -> frozenset[str]:
        """The sections of study ``i``'s unscrubbed report (``text`` if just read), recorded on the
        study; none without a report or when it cannot be read."""
        st = self.studies[i]
        if st.sections is None:
            if text is None:
                try:
                    text = self._report_source(i)
                except MedicalDataError:  # ds[i] names the failure
                    text = None
            st.sections = frozenset(split_sections(text)) if text is not None else frozenset()
        return st.sections

    def _has_report(self, i: int) -> bool:
        """The one rule for the report modality: one of the chosen sections is in the report."""
        sections = self._sections(i)
        return any(s in sections for s in self.report_sections)

    def available(self, i: int) -> frozenset[str]:
        """The modalities ``self[i]`` has, from the index: nothing decoded, resized or scrubbed."""
        has_image = bool(self.studies[i].images)
        return frozenset(m for m, present in ((IMAGE, has_image), (TEXT, self._has_report(i))) if present)

    @_named
    def raw_report(self, i: int) -> str | None:
        """The scrubbed full report text of study ``i`` (all sections), or None."""
        if self.cache.kind is not None and i in self._reports:
            return self._reports[i]
        text = self._report_source(i)
        if text is not None:
            self._sections(i, text)
            text = scrub_text(text, self._phi(i))
        if self.cache.kind is not None:
            self._reports[i] = text
        return text

    def _report_input(self, i: int, report: str) -> str:
        chosen = select_sections(report, self.report_sections)
        if not chosen:  # scrubbing removed a heading the unscrubbed text has: scrub the chosen sections alone
            chosen = scrub_text(select_sections(self._report_source(i) or "", self.report_sections), self._phi(i))
        return chosen

    def text_group(self, i: int) -> str:
        """Study ``i``'s patient, by keyed pseudonym (the key of the patient-level split): fitted
        vocabularies keep only tokens of ``min_groups`` patients (``training.texts_for_fitting``)."""
        st = self.studies[i]
        return pseudonym(st.subject or st.key, self.key, "pt-")

    def sample_meta(self, i: int) -> dict[str, Any]:
        st = self.studies[i]
        meta = {"id": pseudonym(st.key, self.key, "st-"), "site": self.site, "split": st.split}
        image_meta = self.image_meta(i)
        for k in _META_KEYS:
            if k in image_meta:
                meta[k] = image_meta[k]
        return meta

    def target(self, i: int) -> torch.Tensor:
        values = self.studies[i].values
        if values is None:
            return torch.full((len(self.labels),), -1, dtype=torch.long)
        return encode(values, self.labels, self.uncertain, self.blank)

    def __len__(self) -> int:
        return len(self.studies)

    @_named
    def _image(self, i: int) -> torch.Tensor:
        path = self.studies[i].images[0]
        opts = f"{self.image_size}|{self.window}|{self.burned_in}"
        return self.cache.get(path, opts, lambda: image_tensor(
            path, size=self.image_size, window=self.window, key=self.key, burned_in=self.burned_in,
            header=self.header(i)))

    @_named
    def __getitem__(self, i: int) -> Sample:
        inputs: dict[str, Any] = {}
        if self.studies[i].images:
            inputs[IMAGE] = self._image(i)
        report = self.raw_report(i)
        if report is not None and self._has_report(i):
            inputs[TEXT] = self._report_input(i, report)
        return Sample(inputs, self.target(i), self.sample_meta(i))


def _kind_of(path: Path) -> str:
    return {".xml": "xml", ".dcm": "sr"}.get(path.suffix.lower(), "txt")


def describe(dataset: MedicalDataset) -> dict[str, Any]:
    """Aggregate, identifier-free statistics of a built dataset."""
    patterns, present, modality, vendor, photometric, syntax, sections = (Counter() for _ in range(7))
    unreadable = 0
    for i, st in enumerate(dataset.studies):
        if st.images:
            try:
                meta = dataset.image_meta(i)
            except MedicalDataError:
                unreadable += 1
                meta = {}
            modality[meta.get("modality") or "?"] += 1
            vendor[meta.get("manufacturer") or "?"] += 1
            photometric[meta.get("photometric") or "?"] += 1
            syntax[meta.get("transfer_syntax") or "?"] += 1
        try:
            text = dataset.raw_report(i)
        except MedicalDataError:
            text = None
        if text is not None:
            sections.update(split_sections(text).keys())
        has = dataset.available(i)
        present.update(has)
        patterns[availability_pattern(has)] += 1
    n = len(dataset)
    return {
        "studies": n, "split": dataset.split,
        "by_pattern": dict(sorted(patterns.items())),
        "by_modality": {IMAGE: present[IMAGE], TEXT: present[TEXT]},
        "dicom_modality": dict(sorted(modality.items())), "manufacturer": dict(sorted(vendor.items())),
        "photometric": dict(sorted(photometric.items())), "transfer_syntax": dict(sorted(syntax.items())),
        "report_section_coverage": {s: round(c / n, 3) for s, c in sorted(sections.items())} if n else {},
        "report_sections_used": list(dataset.report_sections),
        "unreadable_images": unreadable, "skipped_files": len(dataset.skipped),
    }
