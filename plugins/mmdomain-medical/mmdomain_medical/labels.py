"""CheXpert-style label files -> multi-label targets under an explicit uncertainty policy."""

from __future__ import annotations

import csv
from pathlib import Path

import torch

from .errors import MedicalDataError
from .facts import CHEXPERT_LABELS, UNCERTAIN_POLICIES

BLANK_POLICIES: dict[str, int] = {"zeros": 0, "ignore": -1}


def encode(values: dict[str, str], labels: tuple[str, ...] = CHEXPERT_LABELS, uncertain: str = "ignore",
           blank: str = "zeros") -> torch.Tensor:
    """CheXpert values (``1.0``, ``0.0``, ``-1.0``, blank) -> ``long[len(labels)]`` with -1 = not scored."""
    if uncertain not in UNCERTAIN_POLICIES:
        raise MedicalDataError(None, f"uncertain must be one of {sorted(UNCERTAIN_POLICIES)}, got {uncertain!r}")
    if blank not in BLANK_POLICIES:
        raise MedicalDataError(None, f"blank must be one of {sorted(BLANK_POLICIES)}, got {blank!r}")
    out = []
    for name in labels:
        v = str(values.get(name, "") or "").strip()
        if v in ("", "nan", "NaN"):
            out.append(BLANK_POLICIES[blank])
            continue
        try:
            f = float(v)
        except ValueError:
            out.append(-1)
            continue
        out.append(UNCERTAIN_POLICIES[uncertain] if f < 0 else int(f > 0.5))
    return torch.tensor(out, dtype=torch.long)


def read_label_file(path: Path) -> dict[str, dict[str, str]]:
    """``labels.csv`` / ``mimic-cxr-*-chexpert.csv``: study_id -> {label: value}."""
    try:
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, csv.Error, UnicodeDecodeError) as exc:
        raise MedicalDataError(path, f"label file unreadable ({type(exc).__name__})") from None
    if rows and "study_id" not in rows[0]:
        raise MedicalDataError(path, "label file needs a 'study_id' column")
    return {str(r["study_id"]).lstrip("s"): r for r in rows}
