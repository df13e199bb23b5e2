"""De-identification: headers per the basic profile, reports scrubbed, and the PHI the
generator seeds appears nowhere downstream (meta, errors, logs, checkpoint + sidecar)."""

import copy
import logging
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch

from dicom_factory import write
from mmdomain import Collate, get_registry
from mmdomain.checkpoint import save_checkpoint
from mmdomain.config import ModelConfig, parse
from mmdomain.models.compose import build_model, fit_tokenizers
from mmdomain.training import texts_for_fitting
from mmdomain_medical.dataset import MedicalDataset, describe
from mmdomain_medical.deid import deidentify, remap_uid, shift_date
from mmdomain_medical.errors import MedicalDataError
from mmdomain_medical.plugin import DEFAULT_MODEL


def seeded_phi(site: Path) -> set[str]:
    """Every identifying value the generator wrote, read back from the raw files."""
    phi: set[str] = set()
    for f in site.rglob("*.dcm"):
        ds = pydicom.dcmread(f)
        for kw in ("PatientName", "ReferringPhysicianName", "OperatorsName"):
            phi.update(p for p in str(ds.get(kw)).split("^") if p)
        for kw in ("PatientID", "OtherPatientIDs", "AccessionNumber", "PatientAddress", "PatientTelephoneNumbers",
                   "InstitutionName", "PatientBirthDate", "StudyDate", "StudyInstanceUID", "SOPInstanceUID"):
            phi.add(str(ds.get(kw)))
    from mmdomain_medical.synthetic import FIRST, LAST

    phi.update(FIRST + LAST)
    return {p for p in phi if len(p) >= 4}


def test_header_deid_basic_profile(tmp_path):
    f = write(tmp_path / "a.dcm", np.zeros((2, 2), np.uint16), PatientBirthDate="19600102", StudyDate="20200315",
              AccessionNumber="A998877", InstitutionName="Gotham General", ReferringPhysicianName="Who^Doctor")
    ds = pydicom.dcmread(f)
    uid, pid = ds.StudyInstanceUID, ds.PatientID
    phi = deidentify(ds)
    assert "Testperson" in phi and "7654321" in phi and "03/15/2020" in phi
    assert str(ds.PatientName) == "" and ds.PatientID != pid and ds.AccessionNumber == ""
    assert "InstitutionName" not in ds and str(ds.ReferringPhysicianName) == "" and ds.PatientBirthDate == ""
    assert ds.StudyInstanceUID == remap_uid(uid) != uid
    assert ds.StudyDate != "20200315" and len(ds.StudyDate) == 8
    ds2 = pydicom.dcmread(f)
    deidentify(ds2)
    assert ds2.StudyDate == ds.StudyDate and ds2.PatientID == ds.PatientID  # consistent per patient
    assert shift_date("20200315", -1) == "20200314"


def test_phi_nowhere_downstream(tmp_path, caplog, synth_sites):
    caplog.set_level(logging.DEBUG)
    site = synth_sites[0]
    phi = seeded_phi(site)
    assert len(phi) > 20
    ds = MedicalDataset(site, "all")
    texts, metas = [], []
    for i in range(len(ds)):
        s = ds[i]
        metas.append(repr(s.meta))
        if "report" in s.inputs:
            texts.append(s.inputs["report"])
        full = ds.raw_report(i)
        if full:
            texts.append(full)
    assert texts and metas
    stats = repr(describe(ds))
    # a broken file in the same tree: the error names the path only
    bad = site / "files" / "p10" / "broken.dcm"
    bad.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\x04\x00abcd" + b"\xff" * 20)
    errors = []
    try:
        from mmdomain_medical.dicom_read import read_dicom

        read_dicom(bad)
    except MedicalDataError as exc:
        errors.append(str(exc))
    bad.unlink()
    # a trained model's checkpoint, with a vocabulary fitted on the site's reports
    reg = get_registry()
    m = copy.deepcopy(DEFAULT_MODEL)
    m["tokenizers"] = {"report": {"name": "wordpiece", "options": {"vocab_size": 500, "min_frequency": 1}}}
    cfg = fit_tokenizers(parse(ModelConfig, m), reg, {"report": texts})
    model = build_model(cfg, reg)
    batch = Collate(model.modalities)([ds[i] for i in range(4)])
    model(batch)
    ckpt = save_checkpoint(model, tmp_path / "model.safetensors", reg, extra={"data": {"root": "site"}})
    blobs = {"meta": "\n".join(metas), "text": "\n".join(texts), "describe": stats, "errors": "\n".join(errors),
             "logs": caplog.text, "checkpoint": ckpt.read_bytes().decode("latin-1"),
             "sidecar": ckpt.with_suffix(".json").read_text()}
    leaks = {(where, p) for where, blob in blobs.items() for p in phi if p.lower() in blob.lower()}
    assert not leaks, sorted(leaks)[:10]


def test_burned_in_refused_in_dataset_unless_warn(tmp_path):
    root = tmp_path / "bi"
    write(root / "x.dcm", np.zeros((4, 4), np.uint16), BurnedInAnnotation="YES")
    ds = MedicalDataset(root, "all")
    with pytest.raises(MedicalDataError, match="BurnedInAnnotation"):
        ds[0]
    ok = MedicalDataset(root, "all", burned_in="warn")
    with pytest.warns(UserWarning):
        assert ok[0].inputs["dicom_image"].shape == (1, 128, 128)
