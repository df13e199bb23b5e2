"""DICOM read + decode into normalised tensors (issue #7).

mmdomain-medical's reader vs bare ``pydicom.dcmread(...).pixel_array`` and vs MONAI
``LoadImage(reader="PydicomReader")`` + equivalent intensity transforms, on uncompressed,
JPEG lossless, JPEG 2000 lossless and RLE slices; a cached vs uncached dataset epoch;
peak RSS. Targets: >= 1.2x bare pydicom on uncompressed, >= 0.9x on compressed,
cached epoch >= 5x uncached.

    ./dev bench dicom_read [--files N]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pydicom
import torch
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless

sys.path.insert(0, str(Path(__file__).parent))
from harness import Bench, peak_rss_mb  # noqa: E402

from mmdomain_medical.dataset import MedicalDataset  # noqa: E402
from mmdomain_medical.dicom_read import normalise, read_dicom  # noqa: E402
from mmdomain_medical.synthetic import chest_image, generate, _dicom, SITE_PROFILES  # noqa: E402

warnings.filterwarnings("ignore")


def write_slices(folder: Path, n: int, syntax: str, size: int = 512) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    profile = dict(SITE_PROFILES[0], syntax=syntax, bits=12)
    out = []
    import mmdomain_medical.synthetic as syn

    old = syn.SIZE
    syn.SIZE = size
    try:
        for i in range(n):
            img = chest_image(rng, (bool(i % 2), bool(i % 3 == 0), False))
            ds = _dicom(img, profile, ids=_ids(), seed=0, site=0, study=i)
            p = folder / f"{i:04d}.dcm"
            ds.save_as(p, enforce_file_format=True)
            out.append(p)
    finally:
        syn.SIZE = old
    return out


def _ids() -> dict:
    return {"first": "A", "last": "B", "sex": "F", "age": 50, "mrn": "1", "other_id": "2", "birth": "19700101",
            "address": "x", "phone": "y", "ref_first": "C", "ref_last": "D", "rad_first": "E", "rad_last": "F",
            "institution": "I", "accession": "A1", "date": "20200101"}


def ours(paths):
    def run():
        for p in paths:
            torch.from_numpy(normalise(read_dicom(p)))
    return run


def bare(paths):
    def run():
        for p in paths:
            pydicom.dcmread(p).pixel_array
    return run


def bare_normalised(paths):
    """The same output as ours (float32 [0, 1] tensor, channel first) from bare pydicom + numpy:
    these synthetic slices have no rescale / window and are MONOCHROME2, so min-max is the whole job."""
    def run():
        for p in paths:
            a = pydicom.dcmread(p).pixel_array.astype(np.float32)
            lo, hi = a.min(), a.max()
            torch.from_numpy(((a - lo) / (hi - lo))[None])
    return run


def monai_pipeline(paths):
    from monai.transforms import Compose, EnsureChannelFirst, LoadImage, ScaleIntensity

    t = Compose([LoadImage(reader="PydicomReader", image_only=True), EnsureChannelFirst(), ScaleIntensity()])

    def run():
        for p in paths:
            t(str(p))
    return run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=40)
    ap.add_argument("--studies", type=int, default=120)
    args = ap.parse_args()
    torch.set_num_threads(2)
    bench = Bench("dicom_read", "slices/s")
    tmp = Path(tempfile.mkdtemp(prefix="bench-dicom-"))
    try:
        sets = {
            "uncompressed 512x512": write_slices(tmp / "native", args.files, ExplicitVRLittleEndian),
            "rle 512x512": write_slices(tmp / "rle", args.files, RLELossless),
            "jpeg2000 lossless 512x512": write_slices(tmp / "j2k", max(8, args.files // 4), JPEG2000Lossless),
        }
        ll = get_testdata_file("JPEG-LL.dcm")
        (tmp / "jll").mkdir()
        sets["jpeg lossless (JPEG-LL.dcm)"] = [Path(shutil.copy(ll, tmp / "jll" / f"{i}.dcm")) for i in range(args.files)]
        for case, paths in sets.items():
            target = ">=1.2x" if case.startswith("uncompressed") else ">=0.9x"
            # the anchor: bare decode to the stored integers, no normalisation (ours does more)
            bench.compare(f"{case}: vs pydicom pixel_array", anchor=("pydicom", bare(paths)),
                          ours=("mmdomain", ours(paths)), items=len(paths), repeats=5, target=target)
            # same output on both sides: pydicom pixel_array + the same min-max to float32 [0, 1]
            bench.compare(f"{case}: vs pydicom + same normalisation", anchor=("pydicom+norm", bare_normalised(paths)),
                          ours=("mmdomain", ours(paths)), items=len(paths), repeats=3)
        for case in ("uncompressed 512x512", "rle 512x512"):
            paths = sets[case]
            bench.compare(f"{case}: vs MONAI PydicomReader", anchor=("monai", monai_pipeline(paths)),
                          ours=("mmdomain", ours(paths)), items=len(paths), repeats=3)
        site = generate(tmp / "synth", num_sites=1, seed=0, studies_per_site=args.studies)[0]
        uncached = MedicalDataset(site, "all", cache=None)
        cached = MedicalDataset(site, "all", cache="memory")
        for i in range(len(cached)):
            cached[i]
        for i in range(len(uncached)):  # warm the header/PHI index alike
            uncached._header_info(i)

        def epoch(ds):
            return lambda: [ds[i] for i in range(len(ds))]

        bench.compare("dataset epoch (site-0: 12-bit CR): cached vs uncached", anchor=("uncached", epoch(uncached)),
                      ours=("cached", epoch(cached)), items=len(cached), repeats=3, target=">=5x")
        disk = MedicalDataset(site, "all", cache="disk", cache_dir=tmp / "cache")
        for i in range(len(disk)):
            disk[i]
        bench.compare("dataset epoch: disk cache vs uncached", anchor=("uncached", epoch(uncached)),
                      ours=("disk-cached", epoch(disk)), items=len(disk), repeats=3, target=">=5x")
        bench.record("peak RSS", peak_rss_mb=round(peak_rss_mb(), 1))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    bench.finish()


if __name__ == "__main__":
    main()
