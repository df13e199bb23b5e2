"""The plugin: what remote sensing contributes to mmdomain, through its hooks."""

from __future__ import annotations

from pathlib import Path

from mmdomain import DatasetSpec, EncoderSpec, ModalitySpec, SyntheticSpec, hookimpl

from .bands import S1_POLARISATIONS, S2_BANDS
from .synthetic import CLASSES

DEFAULT_MODEL = {
    "modalities": ["s1", "s2"],
    "encoders": {"s2": {"name": "s2_cnn", "options": {"out_dim": 64, "width": 16}},
                 "s1": {"name": "sar_cnn", "options": {"out_dim": 64, "width": 16}}},
    "fusion": {"name": "concat", "options": {"out_dim": 64}},
    "task": {"name": "multilabel", "options": {"num_labels": len(CLASSES), "labels": list(CLASSES)}},
    "modality_dropout": 0.2,
}


def _load_s2(path: Path):
    import torch

    from .s2 import open_s2, read_s2

    product = open_s2(path)
    refl, _, _ = read_s2(product, product.grid())
    return torch.from_numpy(refl)


def _load_s1(path: Path):
    import torch

    from .grid import Grid
    from .s1 import open_s1, polarisation_of, read_s1

    path = Path(path)
    files = [f for f in path.parent.glob(path.name.replace(polarisation_of(path) or "", "*")) if polarisation_of(f)]
    acq = open_s1(files or [path])
    from .handles import open_raster

    src = open_raster(next(iter(acq.files.values())))
    res = abs(src.transform.a) if src.crs is not None else 10.0
    db, _ = read_s1(acq, Grid(acq.crs, res, acq.bounds))
    return torch.from_numpy(db)


def _build_scenes(root, split="train", **options):
    from .dataset import SceneFolderDataset

    return SceneFolderDataset(root, split, **options)


def _describe(dataset):
    from .dataset import describe

    return describe(dataset)


def _generate(root, *, num_sites=2, seed=0, **options):
    from .synthetic import generate

    return generate(root, num_sites=num_sites, seed=seed, **options)


def _s2_cnn(modality, **options):
    from .encoders import MultispectralCNN

    return MultispectralCNN(modality, **options)


def _sar_cnn(modality, **options):
    from .encoders import SARCNN

    return SARCNN(modality, **options)


@hookimpl
def register_modalities(register):
    register(ModalitySpec("s2", "raster", channels=len(S2_BANDS), loader=_load_s2, extensions=(".jp2", ".safe"),
                          description=f"Sentinel-2 L2A surface reflectance, bands {', '.join(S2_BANDS)}"))
    register(ModalitySpec("s1", "raster", channels=len(S1_POLARISATIONS), loader=_load_s1,
                          description="Sentinel-1 GRD/RTC backscatter in dB, VV and VH"))


@hookimpl
def register_encoders(register):
    register(EncoderSpec("s2_cnn", ("raster",), _s2_cnn, out_dim=128, supports_dense=True,
                         description="multispectral CNN (GroupNorm; or any timm backbone, random init / local "
                                     "weights), per-band normalisation from the site's stats"))
    register(EncoderSpec("sar_cnn", ("raster",), _sar_cnn, out_dim=128, supports_dense=True,
                         description="SAR CNN over dB backscatter + cross-pol ratio, clipped, normalised"))


@hookimpl
def register_datasets(register):
    register(DatasetSpec("s2s1_scenes", ("s1", "s2"), _build_scenes, default_model=DEFAULT_MODEL,
                         describe=_describe,
                         description="S2 L2A + S1 scene folder, co-registered on the fly, paired in time; "
                                     "options: task=multilabel|segmentation|contrastive, patch_size, max_cloud, "
                                     "time_tolerance_days, s1_units, res, crs"))


@hookimpl
def register_synthetic(register):
    register(SyntheticSpec("s2s1_regions", "s2s1_scenes", _generate,
                           description="seeded S2 SAFE (JP2, UTM, clouds) + S1 (EPSG:4326, dB, nodata) regions "
                                       "whose land cover needs both sensors",
                           quick_options={"scenes_per_site": 1, "size": 128, "patch_size": 32}))


@hookimpl
def detect_modality(path):
    from .s1 import polarisation_of
    from .s2 import is_s2_product

    p = Path(path)
    if p.suffix.lower() in (".tif", ".tiff") and polarisation_of(p):
        return "s1"
    if p.exists() and is_s2_product(p):
        return "s2"
    return None


@hookimpl
def register_commands(cli):
    from .commands import rs

    cli.add_command(rs)
