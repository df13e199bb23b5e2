"""Seeded synthetic sites: real L2A-like SAFE products (JP2 at 10/20/60 m, UTM, SCL, MTD with
offsets, clouds over part of the scene), S1 VV/VH GeoTIFFs in EPSG:4326 (dB, nodata, partial
overlap, a couple of days later) and a land-cover raster.

Labels need both sensors: urban vs arable and water vs wetland share one optical spectrum
and differ only in backscatter; broad-leaved vs coniferous forest share backscatter and differ
only optically; clouds hide the optical signal. Sites are regions with different class mixes of
a scene folder's declared default classes (``bands.SCENE_CLASSES``).

``coupling`` (0 to 1) makes the two sensors share the signal the labels depend on, as real
S1/S2 pairs largely do: each class's spectrum and backscatter move from those above toward
looks that tell all six classes apart in either sensor (urban brighter and flatter than arable
in the optical, wetland vegetated rather than open water; coniferous canopy ~3 dB darker than
broad-leaved in the radar). At 0 (the default) the files are the same as without it; above it,
S1<->S2 self-supervision can learn every class, which cross-modal pretraining needs (at 0 the
classes one sensor alone separates are exactly what it cannot learn).
Same seed, same bytes (no clock time is written anywhere).

Heterogeneous federations (off by default; the files are then the same as without them):
``label_skew`` (a Dirichlet concentration alpha > 0) draws each site's class mix from
``Dirichlet(alpha)`` (a smaller alpha: fewer classes dominate a region); ``season_shift`` (0 to 1)
moves each site's acquisitions toward winter by ``SITE_SEASONS[site]`` (up to four months later):
the broad-leaved canopy loses up to half its red-edge and near-infrared reflectance, the conifers
a fifth, arable land a third, snow covers up to 40% of the land in patches (bright in the visible,
dark in the short-wave infrared; SCL 11) and frozen ground lowers the land's backscatter by up
to 3 dB; ``cloud_climate`` (0 to 1) gives each site its cloudiness
(``SITE_CLOUDINESS[site]`` added to both ends of ``cloud_cover``, so more patches lose their optical
view). Sites holding only some sensors are the federated app's ``site-modalities`` (``2=s1``).
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin
from rasterio.warp import transform as warp_points
from rasterio.warp import transform_bounds

from mmdomain.data import write_declared_options

from .bands import S2_ALL_BANDS, S2_BANDS, S2_RESOLUTION_M, SCENE_CLASSES

CLASS_VALUES = (1, 2, 3, 4, 5, 6)  # values in the label rasters
_BARE = (0.12, 0.14, 0.17, 0.21, 0.23, 0.24, 0.25, 0.27, 0.28, 0.28, 0.32, 0.28)
_BROAD = (0.03, 0.05, 0.08, 0.04, 0.11, 0.29, 0.36, 0.40, 0.42, 0.41, 0.21, 0.10)
_CONIF = (0.02, 0.03, 0.05, 0.03, 0.07, 0.17, 0.21, 0.23, 0.24, 0.24, 0.12, 0.05)
_WATER = (0.06, 0.07, 0.06, 0.04, 0.03, 0.02, 0.02, 0.02, 0.02, 0.01, 0.01, 0.005)
SPECTRA = np.array([_BARE, _BARE, _BROAD, _CONIF, _WATER, _WATER], np.float32)  # optical: 4 distinct looks
BACKSCATTER_DB = np.array([[-2.0, -9.0], [-13.0, -20.0], [-8.0, -14.0], [-8.0, -14.0], [-22.0, -29.0],
                           [-5.0, -17.0]], np.float32)  # VV, VH: 5 distinct looks
# the looks at coupling 1: every class distinct in either sensor
_URBAN = (0.19, 0.20, 0.21, 0.22, 0.22, 0.22, 0.22, 0.23, 0.23, 0.23, 0.25, 0.24)
_WETLAND = (0.04, 0.05, 0.07, 0.05, 0.08, 0.14, 0.17, 0.18, 0.19, 0.18, 0.09, 0.04)
SPECTRA_COUPLED = np.array([_URBAN, _BARE, _BROAD, _CONIF, _WATER, _WETLAND], np.float32)
BACKSCATTER_DB_COUPLED = np.array([[-2.0, -9.0], [-13.0, -20.0], [-7.0, -13.0], [-10.0, -17.0], [-22.0, -29.0],
                                   [-5.0, -17.0]], np.float32)
SCL_OF_CLASS = np.array([5, 5, 4, 4, 6, 6], np.uint8)
SITE_MIXES = ([4, 3, 2, 1, 1, 1], [1, 1, 1, 3, 2, 3])
SITE_SEASONS = (0.0, 1.0, 0.5, 0.75, 0.25, 0.9)  # how far toward winter a site's scenes are at season_shift = 1
SITE_CLOUDINESS = (0.0, 0.45, 0.2, 0.35, 0.1, 0.3)  # added to cloud_cover at cloud_climate = 1
WINTER_LOSS = np.array([0.0, 0.33, 0.5, 0.2, 0.0, 0.0], np.float32)  # per class: red-edge/NIR lost in winter
RED_EDGE_NIR = slice(4, 9)  # B05, B06, B07, B08, B8A
SNOW = np.array((0.85, 0.85, 0.83, 0.8, 0.78, 0.76, 0.74, 0.72, 0.7, 0.6, 0.1, 0.08), np.float32)
LAND = np.array([True, True, True, True, False, False])  # the classes snow can cover and frost can darken
UTM = "EPSG:32632"
ENL = 10.0  # equivalent number of looks of the speckle


def _labels(rng, n: int, mix) -> np.ndarray:
    seeds = max(6, int(2.5 * (n / 32) ** 2))
    pts = rng.uniform(0, n, (seeds, 2))
    cls = rng.choice(len(SCENE_CLASSES), seeds, p=np.asarray(mix, float) / np.sum(mix))
    yy, xx = np.mgrid[:n, :n].astype(np.float32) + 0.5
    d = (yy[None] - pts[:, 0, None, None]) ** 2 + (xx[None] - pts[:, 1, None, None]) ** 2
    return cls[d.argmin(0)].astype(np.uint8)


def _clouds(rng, n: int, cover: float) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[:n, :n].astype(np.float32)
    core = np.zeros((n, n), bool)
    edge = np.zeros((n, n), bool)
    while core.mean() < cover:
        cy, cx, r = rng.uniform(0, n), rng.uniform(0, n), rng.uniform(n / 12, n / 6)
        d = np.hypot(yy - cy, xx - cx)
        core |= d < r
        edge |= d < 1.25 * r
    return core, edge & ~core


def _snow(rng, n: int, cover: float) -> np.ndarray:
    """Patches covering about ``cover`` of an ``n x n`` grid: a coarse random field, upsampled and cut."""
    cells = -(-n // 16) + 1
    field = np.kron(rng.random((cells, cells)), np.ones((16, 16)))[:n, :n]
    return field > np.quantile(field, 1 - cover)


def _block_mean(a: np.ndarray, f: int) -> np.ndarray:
    if f == 1:
        return a
    n = -(-a.shape[0] // f) * f
    pad = np.pad(a, ((0, n - a.shape[0]), (0, n - a.shape[1])), mode="edge")
    return pad.reshape(n // f, f, n // f, f).mean((1, 3))


def _block_mode(a: np.ndarray, f: int) -> np.ndarray:
    n = -(-a.shape[0] // f) * f
    pad = np.pad(a, ((0, n - a.shape[0]), (0, n - a.shape[1])), mode="edge")
    return pad.reshape(n // f, f, n // f, f)[:, 0, :, 0]  # top-left sample: deterministic, class-preserving


def _write(path: Path, arr: np.ndarray, *, crs, transform, nodata=None, tags=None, jp2=False, descriptions=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = arr[None] if arr.ndim == 2 else arr
    opts = dict(driver="JP2OpenJPEG", QUALITY=100, REVERSIBLE="YES") if jp2 else \
        dict(driver="GTiff", tiled=True, blockxsize=128, blockysize=128, compress="deflate")
    with rasterio.open(path, "w", width=arr.shape[2], height=arr.shape[1], count=arr.shape[0], dtype=arr.dtype,
                       crs=crs, transform=transform, nodata=nodata, **opts) as dst:
        dst.write(arr)
        if tags:
            dst.update_tags(**tags)
        for i, d in enumerate(descriptions or []):
            dst.set_band_description(i + 1, d)


def _mtd(path: Path, when: datetime) -> None:
    offsets = "\n".join(f'        <BOA_ADD_OFFSET band_id="{i}">-1000</BOA_ADD_OFFSET>' for i in range(len(S2_ALL_BANDS)))
    path.write_text(f"""<?xml version="1.0" encoding="UTF-8"?>
