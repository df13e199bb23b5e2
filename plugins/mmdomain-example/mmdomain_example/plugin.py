"""The plugin: everything the toy domain contributes, through mmdomain's hooks."""

from __future__ import annotations

from mmdomain import DatasetSpec, ModalitySpec, SyntheticSpec, hookimpl

from .dataset import ToyDataset, load_image
from .synthetic import generate

DEFAULT_MODEL = {
    "modalities": ["toy_image", "toy_note"],
    "encoders": {"toy_image": {"name": "cnn", "options": {"out_dim": 64, "width": 16}},
                 "toy_note": {"name": "bag_of_words", "options": {"out_dim": 64}}},
    "tokenizers": {"toy_note": {"name": "hashing", "options": {"buckets": 1024}}},
    "fusion": {"name": "concat", "options": {"out_dim": 64}},
    "task": {"name": "multiclass", "options": {"num_classes": 4}},
    "modality_dropout": 0.1,
}


@hookimpl
def register_modalities(register):
    register(ModalitySpec("toy_image", "image", channels=1, loader=load_image, extensions=(".npy",),
                          description="32x32 grey image"))
    register(ModalitySpec("toy_note", "text", loader=lambda p: p.read_text(), extensions=(".txt",),
                          description="a short free-text note"))


@hookimpl
def register_datasets(register):
    register(DatasetSpec("toy", ("toy_image", "toy_note"), ToyDataset, default_model=DEFAULT_MODEL,
                         description="toy image + note pairs; 4 classes that need both"))


@hookimpl
def register_synthetic(register):
    register(SyntheticSpec("toy", "toy", generate, description="seeded toy sites with missing modalities"))
