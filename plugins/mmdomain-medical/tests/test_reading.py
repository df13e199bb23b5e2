import warnings

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_color_lut

from dicom_factory import write
from mmdomain_medical.dicom_read import _fast_native, normalise, read_dicom, read_header
from mmdomain_medical.errors import MedicalDataError
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
        fast = _fast_native(ds, f)
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
