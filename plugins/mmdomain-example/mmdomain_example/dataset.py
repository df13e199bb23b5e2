"""Reads a site folder written by ``synthetic.generate`` (or laid out the same way)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch

from mmdomain import DataError, Sample

SPLITS = ("train", "val", "test", "all")


def load_image(path: Path) -> torch.Tensor:
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable .npy image ({exc})") from None
    if arr.ndim != 3 or arr.shape[0] != 1:
        raise DataError(f"{path}: expected a [1, H, W] array, got shape {arr.shape}")
    return torch.from_numpy(arr.astype(np.float32))


class ToyDataset(torch.utils.data.Dataset):
    def __init__(self, root: str | Path, split: str = "train"):
        self.root = Path(root)
        if split not in SPLITS:
            raise DataError(f"split must be one of {SPLITS}, got {split!r}")
        manifest = self.root / "manifest.csv"
        if not manifest.is_file():
            raise DataError(f"{self.root}: no manifest.csv; is this a site folder written by `mmdomain synth toy`?")
        with manifest.open() as f:
            self.rows = [r for r in csv.DictReader(f) if split == "all" or r["split"] == split]

    def __len__(self) -> int:
        return len(self.rows)

    def sample_meta(self, i: int) -> dict:
        r = self.rows[i]
        return {"id": r["id"], "site": r["site"], "split": r["split"]}

    def available(self, i: int) -> frozenset[str]:
        """The modalities sample ``i`` has, from the manifest alone (the availability protocol)."""
        r = self.rows[i]
        return frozenset(m for m, col in (("toy_image", "image"), ("toy_note", "note")) if r[col])

    def __getitem__(self, i: int) -> Sample:
        r = self.rows[i]
        inputs: dict = {}
        if r["image"]:
            inputs["toy_image"] = load_image(self.root / r["image"])
        if r["note"]:
            inputs["toy_note"] = (self.root / r["note"]).read_text()
        return Sample(inputs, torch.tensor(int(r["label"])), self.sample_meta(i))
