"""The plugin: what remote sensing contributes to mmdomain, through its hooks.

Loading it (the registry loads every plugin: ``plugins list``, ``--help``) imports only the
sensor facts, the model configs and the encoders (torch): the readers, datasets, generator and
commands need rasterio (the BigEarthNet layout pandas + pyarrow too) and are imported when first
used: the specs' callables are ``lazy`` (keeping their target's signature), the loaders and hooks
import inside.
"""

from __future__ import annotations

from pathlib import Path

import torch

from mmdomain import DatasetSpec, EncoderSpec, ModalitySpec, SyntheticSpec, hookimpl
from mmdomain.registry import lazy

from .bands import S1_POLARISATIONS, S2_BANDS
from .encoders import SARCNN, MultispectralCNN
from .models import BIGEARTHNET_MODEL, DEFAULT_MODEL, SCENE_TASKS, SEN12MS_MODEL, SEN12MS_TASKS, model_for
from .pretrained import TorchGeoResNet

__all__ = ["BIGEARTHNET_MODEL", "DEFAULT_MODEL", "SEN12MS_MODEL", "model_for"]  # re-exported from models


def _load_s2(path: Path):
    from .s2 import open_s2, read_s2

    product = open_s2(path)
    refl, _, _ = read_s2(product, product.grid())
    return torch.from_numpy(refl)


def _load_s1(path: Path):
    from .grid import Grid
    from .handles import gcp_transform, open_raster
    from .s1 import open_s1, polarisation_of, read_s1

    path = Path(path)
    files = [f for f in path.parent.glob(path.name.replace(polarisation_of(path) or "", "*")) if polarisation_of(f)]
    acq = open_s1(files or [path])
    src = open_raster(next(iter(acq.files.values())))
    t = src.transform if src.crs is not None else gcp_transform(src, tolerance_px=1e9)
    res = abs(t.a) if t is not None else 10.0
    db, _ = read_s1(acq, Grid(acq.crs, res, acq.bounds))
    return torch.from_numpy(db)


def _build_bigearthnet(root, split="train", **options):
    from .layouts.bigearthnet import BigEarthNetV2  # pandas + pyarrow: only when BigEarthNet is read

    return BigEarthNetV2(root, split, **options)


@hookimpl
def register_modalities(register):
    register(ModalitySpec("s2", "raster", channels=len(S2_BANDS), loader=_load_s2, extensions=(".jp2", ".safe"),
                          description=f"Sentinel-2 L2A surface reflectance, bands {', '.join(S2_BANDS)}; a dataset "
                                      "read with s2_bands=[...] has those channels instead, and its model's s2 "
                                      "encoder takes them (models.model_for(data options))"))
    register(ModalitySpec("s1", "raster", channels=len(S1_POLARISATIONS), loader=_load_s1,
                          description="Sentinel-1 GRD/RTC backscatter in dB, VV and VH"))


@hookimpl
def register_encoders(register):
    register(EncoderSpec("s2_cnn", ("raster",), MultispectralCNN, out_dim=128, supports_dense=True,
                         supports_tokens=True,
                         description="multispectral CNN (GroupNorm; or any timm backbone, random init / local "
                                     "weights); options bands (the dataset's s2_bands) or in_channels, and per-band "
                                     "mean/std (the site's stats, via models.model_for)"))
    register(EncoderSpec("sar_cnn", ("raster",), SARCNN, out_dim=128, supports_dense=True, supports_tokens=True,
                         description="SAR CNN over dB backscatter + cross-pol ratio, clipped, normalised"))
    register(EncoderSpec("torchgeo_resnet", ("raster",), TorchGeoResNet, out_dim=128, supports_dense=True,
                         description="ResNet18/50 with torchgeo's Sentinel-2/-1 pretrained weights, read offline from "
                                     "the torch hub cache (never downloaded); options weights='ResNet18_Weights."
                                     "SENTINEL2_ALL_MOCO' (or weights_path), out_dim, bands, fill_missing, dn_offset, "
                                     "weights_sha256; band order and scale mapped to the weights'"))


@hookimpl
def register_datasets(register):
    register(DatasetSpec("s2s1_scenes", ("s1", "s2"), lazy(f"{__package__}.dataset:SceneFolderDataset"),
                         default_model=DEFAULT_MODEL, describe=lazy(f"{__package__}.dataset:describe"),
                         task_option=SCENE_TASKS,
                         description="S2 L2A + S1 scene folder, co-registered on the fly, paired in time; "
                                     "options: task=multilabel|segmentation|contrastive, patch_size, max_cloud, "
                                     "time_tolerance_days, s1_units, res, crs, s2_bands (a subset, e.g. "
                                     "['B02','B03','B04','B08']; then model: models.model_for(options))"))
    register(DatasetSpec("bigearthnet_v2", ("s1", "s2"), _build_bigearthnet,
                         description="BigEarthNet v2 / reBEN: S2 L2A patch folders (per-band GeoTIFFs at 10/20/60 m) "
                                     "+ S1 VV/VH, metadata.parquet; 19-class multilabel; S1 absent when unpaired; "
                                     "options: s2_offset (default 0, pre-04.00), s2_dir, s1_dir, metadata, s2_bands"))
    register(DatasetSpec("sen12ms", ("s1", "s2"), lazy(f"{__package__}.layouts.sen12ms:SEN12MS"),
                         task_option=SEN12MS_TASKS,
                         description="SEN12MS ROI folders: S1 (VV, VH dB), S2 L1C 13 bands (B10 dropped -> 12, "
                                     "DN/10000, TOA), IGBP simplified to 10 classes; options: "
                                     "task=multiclass (majority)|segmentation|contrastive, s2_bands"))


@hookimpl
def register_synthetic(register):
    register(SyntheticSpec("s2s1_regions", "s2s1_scenes", lazy(f"{__package__}.synthetic:generate"),
                           description="seeded S2 SAFE (JP2, UTM, clouds) + S1 (EPSG:4326, dB, nodata) regions "
                                       "whose land cover needs both sensors",
                           quick_options={"scenes_per_site": 1, "size": 128, "patch_size": 32},
                           demo_options={"scenes_per_site": 2, "size": 192, "patch_size": 16},
                           demo_public_options={"scenes_per_site": 6},
                           large_options={"scenes_per_site": 2, "size": 512, "patch_size": 16, "coupling": 0.8},
                           demo_quick_options={"scenes_per_site": 1, "size": 128, "patch_size": 16}))


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
