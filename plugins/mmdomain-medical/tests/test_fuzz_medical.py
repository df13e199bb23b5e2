"""Fuzzed DICOM files, reports and manifests (issue #17 item 6): seeded mutants of real files (the
synthetic generator's DICOM: uncompressed, RLE and JPEG 2000; its MIMIC reports; an OpenI XML and a
DICOM SR report; a CSV and a Parquet manifest), each read through ``MedicalDataset`` in a forked
child under 2 GiB and 30 s (``mmdomain.testing.fuzz``). Every mutant reads (finite pixels in
[0, 1], a report string) or is refused with ``MedicalDataError``, or skipped by the index, with a
message that names the file by its pseudonym and never by its name: every file here is named after
a patient (``DOE_JOHN_MRN1234567``).

The image is decoded as ``ds[i]`` decodes it, without the final resize to the dataset's size
(MONAI's, ~30 s to import in each forked child; ``bench/fuzz.py --resize`` runs ``ds[i]`` whole).

``bench/fuzz.py`` runs the same families with more mutants; the functions here are its source."""

from __future__ import annotations

import io
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

from mmdomain.testing import fuzz
from mmdomain.testing.fuzz import Case, Refused, mutate, unmutated
from mmdomain_medical.dataset import MedicalDataset
from mmdomain_medical.deid import DEFAULT_KEY
from mmdomain_medical.dicom_read import read_dicom
from mmdomain_medical.errors import MedicalDataError, file_pseudonym, site_naming
from mmdomain_medical.facts import SOP_CLASSES
from mmdomain_medical.intensity import normalise
from mmdomain_medical.reports import split_sections
from mmdomain_medical.synthetic import generate

SEED = 1706
PATIENT = "DOE_JOHN_MRN1234567"  # in every file name: never in a message
LEAKS = ("DOE", "JOHN", "1234567")
SIZE = 32  # the synthetic images' size: read without a resize
ALLOWED = (MedicalDataError,)
PIXEL_DATA = b"\xe0\x7f\x10\x00"


@dataclass
class Template:
    """Real files to mutate: one image per transfer syntax, a MIMIC report, an OpenI XML report, an SR
    report of the same study, manifests (CSV and Parquet) of two studies."""

    images: dict[str, bytes]  # syntax -> DICOM bytes
    other: bytes  # an image of another study (uncompressed), the second study of a site
    mimic_report: bytes
    xml: bytes
    sr: bytes
    manifest_csv: bytes
    manifest_parquet: bytes


def _study_files(site: Path) -> list[tuple[Path, Path | None]]:
    """(image, its MIMIC report or None) of each study of a synthetic site with an image."""
    out = []
    for image in sorted(site.glob("files/p*/p*/s*/*.dcm")):
        report = image.parent.with_suffix(".txt")
        out.append((image, report if report.is_file() else None))
    return out


