"""Sensor facts as data: band order, wavelengths, native resolutions, SCL classes, label names;
and ``s2_band_subset``, the one check of a user's band names (``s2_bands=``, as torchgeo's ``bands=``)."""

from __future__ import annotations

from typing import Iterable

from mmdomain import DataError

#: The 12 Sentinel-2 L2A surface-reflectance bands (B10, cirrus, is not in L2A), in tensor order.
S2_BANDS: tuple[str, ...] = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12")
#: All 13 MSI bands; ``band_id`` in the product metadata (MTD) indexes this tuple.
S2_ALL_BANDS: tuple[str, ...] = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10",
                                 "B11", "B12")
#: Native ground sampling distance in metres.
S2_RESOLUTION_M: dict[str, int] = {"B01": 60, "B02": 10, "B03": 10, "B04": 10, "B05": 20, "B06": 20, "B07": 20,
                                   "B08": 10, "B8A": 20, "B09": 60, "B10": 60, "B11": 20, "B12": 20}
#: Central wavelength in nanometres (S2A).
S2_WAVELENGTH_NM: dict[str, float] = {"B01": 442.7, "B02": 492.4, "B03": 559.8, "B04": 664.6, "B05": 704.1,
                                      "B06": 740.5, "B07": 782.8, "B08": 832.8, "B8A": 864.7, "B09": 945.1,
                                      "B10": 1373.5, "B11": 1613.7, "B12": 2202.4}
S2_RGB: tuple[str, str, str] = ("B04", "B03", "B02")
#: Since processing baseline 04.00 (January 2022): reflectance = (DN + BOA_ADD_OFFSET) / QUANTIFICATION.
S2_BOA_ADD_OFFSET: float = -1000.0
S2_QUANTIFICATION: float = 10000.0
S2_NODATA_DN: int = 0

#: Scene classification (SCL) classes of L2A products.
SCL_CLASSES: dict[int, str] = {0: "no_data", 1: "saturated_or_defective", 2: "dark_area_pixels", 3: "cloud_shadows",
                               4: "vegetation", 5: "not_vegetated", 6: "water", 7: "unclassified",
                               8: "cloud_medium_probability", 9: "cloud_high_probability", 10: "thin_cirrus",
                               11: "snow"}
SCL_CLOUDY: tuple[int, ...] = (3, 8, 9, 10)  # shadows, clouds, cirrus: optical signal unusable
SCL_INVALID: tuple[int, ...] = (0, 1)

S1_POLARISATIONS: tuple[str, ...] = ("VV", "VH")
#: Backscatter in dB is clipped to this range before normalising (speckle outliers, layover).
S1_DB_RANGE: tuple[float, float] = (-40.0, 10.0)
#: Declared normalisation defaults (overridden by statistics computed on a site's own data).
S2_DEFAULT_MEAN: tuple[float, ...] = (0.06, 0.08, 0.10, 0.10, 0.14, 0.20, 0.23, 0.25, 0.26, 0.26, 0.20, 0.14)
S2_DEFAULT_STD: tuple[float, ...] = (0.05,) * 12
S1_DEFAULT_MEAN: tuple[float, ...] = (-11.0, -18.0)
S1_DEFAULT_STD: tuple[float, ...] = (5.0, 5.0)

#: BigEarthNet's 19-class CORINE nomenclature (Sumbul et al. 2021), in its usual order.
BIGEARTHNET19: tuple[str, ...] = (
    "Urban fabric", "Industrial or commercial units", "Arable land", "Permanent crops", "Pastures",
    "Complex cultivation patterns",
    "Land principally occupied by agriculture, with significant areas of natural vegetation",
    "Agro-forestry areas", "Broad-leaved forest", "Coniferous forest", "Mixed forest",
    "Natural grassland and sparsely vegetated areas", "Moors, heathland and sclerophyllous vegetation",
    "Transitional woodland, shrub", "Beaches, dunes, sands", "Inland wetlands", "Coastal wetlands",
    "Inland waters", "Marine waters",
)

#: SEN12MS simplified IGBP (DFC2020) classes, 1-based in the files.
SEN12MS_CLASSES: tuple[str, ...] = ("Forest", "Shrubland", "Savanna", "Grassland", "Wetlands", "Croplands",
                                    "Urban/Built-up", "Snow/Ice", "Barren", "Water")

#: Default land-cover classes of a scene folder (``s2s1_scenes``; its default model and the synthetic
#: regions use them): six CORINE classes, named as in ``BIGEARTHNET19``. A folder with other classes
#: names them in its ``classes.json`` and gets a model for them with ``models.model_for(task=...)``.
SCENE_CLASSES: tuple[str, ...] = ("Urban fabric", "Arable land", "Broad-leaved forest", "Coniferous forest",
                                  "Inland waters", "Inland wetlands")


def s2_band_subset(bands: Iterable[str] | None, where: str = "s2_bands") -> tuple[str, ...]:
    """The Sentinel-2 L2A bands a user named (``None``: all 12), upper-cased, in the given order.

    An unknown name (B10 is not an L2A band) or a repeated one is a ``DataError`` that says ``where``.
    """
    if bands is None:
        return S2_BANDS
    if isinstance(bands, str):
        bands = [bands]
    names = tuple(str(b).strip().upper() for b in bands)
    unknown = [b for b in names if b not in S2_BANDS]
    if unknown:
        raise DataError(f"{where}: unknown Sentinel-2 L2A band(s) {unknown}; the bands are {', '.join(S2_BANDS)}")
    if not names or len(set(names)) != len(names):
        raise DataError(f"{where}: name each band once, at least one, got {list(names)}")
    return names


def s2_default_stats(bands: Iterable[str]) -> tuple[list[float], list[float]]:
    """The declared mean and std of each of ``bands`` (``S2_DEFAULT_MEAN``/``_STD`` picked by name)."""
    idx = [S2_BANDS.index(b) for b in bands]
    return [S2_DEFAULT_MEAN[i] for i in idx], [S2_DEFAULT_STD[i] for i in idx]
