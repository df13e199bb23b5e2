"""Hostile DICOM files, reports and trees (issue #17 items 1 and 3): every crafted file is the plugin's
typed error naming the file, or is skipped and counted in a folder, without allocating what its header
asks for, without blocking on a FIFO, and without reading anything outside the data root; inside a
dataset no message names a file by its path (file names carry patients' names and MRNs).

The files are real: written with pydicom, encoded with pydicom's RLE encoder and Pillow's JPEG encoder,
then given a lying header. The worst ones are read in a forked child under RLIMIT_AS (its size now
plus ``_EXTRA``), so a regression fails the test instead of taking the machine's memory or aborting
pytest (the old reader aborted on the 65535 x 65535 RLE file when its 8.6 GB allocation failed)."""

from __future__ import annotations

import io
import logging
import os
import struct
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from click.testing import CliRunner
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.sequence import Sequence
from pydicom.uid import (DeflatedExplicitVRLittleEndian, JPEGBaseline8Bit, RLELossless,
                         generate_uid)

from dicom_factory import ct_header, write
from mmdomain import limits
from mmdomain.testing.bounded import run_bounded
from mmdomain_medical.commands import medical
from mmdomain_medical.dataset import MedicalDataset, describe
from mmdomain_medical.dicom_parse import read_header
from mmdomain_medical.dicom_read import read_dicom
from mmdomain_medical.errors import MedicalDataError
from mmdomain_medical.facts import SOP_CLASSES
from mmdomain_medical.pairing import index_tree
from mmdomain_medical.sr import read_sr

_EXTRA = 1 << 30  # what a child may allocate beyond its size at the fork: far below any lying header's ask
PATIENT = ("DOE", "JOHN", "1234567")  # in file names: never in a message


# -- crafted files ------------------------------------------------------------------------------------------

def _dataset(ts: str, rows: int, cols: int, *, frames: int | None = None, bits: int = 16, seed: str = "h") -> Dataset:
    ds = ct_header(ts, seed=seed, instance=[seed], name="Doe^John", patient_id="1234567")
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = rows, cols
    if frames:
        ds.NumberOfFrames = frames
    ds.BitsAllocated = ds.BitsStored = bits
    ds.HighBit, ds.PixelRepresentation = bits - 1, 0
    return ds


def rle_zeros(n: int) -> bytes:
    """An RLE segment of ``n`` zero bytes: replicate runs of 128."""
    out = bytearray()
    while n > 0:
        k = min(n, 128)
        out += bytes([257 - k if k > 1 else 0, 0])
        n -= k
    return bytes(out)


def rle_frame(segments: list[bytes], *, count: int | None = None, offsets: list[int] | None = None) -> bytes:
    """An RLE frame: its 64-byte header (segment count and offsets, true unless given) and segments."""
    if offsets is None:
        offsets, at = [], 64
        for seg in segments:
            offsets.append(at)
            at += len(seg)
    header = struct.pack("<16L", len(segments) if count is None else count, *offsets, *[0] * (15 - len(offsets)))
    return header + b"".join(segments)


def encapsulated_file(path: Path, ts: str, rows: int, cols: int, fragment: bytes, *, frames: int | None = None,
                      bits: int = 16, copies: int = 1) -> Path:
    """A file whose PixelData is ``copies`` items of ``fragment``, whatever the header declares."""
    ds = _dataset(ts, rows, cols, frames=frames, bits=bits, seed=path.name)
    ds.PixelData = encapsulate([fragment] * copies)
    ds["PixelData"].VR = "OB"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def jpeg(rows: int = 8, cols: int = 8, sof: tuple[int, int] | None = None) -> bytes:
    """A real baseline JPEG (Pillow) of a grey ramp; ``sof``: (height, width) written into its SOF0 instead."""
    from PIL import Image

    bio = io.BytesIO()
    Image.fromarray((np.arange(rows * cols) % 251).astype(np.uint8).reshape(rows, cols), "L").save(bio, "JPEG")
    data = bytearray(bio.getvalue())
    if sof is not None:
        struct.pack_into(">HH", data, data.index(b"\xff\xc0") + 5, *sof)
    return bytes(data)


