import warnings

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut
from pydicom.sequence import Sequence
from pydicom.uid import ImplicitVRLittleEndian, RLELossless

from dicom_factory import write
from mmdomain_medical.dicom_header import header_facts
from mmdomain_medical.dicom_pixels import native_from_file
from mmdomain_medical.dicom_parse import read_header
from mmdomain_medical.dicom_read import read_dicom
from mmdomain_medical.errors import MedicalDataError
from mmdomain_medical.header_walk import walk_header
from mmdomain_medical.intensity import normalise
from mmdomain_medical.series import load_series


def test_monochrome1_is_inverted(tmp_path):
    px = np.array([[0, 100], [200, 400]], np.uint16)
    img = read_dicom(write(tmp_path / "m1.dcm", px, photometric="MONOCHROME1", bits_stored=12))
    np.testing.assert_allclose(normalise(img)[0], [[1.0, 0.75], [0.5, 0.0]], atol=1e-6)
    img2 = read_dicom(write(tmp_path / "m2.dcm", px, photometric="MONOCHROME2", bits_stored=12))
    np.testing.assert_allclose(normalise(img2)[0], [[0.0, 0.25], [0.5, 1.0]], atol=1e-6)


def test_rescale_and_window(tmp_path):
    px = np.array([[0, 512], [1024, 2048]], np.uint16)
    f = write(tmp_path / "r.dcm", px, RescaleSlope=2, RescaleIntercept=-1024, WindowCenter=0, WindowWidth=2048)
    img = read_dicom(f)
    np.testing.assert_allclose(img.array[0], [[-1024, 0], [1024, 3072]])
    assert img.window is None
    np.testing.assert_allclose(normalise(read_dicom(f, window="auto"))[0], [[0, 0.5], [1, 1]], atol=1e-6)
    np.testing.assert_allclose(normalise(read_dicom(f, window=(1024, 1024)))[0], [[0, 0], [0.5, 1]], atol=1e-6)
    lung = normalise(read_dicom(f, window="lung"))[0]  # (-600, 1500): lo -1350
    np.testing.assert_allclose(lung, np.clip((img.array[0] + 1350) / 1500, 0, 1), atol=1e-6)
    with pytest.raises(MedicalDataError, match="unknown window preset"):
        read_dicom(f, window="nope")


def test_unused_high_bits_are_masked_and_signed_extended(tmp_path):
    px = np.array([[0xF001, 0x0FFF]], np.uint16)  # garbage in the top 4 bits
    assert read_dicom(write(tmp_path / "u.dcm", px, bits_stored=12)).array[0].tolist() == [[1, 4095]]
    spx = np.array([[0x0FFF, 0x0800]], np.uint16).view(np.int16)  # 12-bit two's complement: -1, -2048
    img = read_dicom(write(tmp_path / "s.dcm", spx, bits_stored=12, signed=True))
    assert img.array[0].tolist() == [[-1, -2048]]


def test_multiframe_frames_are_a_known_axis(tmp_path):
    px = np.stack([np.full((4, 5), k, np.uint16) for k in range(3)])
    img = read_dicom(write(tmp_path / "mf.dcm", px, frames=3))
    assert img.array.shape == (1, 3, 4, 5) and img.axes == "CFHW"
    assert [float(img.array[0, k, 0, 0]) for k in range(3)] == [0, 1, 2]
    assert img.meta["frames"] == 3


def test_rgb_and_palette(tmp_path):
    px = np.zeros((2, 2, 3), np.uint8)
    px[..., 0], px[..., 1], px[..., 2] = 10, 20, 30
    img = read_dicom(write(tmp_path / "rgb.dcm", px, photometric="RGB"))
    assert img.array.shape == (3, 2, 2)
    assert img.array[:, 0, 0].tolist() == [10, 20, 30]
    f = get_testdata_file("OT-PAL-8-face.dcm")
    img = read_dicom(f)
    ds = read_header(f)  # this file has no file meta; the reader infers its transfer syntax
    expect = np.moveaxis(apply_color_lut(ds.pixel_array, ds), -1, 0)
    assert img.array.shape == expect.shape and img.array.shape[0] == 3
    np.testing.assert_array_equal(img.array, expect.astype(np.float32))


def test_series_ordered_by_position(tmp_path):
    zs = [30.0, 0.0, 20.0, 10.0]
    for i, z in enumerate(zs):  # file order != anatomical order, instance numbers misleading
        write(tmp_path / "series" / f"{i}.dcm", np.full((3, 3), int(z), np.uint16), seed="ser",
              ImagePositionPatient=[0, 0, z], ImageOrientationPatient=[1, 0, 0, 0, 1, 0], InstanceNumber=4 - i,
              PixelSpacing=[0.5, 0.5])
    vol = load_series(tmp_path / "series")
    assert vol.array.shape == (1, 4, 3, 3)
    assert vol.array[0, :, 0, 0].tolist() == [0, 10, 20, 30]
    assert vol.meta["slice_spacing"] == 10.0 and vol.meta["pixel_spacing"] == [0.5, 0.5]


