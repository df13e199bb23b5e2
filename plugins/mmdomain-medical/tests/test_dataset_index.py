"""The dataset's index: ``available(i)`` answers without decoding or scrubbing and agrees with
the samples, each file's header is read once (index, dataset and reader share it), and a
file changed after indexing is read again."""

import os
from collections import Counter
from pathlib import Path

import numpy as np
import torch

import mmdomain_medical.dataset as dataset_module
import mmdomain_medical.dicom_parse as dicom_parse
import mmdomain_medical.dicom_read as dicom_read
from dicom_factory import write
from mmdomain.data import availability_counts, present_modalities, split_of
from mmdomain_medical.dataset import IMAGE, TEXT, MedicalDataset, describe
from mmdomain_medical.dicom_read import image_tensor
from mmdomain_medical.pairing import Study


def _refuse(*args, **kwargs):
    raise AssertionError("available(i) decoded an image, read a header or scrubbed a report")


def test_available_agrees_with_samples_without_decoding(synth_sites, monkeypatch):
    patterns = set()
    for site in synth_sites:
        ds = MedicalDataset(site, "all", cache=None)
        assert all(isinstance(st, Study) and st.split == split_of(st.subject) for st in ds.studies)
        with monkeypatch.context() as m:  # nothing below may decode, read a header or scrub
            for module, name in ((dataset_module, "image_tensor"), (dicom_read, "read_dicom"),
                                 (dataset_module, "read_header_record"), (dataset_module, "scrub_text")):
                m.setattr(module, name, _refuse)
            claimed = [ds.available(i) for i in range(len(ds))]
            assert [present_modalities(ds, i) for i in range(len(ds))] == claimed
            counts = availability_counts(ds, (IMAGE, TEXT))
        assert [set(ds[i].inputs) for i in range(len(ds))] == [set(c) for c in claimed]
        d = describe(ds)
        assert counts == (d["by_modality"], d["by_pattern"])
        patterns.update(d["by_pattern"])
    assert {"dicom_image", "report", "dicom_image+report"} <= patterns  # every case was checked


def test_each_header_is_read_once(synth_sites, tmp_path, monkeypatch):
    parses: Counter = Counter()
    reader_reads: list[str] = []
    parse, walk, in_memory = dicom_parse._parse, dicom_read.walk_header, dicom_read._read_in_memory

    def counted_parse(path, stop_before_pixels):
        parses[Path(path)] += 1
        return parse(path, stop_before_pixels)

    monkeypatch.setattr(dicom_parse, "_parse", counted_parse)
    monkeypatch.setattr(dicom_read, "walk_header", lambda data: reader_reads.append("walk") or walk(data))
    monkeypatch.setattr(dicom_read, "_read_in_memory",
                        lambda path, data: reader_reads.append("pydicom") or in_memory(path, data))
    # loose files: the index reads every header (to join them); the dataset and the reader read none again
    rng = np.random.default_rng(0)
    loose = [write(tmp_path / "loose" / f"{name}.dcm", rng.integers(0, 4096, (16, 16)).astype(np.uint16),
                   bits_stored=12, seed=seed) for name, seed in (("a1", "s1"), ("a2", "s1"), ("b1", "s2"))]
    ds = MedicalDataset(tmp_path / "loose", "all", cache=None, image_size=16)
    assert len(ds) == 2 and parses == {p: 1 for p in loose}
    for i in range(len(ds)):
        assert ds[i].inputs[IMAGE].shape == (1, 16, 16)
    describe(ds)
    assert parses == {p: 1 for p in loose} and not reader_reads
    # MIMIC layout (uncompressed, RLE, JPEG 2000): the index reads no header, the dataset each
    # study's first image once, the reader none
    for site in synth_sites:
        parses.clear()
        ds = MedicalDataset(site, "all", cache=None)
        assert not parses
        for i in list(range(len(ds))) * 2:
            ds[i]
        describe(ds)
        assert parses == {st.images[0]: 1 for st in ds.studies if st.images}, site.name
    assert not reader_reads


def test_a_file_changed_after_indexing_is_read_again(tmp_path):
    f = write(tmp_path / "site" / "a.dcm", np.arange(16, dtype=np.uint16).reshape(4, 4))
    ds = MedicalDataset(tmp_path / "site", "all", cache=None, image_size=4)
    assert ds.studies[0].header is not None  # the index's read
    before = ds[0].inputs[IMAGE]
    write(f, np.arange(16, dtype=np.uint16)[::-1].reshape(4, 4))  # same size, other pixels
    st = os.stat(f)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    after = ds[0].inputs[IMAGE]
    assert torch.equal(after, image_tensor(f, size=4)) and not torch.equal(after, before)
    write(f, np.arange(36, dtype=np.uint16).reshape(6, 6))  # another size: another header
    assert torch.equal(ds[0].inputs[IMAGE], image_tensor(f, size=4))


def test_report_kept_when_scrubbing_removes_a_heading(tmp_path):
    """A PHI value spelled like a heading: the unscrubbed report has the chosen section, so the
    sample has the report (and available(i) says so); its text is still scrubbed."""
    study = tmp_path / "site" / "files" / "p10" / "p10000001" / "s50000001"
    write(study / "a.dcm", np.zeros((8, 8), np.uint16), PatientName="Findings^Zebedee")
    study.with_suffix(".txt").write_text(" INDICATION: cough, Zebedee.\n FINDINGS: clear lungs.\n")
    ds = MedicalDataset(tmp_path / "site", "all", report_sections=("findings",), image_size=8)
    assert "FINDINGS" not in ds.raw_report(0) and "Zebedee" not in ds.raw_report(0)
    assert ds.available(0) == {IMAGE, TEXT} == set(ds[0].inputs)
    text = ds[0].inputs[TEXT]
    assert "clear lungs" in text and "zebedee" not in text.lower() and "findings" not in text.lower()
