"""``MedicalDataset``: one Sample per study: ``dicom_image`` (``[1, S, S]`` in [0, 1]) and
``report`` (the chosen sections of the scrubbed report text), either may be missing.

Reads a MIMIC-CXR-like tree (``files/...`` + ``labels.csv``), any folder of DICOM with SR /
OpenI XML reports, or a ``manifest.csv`` / ``manifest.parquet`` (columns ``path``,
``report`` or ``report_path``, optional ``study``, ``split`` and label columns).
Headers are read through the de-identifying reader; report text is scrubbed (regex +
the study header's own PHI values) before a section is selected.

What can leave the loader (the contract ``tests/test_deid_phi.py`` checks): pixels (after
the BurnedInAnnotation refuse/warn policy), the scrubbed text of the chosen sections, and
``Sample.meta`` built from a whitelist of acquisition facts (modality, manufacturer,
photometric, spacing, view, bits, transfer syntax) plus keyed pseudonyms; no header value
outside that whitelist, no path of a study, no UID. Errors name the file and the reason,
never a header value or report text.

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

import hashlib
import logging
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from monai.transforms import Resize

from mmdomain import Sample

from .cache import TensorCache
from .deid import DEFAULT_KEY, known_phi, pseudonym
from .dicom_read import normalise, read_dicom, read_header, safe_meta
from .errors import MedicalDataError
from .facts import CHEXPERT_LABELS, DEFAULT_REPORT_SECTIONS
from .labels import encode, read_label_file
from .pairing import Study, index_tree
from .reports import read_openi_xml, read_text_report, scrub_text, select_sections, split_sections
from .sr import read_sr

log = logging.getLogger(__name__)
SPLITS = ("train", "val", "test", "all")
IMAGE, TEXT = "dicom_image", "report"


def split_of(subject: str, fractions: tuple[float, float] = (0.7, 0.15)) -> str:
    """Deterministic patient-level split from a hash of the subject key."""
    u = int(hashlib.sha256(subject.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "train" if u < fractions[0] else "val" if u < fractions[0] + fractions[1] else "test"


def image_tensor(path: Path, *, size: int, window: Any, key: str, burned_in: str) -> torch.Tensor:
    """Decode, normalise to [0, 1], take one greyscale frame, resize to ``[1, size, size]``."""
    img = read_dicom(path, window=window, key=key, burned_in=burned_in)
    x = normalise(img)
    if x.ndim == 4:  # CFHW: the middle frame
        x = x[:, x.shape[1] // 2]
    if x.shape[0] != 1:  # colour -> grey
        x = x.mean(0, keepdims=True)
    t = torch.from_numpy(np.ascontiguousarray(x))
    if tuple(t.shape[1:]) != (size, size):
        t = Resize((size, size), mode="area")(t)
        t = t.as_tensor() if hasattr(t, "as_tensor") else t
    return t.float().contiguous()


class MedicalDataset(torch.utils.data.Dataset):
    def __init__(self, root: str | Path, split: str = "train", *, report_sections: Iterable[str] = DEFAULT_REPORT_SECTIONS,
                 uncertain: str = "ignore", blank: str = "zeros", image_size: int = 128, window: Any = None,
                 cache: str | None = "memory", cache_dir: str | Path | None = None, burned_in: str = "refuse",
                 deid_key: str = DEFAULT_KEY, labels: tuple[str, ...] | list[str] = CHEXPERT_LABELS):
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
        self._header: dict[int, tuple[dict, list[str]]] = {}
        self._reports: dict[int, str | None] = {}  # scrubbed text only
        self.label_table: dict[str, dict[str, str]] = {}
        self.studies = self._index()
        self.studies = [s for s in self.studies if split == "all" or s.get("split") == split]
        self._by_subject: dict[str, list[int]] = {}
        for i, st in enumerate(self.studies):
            if st.get("subject"):
                self._by_subject.setdefault(st["subject"], []).append(i)

    # -- index ------------------------------------------------------------------------------
    def _index(self) -> list[dict]:
        for name in ("manifest.parquet", "manifest.csv"):
            if (self.root / name).is_file():
                return self._from_manifest(self.root / name)
        label_files = sorted(self.root.glob("labels.csv")) + sorted(self.root.glob("*chexpert*.csv"))
        if label_files:
            self.label_table = read_label_file(label_files[0])
        out = []
        for st in index_tree(self.root):
            out.append({"images": sorted(st.images), "report": st.report, "report_kind": st.report_kind,
                        "report_text": None, "key": st.key, "subject": st.subject, "split": split_of(st.subject),
                        "values": self.label_table.get(st.label_key) if st.label_key else None})
        if not out:
            raise MedicalDataError(self.root, "no DICOM image or report found under this folder")
        return out

    def _from_manifest(self, path: Path) -> list[dict]:
        from .reports import read_manifest

        df = read_manifest(path)
        groups: dict[str, dict] = {}
        for i, r in enumerate(df.to_dict("records")):
            key = str(r.get("study") or r.get("accession") or r.get("path") or f"row{i}")
            g = groups.setdefault(key, {"images": [], "report": None, "report_kind": "", "report_text": None,
                                        "key": key, "split": str(r.get("split") or "") or split_of(key),
                                        "values": {n: str(r.get(n, "") or "") for n in self.labels}
                                        if any(n in r for n in self.labels) else None})
            if r.get("path"):
                g["images"].append(self.root / str(r["path"]))
            if r.get("report"):
                g["report_text"] = str(r["report"])
            elif r.get("report_path"):
                g["report"] = self.root / str(r["report_path"])
                g["report_kind"] = str(r.get("report_kind") or "") or _kind_of(g["report"])
        return [groups[k] for k in sorted(groups)]

    # -- per study ---------------------------------------------------------------------------
    def _header_info(self, i: int) -> tuple[dict, list[str]]:
        """(safe meta, known PHI values) of the study's first image, read once."""
        if i not in self._header:
            st = self.studies[i]
            meta, phi = {}, []
            if st["images"]:
                ds = read_header(st["images"][0], stop_before_pixels=True)
                meta, phi = safe_meta(ds, self.key), known_phi(ds)
            else:  # a report-only study: the same patient's other studies name the PHI to scrub
                found: set[str] = set()
                for j in self._by_subject.get(st.get("subject") or "", []):
                    if j != i and self.studies[j]["images"]:
                        found.update(self._header_info(j)[1])
                phi = sorted(found, key=len, reverse=True)
            self._header[i] = (meta, phi)
        return self._header[i]

    def raw_report(self, i: int) -> str | None:
        """The scrubbed full report text of study ``i`` (all sections), or None."""
        if self.cache.kind is not None and i in self._reports:
            return self._reports[i]
        text = self._read_report(i)
        if self.cache.kind is not None:
            self._reports[i] = text
        return text

    def _read_report(self, i: int) -> str | None:
        st = self.studies[i]
        if st["report_text"] is not None:
            text = st["report_text"]
        elif st["report"] is None:
            return None
        elif st["report_kind"] == "sr":
            text = read_sr(st["report"])
        elif st["report_kind"] == "xml":
            text = read_openi_xml(st["report"])["text"]
        else:
            text = read_text_report(st["report"])
        return scrub_text(text, self._header_info(i)[1])

    def sample_meta(self, i: int) -> dict[str, Any]:
        st = self.studies[i]
        meta = {"id": pseudonym(st["key"], self.key, "st-"), "site": self.site, "split": st["split"]}
        img_meta = self._header_info(i)[0]
        for k in ("modality", "manufacturer", "photometric", "pixel_spacing", "view_position", "bits_stored",
                  "transfer_syntax"):
            if k in img_meta:
                meta[k] = img_meta[k]
        return meta

    def target(self, i: int) -> torch.Tensor:
        values = self.studies[i]["values"]
        if values is None:
            return torch.full((len(self.labels),), -1, dtype=torch.long)
        return encode(values, self.labels, self.uncertain, self.blank)

    def __len__(self) -> int:
        return len(self.studies)

    def __getitem__(self, i: int) -> Sample:
        st = self.studies[i]
        inputs: dict[str, Any] = {}
        if st["images"]:
            path = st["images"][0]
            opts = f"{self.image_size}|{self.window}|{self.burned_in}"
            inputs[IMAGE] = self.cache.get(path, opts, lambda: image_tensor(
                path, size=self.image_size, window=self.window, key=self.key, burned_in=self.burned_in))
        report = self.raw_report(i)
        if report is not None:
            chosen = select_sections(report, self.report_sections)
            if chosen:
                inputs[TEXT] = chosen
        return Sample(inputs, self.target(i), self.sample_meta(i))