def _sr(image: Dataset, text: str) -> bytes:
    """A Basic Text SR of ``image``'s study: the report's sections as CONTAINER + TEXT items (the
    identifiers in the text too: the reader scrubs them)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SOP_CLASSES["BasicTextSR"]
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[image.SOPInstanceUID, "sr"])
    meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.Modality, ds.ValueType = image.StudyInstanceUID, "SR", "CONTAINER"
    ds.PatientName, ds.PatientID = image.PatientName, image.PatientID
    items = []
    for head, body in split_sections(text).items():
        name = Dataset()
        name.CodeValue, name.CodingSchemeDesignator, name.CodeMeaning = "121070", "DCM", head.title()
        text_item = Dataset()
        text_item.RelationshipType, text_item.ValueType, text_item.TextValue = "CONTAINS", "TEXT", body
        section = Dataset()
        section.RelationshipType, section.ValueType = "CONTAINS", "CONTAINER"
        section.ConceptNameCodeSequence = Sequence([name])
        section.ContentSequence = Sequence([text_item])
        items.append(section)
    ds.ContentSequence = Sequence(items)
    bio = io.BytesIO()
    ds.save_as(bio, enforce_file_format=True)
    return bio.getvalue()


def _xml(text: str, image_id: str) -> bytes:
    from xml.sax.saxutils import escape

    parts = [f'<AbstractText Label="{head.upper()}">{escape(body)}</AbstractText>'
             for head, body in split_sections(text).items()]
    return (f'<?xml version="1.0" encoding="utf-8"?>\n<eCitation><MedlineCitation><Article><Abstract>{"".join(parts)}'
            f'</Abstract></Article></MedlineCitation><parentImage id="{image_id}"/></eCitation>\n').encode()


def make_template(workdir: Path, seed: int = SEED) -> Template:
    """Three synthetic sites (one per vendor profile: uncompressed, RLE, JPEG 2000), 32 px images."""
    import pandas as pd
    import pydicom

    sites = generate(workdir / "synthetic", num_sites=3, seed=seed, studies_per_site=3, image_size=SIZE)
    files = [_study_files(s) for s in sites]
    images = {name: f[0][0].read_bytes() for name, f in zip(("native", "rle", "jpeg2000"), files)}
    first, report = next((i, r) for i, r in files[0] if r is not None)
    other = next(i for i, _ in files[0] if i != first)
    text = report.read_text()
    rows = [{"path": f"{PATIENT}_1.dcm", "report_path": f"{PATIENT}_1.txt", "study": "a", "split": "train",
             "Cardiomegaly": "1.0", "Edema": ""},
            {"path": "other.dcm", "report": "FINDINGS: clear lungs.\nIMPRESSION: normal.", "study": "b",
             "split": "test", "Cardiomegaly": "0.0", "Edema": "-1.0"}]
    parquet = io.BytesIO()
    pd.DataFrame(rows).to_parquet(parquet)
    csv = pd.DataFrame(rows).to_csv(index=False).encode()
    return Template(images, other.read_bytes(), report.read_bytes(), _xml(text, f"{PATIENT}_1"),
                    _sr(pydicom.dcmread(first, stop_before_pixels=True), text), csv, parquet.getvalue())


# -- reading a site, as a dataset does ---------------------------------------------------------------------

def read_site(root: Path, *, resize: bool = False) -> int:
    """Every study of the dataset at ``root``: a file the index skipped is ``Refused`` with the
    dataset's own message; each image decodes to finite values in [0, 1] (``resize``: ``ds[i]`` whole),
    each report is a string. Returns the number of studies read."""
    ds = MedicalDataset(root, "all", cache=None, image_size=SIZE)
    for reason in ds.skipped:
        raise Refused(reason)
    for i in range(len(ds)):
        if resize:
            sample = ds[i]
            image, report = sample.inputs.get("dicom_image"), sample.inputs.get("report")
            if image is not None:
                image = image.numpy()
        else:
            image = None
            if ds.studies[i].images:
                with site_naming(ds.root, ds.key):  # as ds[i] names the file
                    image = normalise(read_dicom(ds.studies[i].images[0], key=ds.key, burned_in=ds.burned_in,
                                                 header=ds.header(i)))
            report = ds.raw_report(i)
            ds.available(i), ds.sample_meta(i), ds.target(i)
        if image is not None:
            assert np.isfinite(image).all() and image.min() >= 0.0 and image.max() <= 1.0, "pixels out of [0, 1]"
        assert report is None or isinstance(report, str)
    return len(ds)


def _names(root: Path, path: Path):
    """The message names ``path`` by its pseudonym, and no patient."""
    shown = file_pseudonym(root, path, DEFAULT_KEY)
    return lambda m: shown in m and not any(x in m for x in LEAKS)


def _focus(data: bytes) -> tuple[int, int]:
    """A DICOM file's header: up to its PixelData element."""
    at = data.rfind(PIXEL_DATA)
    return (0, at + 12) if at > 0 else (0, len(data))


def _site(workdir: Path, seed: int) -> Path:
    root = workdir / f"m{seed}" / "site"
    if root.parent.exists():
        shutil.rmtree(root.parent)
    root.mkdir(parents=True)
    return root


