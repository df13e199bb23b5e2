"""The plugin: what remote sensing contributes to mmdomain, through its hooks."""

from __future__ import annotations

from pathlib import Path

from mmdomain import DatasetSpec, EncoderSpec, ModalitySpec, SyntheticSpec, hookimpl

from .bands import BIGEARTHNET19, S1_POLARISATIONS, S2_BANDS, SEN12MS_CLASSES
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
    from .handles import gcp_transform, open_raster

    src = open_raster(next(iter(acq.files.values())))
    t = src.transform if src.crs is not None else gcp_transform(src, tolerance_px=1e9)
    res = abs(t.a) if t is not None else 10.0
    db, _ = read_s1(acq, Grid(acq.crs, res, acq.bounds))
    return torch.from_numpy(db)


def _build_scenes(root, split="train", **options):
    from .dataset import SceneFolderDataset

    return SceneFolderDataset(root, split, **options)


def _model_for(task: dict) -> dict:
    m = {k: v for k, v in DEFAULT_MODEL.items() if k != "task"}
    return {**m, "task": task}


# Suggested models (not declared as DatasetSpec.default_model: the contract then requires a synthetic
# generator for the layout, which these two do not have yet).
BIGEARTHNET_MODEL = _model_for({"name": "multilabel", "options": {"num_labels": 19, "labels": list(BIGEARTHNET19)}})
SEN12MS_MODEL = _model_for({"name": "multiclass", "options": {"num_classes": len(SEN12MS_CLASSES)}})


def _build_bigearthnet(root, split="train", **options):
    from .layouts.patches import BigEarthNetV2

    return BigEarthNetV2(root, split, **options)


def _build_sen12ms(root, split="train", **options):
    from .layouts.patches import SEN12MS

    return SEN12MS(root, split, **options)


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
    register(DatasetSpec("bigearthnet_v2", ("s1", "s2"), _build_bigearthnet,
                         description="BigEarthNet v2 / reBEN: S2 L2A patch folders (per-band GeoTIFFs at 10/20/60 m) "
                                     "+ S1 VV/VH, metadata.parquet; 19-class multilabel; S1 absent when unpaired; "
                                     "options: s2_offset (default 0, pre-04.00), s2_dir, s1_dir, metadata"))
    register(DatasetSpec("sen12ms", ("s1", "s2"), _build_sen12ms,
                         description="SEN12MS ROI folders: S1 (VV, VH dB), S2 L1C 13 bands (B10 dropped -> 12, "
                                     "DN/10000, TOA), IGBP simplified to 10 classes; options: "
                                     "task=multiclass (majority)|segmentation|contrastive"))


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