def _kind_of(path: Path) -> str:
    return {".xml": "xml", ".dcm": "sr"}.get(path.suffix.lower(), "txt")


def describe(dataset: MedicalDataset) -> dict[str, Any]:
    """Aggregate, identifier-free statistics of a built dataset."""
    from collections import Counter

    patterns, modality, vendor, photometric, syntax, sections = Counter(), Counter(), Counter(), Counter(), Counter(), Counter()
    for i, st in enumerate(dataset.studies):
        has = []
        if st["images"]:
            has.append(IMAGE)
            meta = dataset._header_info(i)[0]
            modality[meta.get("modality") or "?"] += 1
            vendor[meta.get("manufacturer") or "?"] += 1
            photometric[meta.get("photometric") or "?"] += 1
            syntax[meta.get("transfer_syntax") or "?"] += 1
        try:
            text = dataset.raw_report(i)
        except MedicalDataError:
            text = None
        if text is not None:
            present = split_sections(text)
            sections.update(present.keys())
            if select_sections(text, dataset.report_sections):
                has.append(TEXT)
        patterns["+".join(sorted(has)) or "none"] += 1
    n = len(dataset)
    return {
        "studies": n, "split": dataset.split,
        "by_pattern": dict(sorted(patterns.items())),
        "by_modality": {IMAGE: sum(v for k, v in patterns.items() if IMAGE in k),
                        TEXT: sum(v for k, v in patterns.items() if TEXT in k)},
        "dicom_modality": dict(sorted(modality.items())), "manufacturer": dict(sorted(vendor.items())),
        "photometric": dict(sorted(photometric.items())), "transfer_syntax": dict(sorted(syntax.items())),
        "report_section_coverage": {s: round(c / n, 3) for s, c in sorted(sections.items())} if n else {},
        "report_sections_used": list(dataset.report_sections),
    }