def deflated_file(path: Path, rows: int, cols: int, pixel_bytes: int) -> Path:
    """Deflated Explicit VR Little Endian whose PixelData is ``pixel_bytes`` zeros, written a chunk at a
    time: a deflate bomb (~1000:1) that never exists inflated, here or anywhere."""
    ds = _dataset(DeflatedExplicitVRLittleEndian, rows, cols, seed=path.name)
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    plain = Dataset()
    for elem in ds:
        plain.add(elem)
    write_dataset(body, plain)
    meta = DicomBytesIO()
    meta.is_little_endian, meta.is_implicit_VR = True, False
    write_file_meta_info(meta, ds.file_meta, enforce_standard=True)
    z = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    chunk = bytes(1 << 22)
    with open(path, "wb") as f:
        f.write(b"\0" * 128 + b"DICM" + meta.getvalue())
        f.write(z.compress(body.getvalue() + b"\xe0\x7f\x10\x00OW\0\0" + struct.pack("<L", pixel_bytes)))
        left = pixel_bytes
        while left:
            f.write(z.compress(chunk[:min(left, len(chunk))]))
            left -= min(left, len(chunk))
        f.write(z.flush())
    return path


def bad_vr(good: Path, dst: Path, tag: bytes = b"\x08\x00\x16\x00UI") -> Path:
    """``good`` with one VR byte pair changed to 'QQ' (SOP Class UID by default): pydicom parses the
    header, then raises NotImplementedError on reading that value."""
    data = good.read_bytes()
    i = data.index(tag)
    dst.write_bytes(data[:i + 4] + b"QQ" + data[i + 6:])
    return dst


def good_image(path: Path, seed: str) -> Path:
    """An 8 x 8 image: the datasets here use ``image_size=8``, so nothing is resized (and MONAI, ~10 s to
    import, is not needed)."""
    return write(path, np.arange(64, dtype=np.uint16).reshape(8, 8) * 3, seed=seed)


# -- a forked child under a memory limit --------------------------------------------------------------------

def _bounded(fn, *, extra: int = _EXTRA, timeout: int = 30):
    """``fn()`` in a forked child under RLIMIT_AS (its size now + ``extra``) and an alarm: what it returned,
    or AssertionError if the child died (an abort), hung or raised."""
    return run_bounded(fn, extra_bytes=extra, timeout=timeout)


def _outcome(fn, *args, **kwargs) -> tuple[str, str]:
    try:
        fn(*args, **kwargs)
        return "ok", ""
    except MedicalDataError as exc:
        return "MedicalDataError", str(exc)
    except BaseException as exc:  # noqa: BLE001 - anything else is the failure under test
        return type(exc).__name__, str(exc)[:300]


# -- lying image headers --------------------------------------------------------------------------------------

