"""CheXpert-style label files -> multi-label targets under an explicit uncertainty policy.

A site's label file is ``labels.csv`` or a ``*chexpert*.csv`` (MIMIC-CXR-JPG), keyed by
``study_id``; else ``labels-from-reports.csv``, written by ``mmdomain medical label`` from the
site's reports and keyed by ``study``, the study pseudonym the dataset puts in ``Sample.meta``.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import IO, Iterable

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


REPORT_LABELS_FILE = "labels-from-reports.csv"  # what ``mmdomain medical label`` writes by default
STUDY_COLUMN = "study"  # the study pseudonym column of a labeller-written file


def find_label_file(root: Path) -> Path | None:
    """The site's label file: ``labels.csv``, else a ``*chexpert*.csv``, else ``labels-from-reports.csv``."""
    for pattern in ("labels.csv", "*chexpert*.csv", REPORT_LABELS_FILE):
        found = sorted(p for p in root.glob(pattern) if p.is_file())
        if found:
            return found[0]
    return None


def read_label_file(path: Path) -> dict[str, dict[str, str]]:
    """``labels.csv`` / ``mimic-cxr-*-chexpert.csv``: study_id -> {label: value}; a file with a
    ``study`` column and no ``study_id`` (``labels-from-reports.csv``): study pseudonym -> {label: value}."""
    try:
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, csv.Error, UnicodeDecodeError) as exc:
        raise MedicalDataError(path, f"label file unreadable ({type(exc).__name__})") from None
    if rows and "study_id" not in rows[0] and STUDY_COLUMN not in rows[0]:
        raise MedicalDataError(path, "label file needs a 'study_id' column (or 'study', the study pseudonym, "
                                     "as `mmdomain medical label` writes)")
    if rows and "study_id" not in rows[0]:
        return {str(r[STUDY_COLUMN]).strip(): r for r in rows}
    return {str(r["study_id"]).lstrip("s"): r for r in rows}


def write_label_file(stream: IO[str], rows: Iterable[dict[str, str]],
                     labels: tuple[str, ...] = CHEXPERT_LABELS) -> None:
    """A CheXpert-format CSV keyed by study pseudonym: ``study`` + one column per label."""
    w = csv.DictWriter(stream, fieldnames=[STUDY_COLUMN, *labels], extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