<n1:Level-2A_User_Product xmlns:n1="https://psd-14.sentinel2.eo.esa.int/PSD/User_Product_Level-2A.xsd">
  <n1:General_Info>
    <Product_Info>
      <PRODUCT_START_TIME>{when:%Y-%m-%dT%H:%M:%S}.024Z</PRODUCT_START_TIME>
      <PROCESSING_LEVEL>Level-2A</PROCESSING_LEVEL>
      <PRODUCT_TYPE>S2MSI2A</PRODUCT_TYPE>
      <PROCESSING_BASELINE>05.09</PROCESSING_BASELINE>
    </Product_Info>
    <Product_Image_Characteristics>
      <QUANTIFICATION_VALUES_LIST>
        <BOA_QUANTIFICATION_VALUE unit="none">10000</BOA_QUANTIFICATION_VALUE>
      </QUANTIFICATION_VALUES_LIST>
      <BOA_ADD_OFFSET_VALUES_LIST>
{offsets}
      </BOA_ADD_OFFSET_VALUES_LIST>
    </Product_Image_Characteristics>
  </n1:General_Info>
</n1:Level-2A_User_Product>
""")


def write_s2_safe(folder: Path, refl: np.ndarray, scl20: np.ndarray, *, x0: float, y0: float, when: datetime,
                  tile: str = "32TMT") -> Path:
    """An L2A SAFE-like product from 10 m reflectance ``[12, n, n]`` (bands are averaged to their resolution)."""
    stamp = f"{when:%Y%m%dT%H%M%S}"
    safe = folder / f"S2A_MSIL2A_{stamp}_N0509_R065_T{tile}_{stamp}.SAFE"
    granule = safe / "GRANULE" / f"L2A_T{tile}_A000000_{stamp}" / "IMG_DATA"
    for i, b in enumerate(S2_BANDS):
        r = S2_RESOLUTION_M[b]
        dn = np.clip(np.round(_block_mean(refl[i], r // 10) * 10000 + 1000), 1, 65535).astype(np.uint16)
        _write(granule / f"R{r}m" / f"T{tile}_{stamp}_{b}_{r}m.jp2", dn, crs=UTM,
               transform=from_origin(x0, y0, r, r), nodata=0, jp2=True)
    _write(granule / "R20m" / f"T{tile}_{stamp}_SCL_20m.jp2", scl20, crs=UTM, transform=from_origin(x0, y0, 20, 20),
           nodata=0, jp2=True)
    _mtd(safe / "MTD_MSIL2A.xml", when)
    return safe


def looks(coupling: float) -> tuple[np.ndarray, np.ndarray]:
    """The classes' optical spectra ``[6, 12]`` and VV/VH backscatter in dB ``[6, 2]`` at ``coupling``."""
    if not 0.0 <= coupling <= 1.0:
        raise ValueError(f"coupling must be in [0, 1], got {coupling}")
    if coupling == 0.0:
        return SPECTRA, BACKSCATTER_DB
    mix = np.float32(coupling)
    return (1 - mix) * SPECTRA + mix * SPECTRA_COUPLED, (1 - mix) * BACKSCATTER_DB + mix * BACKSCATTER_DB_COUPLED