def _lying_files(d: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, what the error must say)."""
    d.mkdir(parents=True, exist_ok=True)
    tiny = rle_frame([rle_zeros(16), rle_zeros(16)])
    return {
        # 7.8 KB of pixels for 65535 x 65535 (the 9.4 GB peak)
        "native 65535^2": (write(d / "native.dcm", np.zeros((60, 65), np.uint16), Rows=65535, Columns=65535),
                           "DICOM_FRAME_PIXELS"),
        "native 2**31 frames": (write(d / "frames.dcm", np.zeros((2, 4, 4), np.uint16), frames=2,
                                      NumberOfFrames=2**31 - 1), "DICOM_FRAMES"),
        "native too short": (write(d / "short.dcm", np.zeros((60, 65), np.uint16), Rows=4000, Columns=4000),
                             "shorter"),
        # an 800-byte RLE file declaring 65535 x 65535: the decoder allocated 8.6 GB, or aborted
        "RLE 65535^2": (encapsulated_file(d / "rle-huge.dcm", RLELossless, 65535, 65535, tiny),
                        "DICOM_FRAME_PIXELS"),
        "RLE 2**31 frames": (encapsulated_file(d / "rle-frames.dcm", RLELossless, 4, 4, tiny, frames=2**31 - 1),
                             "DICOM_FRAMES"),
        "RLE segments too short": (encapsulated_file(d / "rle-short.dcm", RLELossless, 4096, 4096, tiny),
                                   "cannot hold"),
        "RLE offsets past the fragment": (encapsulated_file(d / "rle-offsets.dcm", RLELossless, 4, 4, rle_frame(
            [rle_zeros(16), rle_zeros(16)], offsets=[64, 10**6])), "offsets"),
        "RLE segment count": (encapsulated_file(d / "rle-count.dcm", RLELossless, 4, 4, rle_frame(
            [rle_zeros(16), rle_zeros(16)], count=15)), "segments"),
        "RLE fewer fragments than frames": (encapsulated_file(d / "rle-missing.dcm", RLELossless, 4, 4, tiny,
                                                              frames=3, copies=2), "fragments"),
        # a JPEG whose own frame header says 60000 x 60000 inside a file that declares 8 x 8
        "JPEG SOF lies": (encapsulated_file(d / "jpeg-sof.dcm", JPEGBaseline8Bit, 8, 8, jpeg(sof=(60000, 60000)),
                                            bits=8), "codestream"),
        "JPEG 65535^2": (encapsulated_file(d / "jpeg-huge.dcm", JPEGBaseline8Bit, 65535, 65535,
                                           jpeg(sof=(65535, 65535)), bits=8), "DICOM_FRAME_PIXELS"),
        "not a codestream": (encapsulated_file(d / "jpeg-none.dcm", JPEGBaseline8Bit, 8, 8, b"\0" * 64, bits=8),
                             "no JPEG codestream"),
    }


def test_lying_headers_are_refused_before_anything_is_allocated(tmp_path):
    files = _lying_files(tmp_path)
    # each file read in a child that may allocate 1 GiB more than it holds: no abort, no MemoryError
    got = _bounded(lambda: {name: _outcome(read_dicom, f) for name, (f, _) in files.items()})
    for name, (f, says) in files.items():
        kind, message = got[name]
        assert kind == "MedicalDataError", (name, kind, message)
        assert message.startswith(str(f)) and says in message, (name, message)
        assert "MemoryError" not in message, (name, message)


def test_well_formed_compressed_files_still_read(tmp_path):
    """The checks refuse lies, not files: a real JPEG, an RLE file pydicom encoded (8 and 16 bit, 2 frames)."""
    img = read_dicom(encapsulated_file(tmp_path / "j.dcm", JPEGBaseline8Bit, 8, 8, jpeg(), bits=8))
    assert img.array.shape == (1, 8, 8) and 0 < float(img.array.max()) <= 255
    px = (np.arange(2 * 5 * 7, dtype=np.uint16).reshape(2, 5, 7) * 997) % 4096
    src = write(tmp_path / "n.dcm", px, frames=2)
    ds = pydicom.dcmread(src)
    ds.compress(RLELossless, encoding_plugin="pydicom")
    ds.save_as(tmp_path / "r.dcm")
    np.testing.assert_array_equal(read_dicom(tmp_path / "r.dcm").array[0], px)
    f = encapsulated_file(tmp_path / "z.dcm", RLELossless, 4, 4, rle_frame([rle_zeros(16), rle_zeros(16)]))
    assert float(np.abs(read_dicom(f).array).max()) == 0.0


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    """A 100 KB deflated file that inflates to 96 MiB (a 4.2 MB one inflated past 4 GiB in the old reader)."""
    return deflated_file(tmp_path_factory.mktemp("bomb") / "bomb.dcm", 7168, 7168, 96 << 20)


@pytest.mark.parametrize("route", ["bytes", "pydicom header"])
def test_a_deflate_bomb_is_refused_without_inflating_it(bomb, tmp_path, monkeypatch, route):
    """With the ceiling at 4 MiB, read in a child that may allocate 64 MiB: refused for its inflated size,
    not for the memory it ran out of (the old reader inflated it all, twice, and held copies)."""
    assert bomb.stat().st_size < 150_000
    monkeypatch.setattr(limits, "DICOM_INFLATED_BYTES", 4 << 20)
    reader = read_dicom if route == "bytes" else read_header
    kind, message = _bounded(lambda: _outcome(reader, bomb), extra=64 << 20)
    assert kind == "MedicalDataError" and "DICOM_INFLATED_BYTES" in message, message
    # under the ceiling a deflated image reads, pixels intact
    px = np.arange(48, dtype=np.uint16).reshape(6, 8)
    ds = pydicom.dcmread(write(tmp_path / "plain.dcm", px))
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(tmp_path / "small.dcm", enforce_file_format=True)
    np.testing.assert_array_equal(read_dicom(tmp_path / "small.dcm").array[0], px)


def test_truncated_files_are_clear_errors(tmp_path):
    px = np.arange(16 * 16, dtype=np.uint16).reshape(16, 16)
    native = write(tmp_path / "native.dcm", px)
    ds = pydicom.dcmread(native)
    ds.compress(RLELossless, encoding_plugin="pydicom")
    ds.save_as(tmp_path / "rle.dcm")
    outcomes = set()
    for src in (native, tmp_path / "rle.dcm"):
        data = src.read_bytes()
        for cut in range(0, len(data), max(1, len(data) // 40)):
            f = tmp_path / f"cut-{src.stem}-{cut}.dcm"
            f.write_bytes(data[:cut])
            kind, message = _outcome(read_dicom, f)
            assert kind in ("ok", "MedicalDataError"), (f.name, kind, message)
            assert kind == "ok" or message.startswith(str(f)), message
            outcomes.add(kind)
    assert outcomes == {"ok", "MedicalDataError"}  # the cuts after the pixels read; the rest are refused


# -- files that are not files, paths out of the root ----------------------------------------------------------

def test_fifos_and_devices_are_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.dcm"
    os.mkfifo(fifo)
    report_fifo = tmp_path / "s1.txt"
    os.mkfifo(report_fifo)
    zero = tmp_path / "zero.dcm"
    os.symlink("/dev/zero", zero)

    def read_all():
        return {(reader.__name__, f.name): _outcome(reader, f)
                for reader in (read_dicom, read_header, read_sr) for f in (fifo, zero)}

    t0 = time.monotonic()
    got = _bounded(read_all, timeout=20)  # a blocking open would hang the child: the alarm kills it
    assert time.monotonic() - t0 < 15
    for (reader, name), (kind, message) in got.items():
        assert kind == "MedicalDataError", (reader, name, kind, message)
        assert ("FIFO" if name == "pipe.dcm" else "character device") in message, message
    r = CliRunner().invoke(medical, ["inspect", str(report_fifo)])
    assert r.exit_code != 0 and "FIFO" in r.output and "Traceback" not in r.output


def test_a_folder_with_a_fifo_and_a_device_loads_the_rest(tmp_path):
    root = tmp_path / "site"
    for i in range(3):
        good_image(root / f"g{i}.dcm", f"g{i}")
    os.mkfifo(root / "pipe.dcm")
    os.symlink("/dev/zero", root / "zero.dcm")

    skipped = _bounded(lambda: MedicalDataset(root, "all", cache=None, image_size=8).skipped, timeout=30)  # never blocks
    assert len(skipped) == 2 and any("FIFO" in s for s in skipped)
    assert any("outside the data root" in s for s in skipped)  # /dev/zero: out of the root, before it is a device
    ds = MedicalDataset(root, "all", cache=None, image_size=8)
    assert len(ds) == 3 and all(ds[i].inputs["dicom_image"].shape == (1, 8, 8) for i in range(3))


def test_manifest_paths_out_of_the_root_are_refused(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("INDICATION: SECRET-OUTSIDE-THE-ROOT\n")
    root = tmp_path / "site"
    for i in range(4):
        good_image(root / f"g{i}.dcm", f"m{i}")
    (root / "ok.txt").write_text("INDICATION: clear lungs.\n")
    os.symlink(outside, root / "link.txt")
    (root / "manifest.csv").write_text("path,report_path,study\n"
                                       "g0.dcm,../outside.txt,a\n"
                                       f"g1.dcm,{outside},b\n"
                                       "g2.dcm,link.txt,c\n"
                                       "g3.dcm,ok.txt,d\n"
                                       "../outside.txt,,e\n")
    ds = MedicalDataset(root, "all", cache=None, image_size=8)
    assert len(ds) == 4  # study e had only a path outside the root: dropped
    assert len(ds.skipped) == 4 and all("outside the data root" in s for s in ds.skipped), ds.skipped
    texts = [ds._report_source(i) for i in range(len(ds))]
    assert not any(t and "SECRET" in t for t in texts)
    samples = [ds[i] for i in range(len(ds))]
    assert all("dicom_image" in s.inputs for s in samples)
    assert [s.inputs.get("report") for s in samples].count(None) == 3
    assert "clear lungs" in next(s.inputs["report"] for s in samples if "report" in s.inputs)


def test_tree_symlinks_out_of_the_root_are_refused(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("INDICATION: SECRET-OUTSIDE-THE-ROOT\n")
    root = tmp_path / "files"
    write(root / "p10" / "p10000001" / "s50000001" / "a.dcm", np.zeros((4, 4), np.uint16), seed="t")
    os.symlink(outside, root / "p10" / "p10000001" / "s50000001.txt")  # a MIMIC report, linked out
    studies = index_tree(tmp_path / "files")
    assert len(studies) == 1 and studies[0].report is None and studies[0].images
    assert len(index_tree.errors) == 1 and "outside the data root" in index_tree.errors[0]


# -- one bad file in a folder ---------------------------------------------------------------------------------

def test_one_bad_file_in_a_folder_is_skipped_and_counted(tmp_path, caplog):
    root = tmp_path / "site"
    goods = [good_image(root / f"g{i}.dcm", f"b{i}") for i in range(3)]
    bad_vr(goods[0], root / "bad-sopclass.dcm")  # NotImplementedError from sr.is_sr
    bad_vr(good_image(tmp_path / "x.dcm", "own-study"), root / "bad-name.dcm", b"\x10\x00\x10\x00PN")  # known_phi
    (root / "truncated.dcm").write_bytes(goods[1].read_bytes()[:200])
    encapsulated_file(root / "rle-huge.dcm", RLELossless, 65535, 65535, rle_frame([rle_zeros(16)] * 2))
    caplog.set_level(logging.WARNING)
    ds = MedicalDataset(root, "all", cache=None, image_size=8)
    assert len(ds) == 3 and len(ds.skipped) == 4, ds.skipped
    assert all(ds[i].inputs["dicom_image"].shape == (1, 8, 8) for i in range(3))
    assert "4 file(s) skipped" in caplog.text
    assert describe(ds)["skipped_files"] == 4


# -- site paths out of messages -------------------------------------------------------------------------------

def test_site_paths_stay_out_of_logs_warnings_and_errors(tmp_path, caplog):
    """Files named after a patient and MRN: every message of the dataset names them by pseudonym, and
    ``mmdomain medical locate`` maps a pseudonym back to the path, on the site."""
    root = tmp_path / "site"
    studies = root / "DOE_JOHN_MRN1234567"
    good = good_image(studies / "DOE_JOHN_MRN1234567_1.dcm", "p1")
    write(studies / "DOE_JOHN_MRN1234567_2.dcm", np.zeros((8, 8), np.uint16), seed="p2", BurnedInAnnotation="YES")
    bad_vr(good_image(tmp_path / "other.dcm", "p3"), studies / "DOE_JOHN_MRN1234567_3.dcm")
    (studies / "DOE_JOHN_MRN1234567_4.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 40)
    os.mkfifo(studies / "DOE_JOHN_MRN1234567_5.dcm")
    # decodes badly only when read: its header is fine, its pixel data is cut short after indexing
    late = write(studies / "DOE_JOHN_MRN1234567_6.dcm", np.zeros((8, 8), np.uint16), seed="p6")
    caplog.set_level(logging.DEBUG)
    messages, failed = [], []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = MedicalDataset(root, "all", cache=None, image_size=8, burned_in="warn")
        late.write_bytes(late.read_bytes()[:-60])
        for i in range(len(ds)):
            try:
                ds[i]
            except MedicalDataError as exc:
                failed.append(str(exc))
        strict = MedicalDataset(root, "all", cache=None, image_size=8)  # BurnedInAnnotation refused: an error, not a warning
        for i in range(len(strict)):
            try:
                strict[i]
            except MedicalDataError as exc:
                failed.append(str(exc))
        stats = repr(describe(ds))
    messages = failed + ds.skipped + strict.skipped + [str(w.message) for w in caught]
    assert len(ds) == 3 and len(ds.skipped) == 3, ds.skipped  # the bad VR, the garbage, the FIFO
    assert len(strict.skipped) == 4  # the cut file too, once it is cut
    assert len(failed) == 2 and sum("BurnedInAnnotation" in m for m in messages) == 2  # a warning, an error
    blob = "\n".join([caplog.text, stats, *messages])
    assert "file-" in blob
    leaks = [p for p in PATIENT if p.lower() in blob.lower()]
    assert not leaks, (leaks, blob[:2000])
    # the site can still find the file a message names
    name = next(m.split(":")[0] for m in messages if "BurnedInAnnotation" in m)
    r = CliRunner().invoke(medical, ["locate", str(root), name])
    assert r.exit_code == 0 and r.output.split("\t")[1].strip() == str(studies / "DOE_JOHN_MRN1234567_2.dcm")
    # outside a dataset the caller's own path is echoed back, as given
    with pytest.raises(MedicalDataError) as info:
        read_dicom(studies / "DOE_JOHN_MRN1234567_4.dcm")
    assert str(studies) in str(info.value)
    assert good.is_file()


# -- reports ------------------------------------------------------------------------------------------------

def _openi(path: Path, image_id: str, body: str = "Chest pain.") -> Path:
    path.write_text(f'<eCitation><Abstract><AbstractText Label="INDICATION">{body}</AbstractText></Abstract>'
                    f'<parentImage id="{image_id}"/></eCitation>')
    return path


def test_xml_reports_are_bounded_before_parsing(tmp_path, monkeypatch):
    root = tmp_path / "openi"
    for i in range(4):
        good_image(root / f"CXR{i}.dcm", f"x{i}")
    _openi(root / "0.xml", "CXR0")
    (root / "1.xml").write_text('<eCitation><parentImage id="CXR1"/>' + "<AbstractText/>" * 120_000
                                + "</eCitation>")  # 120k nodes
    _openi(root / "2.xml", "CXR2", "x" * (5 << 20))  # a 5 MiB element
    (root / "3.xml").write_text('<!DOCTYPE a [<!ENTITY e "FINDINGS">]><eCitation><AbstractText Label="F">&e;'
                                '</AbstractText><parentImage id="CXR3"/></eCitation>')
    ds = MedicalDataset(root, "all", cache=None, image_size=8)
    assert len(ds) == 4 and len(ds.skipped) == 3, ds.skipped
    for says in ("REPORT_XML_NODES", "REPORT_XML_BYTES", "declares entities"):
        assert sum(says in s for s in ds.skipped) == 1, (says, ds.skipped)
    assert sum("report" in ds[i].inputs for i in range(4)) == 1
    # the ceiling holds when a report is read as well as when it is indexed
    monkeypatch.setattr(limits, "REPORT_XML_BYTES", 100)
    i = next(i for i in range(4) if ds.studies[i].report is not None)
    with pytest.raises(MedicalDataError, match="REPORT_XML_BYTES"):
        ds._report_source(i)


def test_sr_bounds(tmp_path, monkeypatch):
    def item(text):
        it = Dataset()
        it.RelationshipType, it.ValueType, it.TextValue = "CONTAINS", "TEXT", text
        return it

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SOP_CLASSES["BasicTextSR"]
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["sr"])
    meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID, "SR"
    ds.ValueType = "CONTAINER"
    ds.ContentSequence = Sequence([item(f"line {i}") for i in range(50)])
    f = tmp_path / "sr.dcm"
    ds.save_as(f, enforce_file_format=True)
    assert read_sr(f).count("line") == 50
    monkeypatch.setattr(limits, "SR_ITEMS", 20)
    with pytest.raises(MedicalDataError, match="SR_ITEMS"):
        read_sr(f)
    monkeypatch.setattr(limits, "SR_FILE_BYTES", 1000)
    with pytest.raises(MedicalDataError, match="SR_FILE_BYTES"):
        read_sr(f)
