"""Aligned S2+S1 256x256 patches (S2 10 m UTM, S1 EPSG:4326) vs torchgeo 0.10 ``Sentinel2 & Sentinel1``
with a RandomGeoSampler on the same files. Ratios = mmdomain / torchgeo patches/s.

Status: written at the end of the session and NOT yet run end to end; the torchgeo side works
around the FIELD-NOTES traps (explicit res/crs for Sentinel1, GeoTIFF copies named as torchgeo expects).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from harness import Bench, peak_rss_mb  # noqa: E402


def main() -> None:
    import torch

    from mmdomain_remote_sensing.dataset import SceneFolderDataset
    from mmdomain_remote_sensing.handles import clear
    from mmdomain_remote_sensing.samplers import RandomPatchSampler
    from mmdomain_remote_sensing.synthetic import generate

    tmp = Path(tempfile.mkdtemp(prefix="rs-bench-"))
    site = generate(tmp, num_sites=1, seed=0, scenes_per_site=1, size=768, patch_size=256, s1_shift=0.0)[0]
    ds = SceneFolderDataset(site, "all", task="contrastive", patch_size=256, max_cloud=1.0, min_valid=0.0)
    n = 16
    sampler = RandomPatchSampler(ds, size=256, length=n, region="s2", generator=torch.Generator().manual_seed(0))
    boxes = list(sampler)

    def ours():
        for b in boxes:
            ds[b]

    import rasterio
    from rasterio.windows import Window

    b02 = next(site.rglob("*_B02_10m.jp2"))

    def raw():
        with rasterio.open(b02) as src:
            for i in range(n):
                src.read(1, window=Window((i * 37) % 512, (i * 53) % 512, 256, 256))

    bench = Bench("rs_patches", "patches/s")
    for cache_mb in ("512", "32"):
        os.environ["GDAL_CACHEMAX"] = cache_mb
        clear()
        bench.compare(f"aligned vs raw windowed read, GDAL_CACHEMAX={cache_mb}MB", anchor=("raw B02 read", raw),
                      ours=("mmdomain", ours), items=n, repeats=3)
    bench.record("peak_rss", mb=round(peak_rss_mb(), 1))
    bench.finish()


if __name__ == "__main__":
    main()