def write_s1(folder: Path, label: np.ndarray, rng, *, x0: float, y0: float, when: datetime, shift: float = 0.25,
             res_deg: float = 0.00016, nodata_rows: float = 0.08, backscatter_db: np.ndarray = BACKSCATTER_DB
             ) -> list[Path]:
    """VV/VH dB GeoTIFFs in EPSG:4326 over the S2 footprint shifted east by ``shift`` of its width."""
    n = label.shape[0]
    w, s, e, nb = transform_bounds(UTM, "EPSG:4326", x0, y0 - 10 * n, x0 + 10 * n, y0)
    dx = (e - w) * shift
    w, e = w + dx, e + dx
    cols, rows = int(np.ceil((e - w) / res_deg)), int(np.ceil((nb - s) / res_deg))
    lon = w + (np.arange(cols) + 0.5) * res_deg
    lat = nb - (np.arange(rows) + 0.5) * res_deg
    lo, la = np.meshgrid(lon, lat)
    xs, ys = warp_points("EPSG:4326", UTM, lo.ravel().tolist(), la.ravel().tolist())
    c = np.floor((np.asarray(xs) - x0) / 10).astype(int).reshape(rows, cols)
    r = np.floor((y0 - np.asarray(ys)) / 10).astype(int).reshape(rows, cols)
    inside = (c >= 0) & (c < n) & (r >= 0) & (r < n)
    cls = np.where(inside, label[np.clip(r, 0, n - 1), np.clip(c, 0, n - 1)], 1)  # outside S2: arable
    stamp = f"{when:%Y%m%dT%H%M%S}"
    out = []
    for p, pol in enumerate(("VV", "VH")):
        lin = 10 ** (backscatter_db[cls, p] / 10) * rng.gamma(ENL, 1 / ENL, cls.shape)
        db = (10 * np.log10(lin)).astype(np.float32)
        db[: int(nodata_rows * rows)] = -9999.0  # a no-data border, as GRD products have
        path = folder / f"S1A_IW_GRDH_1SDV_{stamp}_{pol}_db.tif"
        _write(path, db, crs="EPSG:4326", transform=from_origin(w, nb, res_deg, res_deg), nodata=-9999.0,
               tags={"UNITS": "dB", "ACQUISITION_TIME": f"{when:%Y-%m-%dT%H:%M:%S}", "POLARISATION": pol})
        out.append(path)
    return out