def test_fast_path_matches_pydicom():
    for name in ("CT_small.dcm", "MR_small.dcm", "SC_rgb.dcm", "SC_rgb_16bit.dcm"):
        f = get_testdata_file(name)
        ds = read_header(f)
        fast = native_from_file(ds, f, header_facts(ds))
        assert fast is not None, name
        np.testing.assert_array_equal(fast, pydicom.dcmread(f).pixel_array)


def test_meta_has_geometry_not_identity(tmp_path):
    f = write(tmp_path / "g.dcm", np.zeros((2, 2), np.uint16), PixelSpacing=[0.7, 0.7],
              ImageOrientationPatient=[1, 0, 0, 0, 1, 0], ImagePositionPatient=[1, 2, 3])
    meta = read_dicom(f).meta
    assert meta["pixel_spacing"] == [0.7, 0.7] and meta["orientation"] == [1, 0, 0, 0, 1, 0]
    text = repr(meta)
    for phi in ("Testperson", "Quentin", "7654321"):
        assert phi not in text
    assert "StudyInstanceUID" not in text and pydicom.dcmread(f).StudyInstanceUID not in text


def test_burned_in_annotation_refused_or_warned(tmp_path):
    f = write(tmp_path / "b.dcm", np.zeros((2, 2), np.uint16), BurnedInAnnotation="YES")
    with pytest.raises(MedicalDataError, match="BurnedInAnnotation") as info:
        read_dicom(f)
    assert str(f) in str(info.value) and "Testperson" not in str(info.value)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        read_dicom(f, burned_in="warn")
    assert any("BurnedInAnnotation" in str(x.message) for x in w)


@pytest.mark.parametrize("content", [b"", b"not dicom at all" * 10, b"\0" * 128 + b"DICM" + b"\xff" * 50])
def test_garbage_is_a_clear_error(tmp_path, content):
    f = tmp_path / "bad.dcm"
    f.write_bytes(content)
    with pytest.raises(MedicalDataError) as info:
        read_dicom(f)
    assert str(f) in str(info.value)


def test_truncated_pixel_data(tmp_path):
    f = write(tmp_path / "t.dcm", np.arange(64, dtype=np.uint16).reshape(8, 8))
    data = f.read_bytes()
    f.write_bytes(data[:-40])
    with pytest.raises(MedicalDataError) as info:
        read_dicom(f)
    assert str(f) in str(info.value)


def _no_pydicom_parse(monkeypatch):
    """Make any pydicom header parse in the reader fail: what still reads took the header walk."""
    import mmdomain_medical.dicom_read as dr

    def refuse(*a, **k):
        raise AssertionError("pydicom parse on the fast path")

    monkeypatch.setattr(dr, "_read_in_memory", refuse)
    monkeypatch.setattr(dr, "read_header", refuse)


def _rle(src, dst, **header):
    ds = pydicom.dcmread(src)
    ds.compress(RLELossless, encoding_plugin="pydicom")
    for k, v in header.items():  # e.g. Bits Stored lowered after encoding: garbage in the unused high bits
        setattr(ds, k, v)
    ds.save_as(dst)
    return dst


def test_plain_native_file_reads_without_a_pydicom_parse(tmp_path, monkeypatch):
    px = np.array([[0xF001, 0x0FFF], [7, 9]], np.uint16)  # high bits set: cleared on the fast path too
    f = write(tmp_path / "n.dcm", px, bits_stored=12, PixelSpacing=[0.5, 0.5], RescaleSlope=2, RescaleIntercept=-3)
    expect = read_header(f)
    _no_pydicom_parse(monkeypatch)
    img = read_dicom(f)
    np.testing.assert_array_equal(img.array[0], (px & 0x0FFF) * 2.0 - 3)
    assert img.meta["pixel_spacing"] == [0.5, 0.5] and img.meta["rows"] == 2 and img.meta["bits_stored"] == 12
    assert img.meta["modality"] == expect.Modality


@pytest.mark.parametrize("case", ["multiframe-12bit-garbage", "signed-12bit", "8bit"])
def test_rle_greyscale_fast_path_matches_pydicom(tmp_path, monkeypatch, case):
    rng = np.random.default_rng(1)
    if case == "multiframe-12bit-garbage":
        px = rng.integers(0, 65535, (3, 6, 7), dtype=np.uint16)  # every bit used at encode time
        f = _rle(write(tmp_path / "a.dcm", px, frames=3), tmp_path / "r.dcm", BitsStored=12, HighBit=11)
    elif case == "signed-12bit":
        px = rng.integers(-2048, 2047, (5, 4), dtype=np.int16)
        f = _rle(write(tmp_path / "a.dcm", px, bits_stored=12, signed=True), tmp_path / "r.dcm")
    else:
        px = rng.integers(0, 255, (5, 9), dtype=np.uint8)
        f = _rle(write(tmp_path / "a.dcm", px, photometric="MONOCHROME1"), tmp_path / "r.dcm")
    expect = pydicom.dcmread(f).pixel_array  # pydicom clears / sign-extends the unused bits itself
    _no_pydicom_parse(monkeypatch)
    img = read_dicom(f)
    got = img.array[0]
    assert got.shape == expect.shape and img.meta["transfer_syntax"] == RLELossless
    np.testing.assert_array_equal(got, expect)