def _put(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# -- the families ------------------------------------------------------------------------------------------

def dicom_cases(t: Template, workdir: Path, count: int, seed: int = SEED, *, resize: bool = False,
                mutation=mutate) -> Iterator[Case]:
    """An image of each syntax, mutated (header-focused), in a folder of loose files (the index
    reads its header) or in the MIMIC layout (read on first use), beside a good image."""
    for k in range(count):
        rng = random.Random(seed + k)
        syntax = rng.choice(sorted(t.images))
        m = mutation(t.images[syntax], seed + k, focus=_focus(t.images[syntax]))
        root = _site(workdir, seed + k)
        if rng.random() < 0.5:
            bad = _put(root / PATIENT / f"{PATIENT}_1.dcm", m.data)
            _put(root / "other.dcm", t.other)
        else:
            bad = _put(root / "files" / "p10" / "p10000000" / "s50000000" / f"{PATIENT}_1.dcm", m.data)
            _put(root / "files" / "p10" / "p10000001" / "s50000001" / "other.dcm", t.other)
        yield Case(f"dicom {syntax} {m.label}", lambda r=root: read_site(r, resize=resize), _names(root, bad))


def report_cases(t: Template, workdir: Path, count: int, seed: int = SEED, *, resize: bool = False,
                 mutation=mutate) -> Iterator[Case]:
    """A report mutated: a MIMIC text report, an OpenI XML report or a DICOM SR (header-focused),
    beside its study's image."""
    for k in range(count):
        rng = random.Random(seed + k)
        kind = rng.choice(("txt", "xml", "sr"))
        root = _site(workdir, seed + k)
        if kind == "txt":
            study = root / "files" / "p10" / "p10000000" / "s50000000"
            _put(study / f"{PATIENT}_1.dcm", t.images["native"])
            m = mutation(t.mimic_report, seed + k)
            bad = _put(study.with_suffix(".txt"), m.data)
        elif kind == "xml":
            _put(root / f"{PATIENT}_1.dcm", t.images["native"])
            m = mutation(t.xml, seed + k)
            bad = _put(root / f"{PATIENT}.xml", m.data)
        else:
            _put(root / f"{PATIENT}_1.dcm", t.images["native"])
            m = mutation(t.sr, seed + k, focus=(0, min(len(t.sr), 600)))
            bad = _put(root / f"{PATIENT}_sr.dcm", m.data)
        yield Case(f"report {kind} {m.label}", lambda r=root: read_site(r, resize=resize), _names(root, bad))


def manifest_cases(t: Template, workdir: Path, count: int, seed: int = SEED, *, resize: bool = False,
                   mutation=mutate) -> Iterator[Case]:
    """A manifest mutated (CSV or Parquet), beside the image and report files it lists: the message
    names the manifest or a file it lists."""
    for k in range(count):
        rng = random.Random(seed + k)
        kind = rng.choice(("csv", "parquet"))
        root = _site(workdir, seed + k)
        _put(root / f"{PATIENT}_1.dcm", t.images["native"])
        _put(root / f"{PATIENT}_1.txt", t.mimic_report)
        _put(root / "other.dcm", t.other)
        m = mutation(t.manifest_csv if kind == "csv" else t.manifest_parquet, seed + k)
        bad = _put(root / f"manifest.{kind}", m.data)
        yield Case(f"manifest {kind} {m.label}", lambda r=root: read_site(r, resize=resize), _any_file_named(bad))


def _any_file_named(manifest: Path):
    """The message names the manifest or some file by pseudonym (a mutated manifest may list any name),
    and no patient."""
    return lambda m: (manifest.name in m or re.search(r"file-[0-9a-f]{16}", m) is not None) \
        and not any(x in m for x in LEAKS)


FAMILIES = {"dicom": dicom_cases, "reports": report_cases, "manifests": manifest_cases}


# -- the tests ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def template(tmp_path_factory):
    t = make_template(tmp_path_factory.mktemp("fuzz-medical"))
    good = tmp_path_factory.mktemp("fuzz-medical-good")
    for family in FAMILIES.values():  # every layout reads unmutated, here (importing what the children need)
        for case in family(t, good, 6, mutation=unmutated):
            assert case.run() == 2 - ("report" in case.label), case.label
    return t


#: family -> {seed: what it mutates} of mutants (of this template, seed SEED) that found a bug, kept
#: as regression cases. Both made pydicom read a value of a declared length of ~4 GB, which Python's
#: buffered read(n) allocates before reading (MemoryError under the 2 GiB limit; now
#: ``dicom_parse._SizedReader``): SR reports cut before their preamble with a length spliced in (the
#: forced parse, which defers nothing), and a JPEG 2000 image whose deferred PatientName was read
#: later through pydicom's own reopening of the file (``dicom_parse._reopen``). The Parquet manifest
#: (bench/fuzz.py's long run) held invalid UTF-8 in a string column, which pyarrow decodes only at a
#: cell's first use (a raw UnicodeDecodeError; now validated when read, ``reports.read_manifest``).
REGRESSIONS = {"dicom": {761: "dicom jpeg2000 "}, "reports": {5011: "report sr ", 5117: "report sr "},
               "manifests": {1895: "manifest parquet "}}


@pytest.mark.timeout(240)
@pytest.mark.parametrize("family, count", [("dicom", 40), ("reports", 30), ("manifests", 24)])
def test_mutants_read_or_are_a_medical_data_error_naming_the_file_by_pseudonym(template, tmp_path, family,
                                                                                   count):
    regressions = [next(FAMILIES[family](template, tmp_path / "regressions", 1, seed))
                   for seed in REGRESSIONS[family]]
    assert [c.label.startswith(what) for c, what in zip(regressions, REGRESSIONS[family].values())] == \
        [True] * len(regressions)  # they still mutate what they did
    outcomes = fuzz.run_cases([*regressions, *FAMILIES[family](template, tmp_path, count)], allowed=ALLOWED)
    row = fuzz.tally(outcomes)
    assert fuzz.failures(outcomes) == [], (row, fuzz.failures(outcomes))
    assert row["clear"] > 0 and row["grew_mb"] < 2048, row  # the mutants reach the checks; memory held
