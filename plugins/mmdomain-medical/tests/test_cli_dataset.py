import csv
import json

import torch
from click.testing import CliRunner

from mmdomain_medical.commands import medical
from mmdomain_medical.dataset import MedicalDataset, describe
from mmdomain_medical.synthetic import FIRST, LAST


def test_vendor_mix_decodes_alike(synth_sites):
    """MONOCHROME2 12-bit raw, MONOCHROME1 16-bit RLE, 14-bit rescaled J2K: all bright = dense in [0, 1]."""
    for site in synth_sites:
        ds = MedicalDataset(site, "all", cache=None)
        s = next(ds[i] for i in range(len(ds)) if "dicom_image" in ds[i].inputs)
        x = s.inputs["dicom_image"]
        assert x.shape == (1, 128, 128) and 0 <= float(x.min()) and float(x.max()) <= 1
        assert float(x[0, :, 64].mean()) > float(x[0, :, 5].mean())  # spine/heart brighter than the air at the edge


def test_describe_and_options(synth_sites):
    ds = MedicalDataset(synth_sites[1], "all", report_sections=["indication", "impression"], uncertain="ones")
    d = describe(ds)
    assert d["studies"] == len(ds) and sum(d["by_pattern"].values()) == len(ds)
    assert set(d["manufacturer"]) == {"Borealis Imaging"} and set(d["photometric"]) == {"MONOCHROME1"}
    assert d["transfer_syntax"] == {"1.2.840.10008.1.2.5": d["by_modality"]["dicom_image"]}
    assert d["report_section_coverage"]["indication"] > 0.5
    json.dumps(d)
    assert "IMPRESSION:" in next(ds[i].inputs["report"] for i in range(len(ds)) if "report" in ds[i].inputs)
    assert not (torch.stack([ds[i].target for i in range(len(ds))]) == -1).any()  # uncertain -> 1, blank -> 0
    ign = MedicalDataset(synth_sites[1], "all", uncertain="ignore")
    default = ign[0].inputs.get("report", "")
    assert "FINDINGS" not in default and "IMPRESSION" not in default


def test_cli_inspect_and_index(synth_sites, tmp_path):
    runner = CliRunner()
    site = synth_sites[2]
    f = next(site.rglob("*.dcm"))
    r = runner.invoke(medical, ["inspect", str(f), "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.output)
    assert info["kind"] == "image" and info["manufacturer"] == "Cygnus Systems" and info["shape"] == [1, 256, 256]
    assert not any(n in r.output for n in FIRST + LAST)
    r = runner.invoke(medical, ["inspect", str(site)])
    assert r.exit_code == 0 and "by_pattern" in r.output
    out = tmp_path / "m.csv"
    r = runner.invoke(medical, ["index", str(site), "-o", str(out)])
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(out.open()))
    assert rows and all(r["study"].startswith("st-") for r in rows)
    assert any(r["path"] and r["report_path"] for r in rows) and any(not r["report_path"] for r in rows)
    bad = tmp_path / "x.dcm"
    bad.write_text("nope")
    r = runner.invoke(medical, ["inspect", str(bad)])
    assert r.exit_code != 0 and str(bad) in r.output and "Traceback" not in r.output


def test_manifest_layout(synth_sites, tmp_path):
    """index -> manifest.csv (+ report text column) is a dataset too."""
    site = synth_sites[0]
    runner = CliRunner()
    assert runner.invoke(medical, ["index", str(site)]).exit_code == 0
    try:
        ds = MedicalDataset(site, "all")
        assert len(ds) > 10 and any("report" in ds[i].inputs for i in range(len(ds)))
    finally:
        (site / "manifest.csv").unlink()


def test_mmdomain_console_script_has_medical(synth_sites):
    import os
    import subprocess
    import sys
    from pathlib import Path

    exe = Path(sys.executable).with_name("mmdomain")
    f = next(synth_sites[1].rglob("*.dcm"))
    r = subprocess.run([str(exe), "medical", "inspect", str(f)], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr
    assert "MONOCHROME1" in r.stdout and not any(n in r.stdout + r.stderr for n in FIRST + LAST)
