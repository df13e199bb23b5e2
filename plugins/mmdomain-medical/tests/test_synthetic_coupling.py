"""The generator's shared signal (``coupling``) and small declared image size."""

import csv
import json

import pytest

from mmdomain import get_registry
from mmdomain_medical.synthetic import LABEL_RULES, generate


def _rows(site):
    with (site / "labels.csv").open() as f:
        return list(csv.DictReader(f))


def _implied(rows) -> float:
    """How often "Lung Opacity" (sign 0 AND cue 1) comes with "Cardiomegaly" (sign 1 AND cue 1) and
    "Consolidation" (sign 0 AND cue 0): always when each cue equals its sign."""
    pos = [r for r in rows if r["Lung Opacity"] == "1.0"]
    return sum(r["Cardiomegaly"] == "1.0" and r["Consolidation"] == "1.0" for r in pos) / max(len(pos), 1)


def test_coupling_makes_the_report_cues_follow_the_image_signs(tmp_path):
    assert LABEL_RULES["Lung Opacity"] == (0, 1) and LABEL_RULES["Cardiomegaly"] == (1, 1)
    assert LABEL_RULES["Consolidation"] == (0, 0)
    coupled = generate(tmp_path / "c", num_sites=1, seed=3, studies_per_site=120, image_size=32, coupling=1.0,
                       uncertain_rate=0.0)[0]
    free = generate(tmp_path / "f", num_sites=1, seed=3, studies_per_site=120, image_size=32, coupling=0.0,
                    uncertain_rate=0.0)[0]
    assert _implied(_rows(coupled)) == 1.0
    assert _implied(_rows(free)) < 0.6
    with pytest.raises(ValueError, match="coupling"):
        generate(tmp_path / "bad", num_sites=1, coupling=1.5)


def test_small_images_are_declared_and_read_at_their_size(tmp_path):
    site = generate(tmp_path, num_sites=1, seed=0, studies_per_site=6, image_size=32)[0]
    assert json.loads((site / "dataset.json").read_text()) == {"image_size": 32}
    ds = get_registry().dataset("medical").build(site, split="all")
    sample = next(ds[i] for i in range(len(ds)) if "dicom_image" in ds[i].inputs)
    assert tuple(sample.inputs["dicom_image"].shape) == (1, 32, 32)
    big = get_registry().dataset("medical").build(site, split="all", image_size=64)  # explicit options win
    assert tuple(next(big[i] for i in range(len(big)) if "dicom_image" in big[i].inputs)
                 .inputs["dicom_image"].shape) == (1, 64, 64)
    (site / "dataset.json").write_text("[1, 2]")
    with pytest.raises(Exception, match="dataset.json: expected a JSON object"):
        get_registry().dataset("medical").build(site, split="all")