def generate(root: str | Path, *, num_sites: int = 2, seed: int = 0, scenes_per_site: int = 2, size: int = 256,
             patch_size: int = 64, cloud_cover: tuple[float, float] = (0.05, 0.25), s1_days_after: float = 2.0,
             s1_shift: float = 0.2, coupling: float = 0.0, label_skew: float = 0.0, season_shift: float = 0.0,
             cloud_climate: float = 0.0) -> list[Path]:
    root = Path(root)
    spectra, backscatter_db = looks(coupling)
    if not (label_skew >= 0.0 and np.isfinite(label_skew)):
        raise ValueError(f"label_skew must be 0 (off) or a Dirichlet concentration > 0, got {label_skew}")
    for name, value in (("season_shift", season_shift), ("cloud_climate", cloud_climate)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {value}")
    sites = []
    for s in range(num_sites):
        rng = np.random.default_rng([seed, s])
        mix = SITE_MIXES[s] if s < len(SITE_MIXES) else rng.dirichlet(np.ones(len(SCENE_CLASSES))) * 10 + 0.5
        if label_skew > 0:  # a stream of its own: the other draws stay as without skew
            mix = np.random.default_rng([seed, s, 11]).dirichlet(np.full(len(SCENE_CLASSES), float(label_skew))) + 1e-3
        season = season_shift * SITE_SEASONS[s % len(SITE_SEASONS)]
        site_spectra, site_backscatter = spectra, backscatter_db
        if season > 0:
            site_spectra = spectra.copy()
            site_spectra[:, RED_EDGE_NIR] *= (1 - season * WINTER_LOSS)[:, None]
            site_backscatter = backscatter_db.copy()
            site_backscatter[LAND] -= np.float32(3.0 * season)
        clouds = cloud_cover if cloud_climate == 0 else tuple(
            min(0.9, c + cloud_climate * SITE_CLOUDINESS[s % len(SITE_CLOUDINESS)]) for c in cloud_cover)
        site = root / f"site-{s}"
        for j in range(scenes_per_site):
            x0, y0 = 300000.0 + 30000.0 * (s * scenes_per_site + j), 5000000.0 + 10000.0 * s
            label = _labels(rng, size, mix)
            when = datetime(2023, 6, 1, 10, 30, 31) + timedelta(days=11 * j + 3 * s + round(120 * season))
            refl = site_spectra[label].transpose(2, 0, 1) + rng.normal(0, 0.012, (12, size, size)).astype(np.float32)
            core, edge = _clouds(rng, size, rng.uniform(*clouds))
            refl[:, core] = 0.55 + rng.normal(0, 0.03, (12, int(core.sum()))).astype(np.float32)
            refl[:, edge] = 0.5 * refl[:, edge] + 0.25
            scl10 = SCL_OF_CLASS[label].copy()
            if season > 0:
                snow = _snow(np.random.default_rng([seed, s, j, 13]), size, 0.4 * season) & LAND[label] & ~core & ~edge
                refl[:, snow] = SNOW[:, None] + rng.normal(0, 0.012, (12, int(snow.sum()))).astype(np.float32)
                scl10[snow] = 11
            scl10[edge], scl10[core] = 8, 9
            safe = write_s2_safe(site / "s2", np.clip(refl, 0.0, 1.5), _block_mode(scl10, 2), x0=x0, y0=y0,
                                 when=when, tile=f"32T{'MNPQRS'[s % 6]}{'TUVWXY'[j % 6]}")
            write_s1(site / "s1", label, rng, x0=x0, y0=y0, when=when + timedelta(days=s1_days_after),
                     shift=s1_shift, backscatter_db=site_backscatter)
            _write(site / "labels" / f"{safe.stem}_landcover.tif", np.asarray(CLASS_VALUES, np.uint8)[label],
                   crs=UTM, transform=from_origin(x0, y0, 10, 10), nodata=0)
        (site / "classes.json").write_text(json.dumps({"names": list(SCENE_CLASSES), "values": list(CLASS_VALUES)},
                                                      indent=1) + "\n")
        write_declared_options(site, {"patch_size": patch_size})
        sites.append(site)
    return sites
