"""Seeded generator: one folder per site with ``images/*.npy``, ``notes/*.txt`` and ``manifest.csv``."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

URGENT = ["urgent review requested", "needs prompt follow up", "escalate today"]
ROUTINE = ["routine check", "no rush, file for later", "standard follow up next year"]
FILLER = ["seen at clinic", "noted by staff", "second visit", "sample collected"]
SIZE = 32


def _image(rng: np.random.Generator, ring: bool) -> np.ndarray:
    y, x = np.mgrid[:SIZE, :SIZE]
    cy, cx = rng.uniform(10, 22, size=2)
    r = np.hypot(y - cy, x - cx)
    shape = (np.abs(r - 6) < 1.5) if ring else (r < 5)
    img = 0.6 * shape + rng.normal(0, 0.2, (SIZE, SIZE))
    return img[None].astype(np.float32)  # [1, H, W]


def generate(root: str | Path, *, num_sites: int = 2, seed: int = 0, samples_per_site: int = 120,
             missing_image: float = 0.15, missing_note: float = 0.15) -> list[Path]:
    root = Path(root)
    sites = []
    for s in range(num_sites):
        rng = np.random.default_rng([seed, s])
        site = root / f"site-{s}"
        (site / "images").mkdir(parents=True, exist_ok=True)
        (site / "notes").mkdir(parents=True, exist_ok=True)
        rows = []
        for i in range(samples_per_site):
            ring, urgent = bool(rng.integers(2)), bool(rng.integers(2))
            sid = f"s{s}-{i:04d}"
            drop = rng.random()
            has_image = drop >= missing_image
            has_note = not (missing_image <= drop < missing_image + missing_note)
            image_path = note_path = ""
            if has_image:
                image_path = f"images/{sid}.npy"
                np.save(site / image_path, _image(rng, ring))
            if has_note:
                note_path = f"notes/{sid}.txt"
                cue = rng.choice(URGENT if urgent else ROUTINE)
                (site / note_path).write_text(f"{rng.choice(FILLER)}; {cue}. {rng.choice(FILLER)}.\n")
            split = ["train", "train", "train", "val", "test"][i % 5]
            rows.append({"id": sid, "image": image_path, "note": note_path, "label": 2 * int(ring) + int(urgent),
                         "split": split, "site": f"site-{s}"})
        with (site / "manifest.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        sites.append(site)
    return sites
