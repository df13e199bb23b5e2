"""Every file of pydicom's test corpus (and pydicom-data's, which get_testdata_files includes)
either decodes or raises MedicalDataError naming the file; nothing else escapes."""

import io
import os
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_files

from mmdomain_medical.dicom_header import header_facts
from mmdomain_medical.dicom_parse import quiet_validation
from mmdomain_medical.dicom_read import read_dicom
from mmdomain_medical.errors import MedicalDataError
from mmdomain_medical.header_walk import walk_header
from mmdomain_medical.intensity import normalise
from mmdomain_medical.sr import read_sr

FILES = sorted(f for f in get_testdata_files() if os.path.isfile(f))


def test_corpus_is_there():
    assert len(FILES) > 150


@pytest.mark.timeout(120)
def test_every_corpus_file_decodes_or_fails_clearly():
    decoded, refused, kinds = 0, 0, set()
    for f in FILES:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                img = read_dicom(f, burned_in="warn")
            x = normalise(img)
            assert x.dtype == np.float32 and x.ndim in (3, 4)
            assert np.isfinite(x).all(), f
            decoded += 1
            kinds.add(img.meta["transfer_syntax"])
        except MedicalDataError as exc:
            assert str(exc).startswith(str(f)), f"error does not name the file first: {exc}"
            refused += 1
    assert decoded >= 150, (decoded, refused)
    assert len(kinds) >= 10, kinds  # many transfer syntaxes decoded


@pytest.mark.timeout(60)
def test_header_walk_reads_what_pydicom_reads():
    """Wherever the reader's minimal header walk accepts a corpus file, it finds the same attribute
    values and the same PixelData offset as pydicom's own parse (stop_before_pixels)."""
    accepted, pixel_flags = 0, ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
    for f in FILES:
        data = Path(f).read_bytes()
        walked = walk_header(data)
        if walked is None:
            continue
        accepted += 1
        facts, pos = walked
        bio = io.BytesIO(data)
        with quiet_validation():
            expect = header_facts(pydicom.dcmread(bio, stop_before_pixels=True))
        at = bio.tell()
        assert pos == (at if data[at:at + 4] == b"\xe0\x7f\x10\x00" else -1), f
        assert {k: v for k, v in facts.items() if k not in pixel_flags} == \
               {k: v for k, v in expect.items() if k not in pixel_flags}, f
    assert accepted >= 100, accepted  # the explicit-VR little-endian native and RLE files


@pytest.mark.timeout(60)
def test_corpus_sr_files_yield_text_or_clear_error():
    texts = 0
    for f in FILES:
        name = os.path.basename(f).lower()
        if "sr" not in name and "report" not in name:
            continue
        try:
            text = read_sr(f)
            assert isinstance(text, str) and text
            texts += 1
        except MedicalDataError as exc:
            assert str(f) in str(exc)
    assert texts >= 1