def test_files_the_header_walk_declines_still_read(tmp_path):
    """Implicit VR, a LUT sequence, non-ASCII text, an undefined-length UN: pydicom parses them."""
    px = np.arange(12, dtype=np.uint16).reshape(3, 4)
    base = write(tmp_path / "base.dcm", px, Manufacturer="Acme")
    assert walk_header(base.read_bytes()) is not None
    variants = {}
    ds = pydicom.dcmread(base)
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ds.save_as(variants.setdefault("implicit", tmp_path / "i.dcm"), enforce_file_format=True)
    ds = pydicom.dcmread(base)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.Manufacturer = "Müller Medizintechnik"
    ds.save_as(variants.setdefault("latin-1 text", tmp_path / "l1.dcm"))
    lut = Dataset()
    lut.add_new(0x00283002, "US", [4, 0, 16])  # LUT Descriptor: 4 entries from 0, 16 bits
    lut.add_new(0x00283006, "US", [0, 10, 20, 30])  # LUT Data
    lut.ModalityLUTType = "US"
    ds = pydicom.dcmread(base)
    ds.ModalityLUTSequence = Sequence([lut])
    ds.save_as(variants.setdefault("modality LUT sequence", tmp_path / "lut.dcm"))
    for name, f in variants.items():
        assert walk_header(f.read_bytes()) is None, name
        img = read_dicom(f)
        expect = [[0, 10, 20, 30], [30] * 4, [30] * 4] if "LUT" in name else px
        np.testing.assert_array_equal(img.array[0], expect, err_msg=name)
        assert img.meta["manufacturer"] == str(pydicom.dcmread(f).Manufacturer), name


def test_sequences_are_skipped_by_the_header_walk(tmp_path, monkeypatch):
    """Defined and undefined-length sequences, undefined-length items, nested: no pydicom parse."""
    px = np.arange(12, dtype=np.uint16).reshape(3, 4)
    base = write(tmp_path / "base.dcm", px, PixelSpacing=[0.5, 0.5])
    inner = Dataset()
    inner.CodeValue, inner.CodingSchemeDesignator = "T-D3000", "SRT"
    item = Dataset()
    item.ReferencedSOPInstanceUID = "1.2.3"
    item.AnatomicRegionSequence = Sequence([inner])  # nested
    item.add_new(0x00091010, "OB", b"\xfe\xff\xdd\xe0\0\0\0\0")  # a delimiter's bytes inside a value
    files = {}
    for name, undefined in (("defined", False), ("undefined", True)):
        ds = pydicom.dcmread(base)
        ds.ReferencedImageSequence = Sequence([item, Dataset()])
        ds["ReferencedImageSequence"].is_undefined_length = undefined
        item.AnatomicRegionSequence[0].is_undefined_length_sequence_item = undefined
        item["AnatomicRegionSequence"].is_undefined_length = undefined
        item.is_undefined_length_sequence_item = undefined
        ds.save_as(files.setdefault(name, tmp_path / f"{name}.dcm"))
    expect = {name: (pydicom.dcmread(f).PixelSpacing, walk_header(f.read_bytes())) for name, f in files.items()}
    assert b"\xff\xff\xff\xff" in files["undefined"].read_bytes()
    _no_pydicom_parse(monkeypatch)
    for name, f in files.items():
        assert expect[name][1] is not None, name
        img = read_dicom(f)
        np.testing.assert_array_equal(img.array[0], px, err_msg=name)
        assert img.meta["pixel_spacing"] == [float(v) for v in expect[name][0]], name
    # cut short inside the sequence: declined, and pydicom then names the file
    data = files["undefined"].read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[:data.index(b"T-D3000")])
    assert walk_header(cut.read_bytes()) is None


def test_invalid_image_pixel_number_is_a_clear_error(tmp_path):
    f = write(tmp_path / "nf.dcm", np.zeros((1, 2, 2), np.uint16), frames=1)
    element = b"\x28\x00\x08\x00IS\x02\x001 "  # (0028,0008) Number of Frames "1"
    data = f.read_bytes()
    assert data.count(element) == 1
    f.write_bytes(data.replace(element, element[:-2] + b"1A"))  # not a number
    with pytest.raises(MedicalDataError, match="NumberOfFrames") as info:
        read_dicom(f)
    assert str(info.value).startswith(str(f))
