"""DICOM read + decode into normalised tensors (issue #7).

mmdomain-medical's reader vs bare ``pydicom.dcmread(...).pixel_array`` and vs MONAI
``LoadImage(reader="PydicomReader")`` + equivalent intensity transforms, on uncompressed,
JPEG lossless, JPEG 2000 lossless and RLE slices; a cached vs uncached dataset epoch;
peak RSS. Targets: >= 1.2x bare pydicom on uncompressed, >= 0.9x on compressed,
>= 10x MONAI, cached epoch >= 5x uncached.

Sized to take about a minute on a 2-core machine (a quarter of it importing torch / MONAI);
``--files``, ``--studies`` and ``--repeats`` scale it up. The load average at start and end
goes into the results: ratios are side by side in one process, but a loaded machine still
adds noise.

    ./dev bench dicom_read [--files N] [--studies N] [--repeats N]
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import statistics
import sys
import tempfile
import time
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
from mmdomain_medical.dicom_read import read_dicom  # noqa: E402
from mmdomain_medical.intensity import normalise  # noqa: E402
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


def ours_one(p):
    return torch.from_numpy(normalise(read_dicom(p)))


def bare_one(p):
    return pydicom.dcmread(p).pixel_array


def ours(paths):
    def run():
        for p in paths:
            ours_one(p)
    return run


def bare(paths):
    def run():
        for p in paths:
            bare_one(p)
    return run


def paired_ratio(paths, repeats: int) -> tuple[float, int]:
    """Median over slices of (bare pydicom time / ours time), each slice timed anchor, ours, ours,
    anchor back to back: a load change on a shared machine hits both sides of a pair alike, so
    this holds where whole-run medians swing by 10-20%. Returns (ratio, pairs)."""
    ratios = []
    for _ in range(repeats):
        for p in paths:
            t0 = time.perf_counter()
            bare_one(p)
            t1 = time.perf_counter()
            ours_one(p)
            t2 = time.perf_counter()
            ours_one(p)
            t3 = time.perf_counter()
            bare_one(p)
            t4 = time.perf_counter()
            ratios.append((t1 - t0 + t4 - t3) / (t2 - t1 + t3 - t2))
    return statistics.median(ratios), len(ratios)


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
    ap.add_argument("--files", type=int, default=24, help="uncompressed / RLE slices per case")
    ap.add_argument("--studies", type=int, default=48, help="studies in the dataset-epoch comparison")
    ap.add_argument("--repeats", type=int, default=9, help="timed repeats of each decode comparison")
    args = ap.parse_args()
    # the harness runs gc.collect() before every timed run; with torch, MONAI and transformers
    # imported that is ~0.4 s a time here, most of the wall time: freeze what the imports made
    gc.freeze()
    torch.set_num_threads(2)
    bench = Bench("dicom_read", "slices/s")
    load_start = os.getloadavg()
    reps = args.repeats
    tmp = Path(tempfile.mkdtemp(prefix="bench-dicom-"))
    try:
        # the compressed cases are decode-bound (~25-70 ms a slice): fewer files, as many repeats
        sets = {
            "uncompressed 512x512": write_slices(tmp / "native", args.files, ExplicitVRLittleEndian),
            "rle 512x512": write_slices(tmp / "rle", args.files, RLELossless),
            "jpeg2000 lossless 512x512": write_slices(tmp / "j2k", max(4, args.files // 4), JPEG2000Lossless),
        }
        ll = get_testdata_file("JPEG-LL.dcm")
        (tmp / "jll").mkdir()
        sets["jpeg lossless (JPEG-LL.dcm)"] = [Path(shutil.copy(ll, tmp / "jll" / f"{i}.dcm"))
                                               for i in range(max(4, args.files // 2))]
        for case, paths in sets.items():
            target = ">=1.2x" if case.startswith("uncompressed") else ">=0.9x"
            # the anchor: bare decode to the stored integers, no normalisation (ours does more)
            bench.compare(f"{case}: vs pydicom pixel_array", anchor=("pydicom", bare(paths)),
                          ours=("mmdomain", ours(paths)), items=len(paths), repeats=reps, target=target)
            # same output on both sides: pydicom pixel_array + the same min-max to float32 [0, 1]
            bench.compare(f"{case}: vs pydicom + same normalisation", anchor=("pydicom+norm", bare_normalised(paths)),
                          ours=("mmdomain", ours(paths)), items=len(paths), repeats=reps)
            ratio, pairs = paired_ratio(paths, max(1, reps // 3))
            bench.record(f"{case}: vs pydicom pixel_array, paired per slice", ratio=round(ratio, 3), pairs=pairs,
                         target=target)
        # MONAI's transforms run on torch: with two intra-op threads on a shared two-core machine
        # they contend with the other load and MONAI slowed up to ~7x (~15 slices/s instead of
        # ~100), which flatters the ratio. The target row gives MONAI one thread (its best here);
        # the two-thread row is for reference.
        for threads in (1, 2):
            torch.set_num_threads(threads)
            for case in ("uncompressed 512x512", "rle 512x512"):
                paths = sets[case][:12]  # MONAI reads ~15-100 slices/s here
                bench.compare(f"{case}: vs MONAI PydicomReader, {threads} torch thread{'s' * (threads > 1)}",
                              anchor=("monai", monai_pipeline(paths)), ours=("mmdomain", ours(paths)),
                              items=len(paths), repeats=reps, target=">=10x" if threads == 1 else "")
        site = generate(tmp / "synth", num_sites=1, seed=0, studies_per_site=args.studies)[0]
        uncached = MedicalDataset(site, "all", cache=None)
        cached = MedicalDataset(site, "all", cache="memory")
        for i in range(len(cached)):
            cached[i]
        for i in range(len(uncached)):  # warm the header/PHI index alike (one header read per study)
            uncached.image_meta(i)

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
        bench.record("load average (1 min) at start / end", start=round(load_start[0], 2),
                     end=round(os.getloadavg()[0], 2))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    bench.finish()


if __name__ == "__main__":
    main()
