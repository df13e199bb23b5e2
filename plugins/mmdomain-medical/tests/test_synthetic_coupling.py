"""The generator's shared signal (``coupling``) and small declared image size."""

import csv
import json

import pydicom
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


def test_heterogeneous_sites_differ_as_asked_and_bad_values_are_refused(tmp_path):
    """``label_skew`` gives each site its own prevalence of the signs (the labels follow it);
    ``intensity_shift`` its own tone curve; both off leave every byte as it was."""
    from mmdomain_medical.synthetic import site_prevalence
    assert site_prevalence(0, 1, 0.0).tolist() == [0.5, 0.5, 0.5]
    skewed = [site_prevalence(0, s, 0.3) for s in range(4)]
    assert all(((p >= 0.05) & (p <= 0.95)).all() for p in skewed)
    assert max(abs(a - b).max() for a in skewed for b in skewed) > 0.3
    sites = generate(tmp_path / "skew", num_sites=2, seed=0, studies_per_site=80, image_size=16, label_skew=0.3,
                     uncertain_rate=0.0, missing_image=0.0, missing_report=0.0)

    def rate(site, name):
        rows = _rows(site)
        return sum(r[name] == "1.0" for r in rows) / len(rows)
    # Cardiomegaly is the heart sign (sign 1) with its cue: prevalence x 0.5 at coupling 0
    assert abs(rate(sites[0], "Cardiomegaly") - rate(sites[1], "Cardiomegaly")) > 0.5 * abs(
        skewed[0][1] - skewed[1][1]) - 0.12
    plain = generate(tmp_path / "plain", num_sites=1, seed=1, studies_per_site=4, image_size=16)[0]
    off = generate(tmp_path / "off", num_sites=1, seed=1, studies_per_site=4, image_size=16, label_skew=0.0,
                   intensity_shift=0.0)[0]
    assert sorted(p.read_bytes() for p in plain.rglob("*") if p.is_file()) == sorted(
        p.read_bytes() for p in off.rglob("*") if p.is_file())
    means = []
    for shift in (0.0, 1.0):
        site = generate(tmp_path / f"shift-{shift}", num_sites=2, seed=1, studies_per_site=12, image_size=16,
                        intensity_shift=shift)[1]  # site 1: gamma 0.55, the brightest tone curve
        pixels = [pydicom.dcmread(f).pixel_array.mean() for f in site.rglob("*.dcm")]
        means.append(sum(pixels) / len(pixels))
    assert means[1] != pytest.approx(means[0], rel=0.01)
    for bad in ({"label_skew": -1.0}, {"label_skew": float("nan")}, {"intensity_shift": 1.5}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            generate(tmp_path / "bad", num_sites=1, **bad)
