"""Labels from reports: the rule-based labeller (negation, uncertainty, plain findings, clause
scope, aggregation, "No Finding"), its linear time on adversarial input, and
``mmdomain medical label`` writing a file that the ``medical`` dataset then reads with the
CheXpert uncertainty policies."""

import csv
import logging
import shutil
import time

import pytest
import torch
from click.testing import CliRunner

from mmdomain import get_registry
from mmdomain_medical.commands import medical
from mmdomain_medical.dataset import MedicalDataset
from mmdomain_medical.deid import DEFAULT_KEY, pseudonym
from mmdomain_medical.facts import CHEXPERT_LABELS
from mmdomain_medical.labeller import MAX_REPORT_CHARS, find_mentions, label_report, label_text
from mmdomain_medical.labels import REPORT_LABELS_FILE, encode
from mmdomain_medical.synthetic import FIRST, LAST

POS, UNC, NEG = "1.0", "-1.0", "0.0"


@pytest.mark.parametrize("text, expected", [
    # negation
    ("No pneumothorax.", {"Pneumothorax": NEG, "No Finding": POS}),
    ("There is no evidence of pneumonia.", {"Pneumonia": NEG}),
    ("No focal consolidation, pleural effusion, or pneumothorax.",
     {"Consolidation": NEG, "Pleural Effusion": NEG, "Pneumothorax": NEG}),
    ("Pleural effusion and pneumothorax are not seen.", {"Pleural Effusion": NEG, "Pneumothorax": NEG}),
    ("Pulmonary edema has resolved.", {"Edema": NEG}),
    ("The endotracheal tube has been removed.", {"Support Devices": NEG}),
    ("Heart size is normal. Normal mediastinal contours.", {"Cardiomegaly": NEG, "Enlarged Cardiomediastinum": NEG}),
    ("The heart is not enlarged.", {"Cardiomegaly": NEG}),
    # uncertainty
    ("Cannot exclude effusion.", {"Pleural Effusion": UNC}),
    ("A small effusion cannot be excluded.", {"Pleural Effusion": UNC}),
    ("Pneumothorax is not excluded.", {"Pneumothorax": UNC}),
    ("Opacity may represent atelectasis.", {"Lung Opacity": POS, "Atelectasis": UNC}),
    ("Basilar opacity, likely atelectasis vs. pneumonia.", {"Lung Opacity": POS, "Atelectasis": UNC, "Pneumonia": UNC}),
    ("Findings are concerning for pneumonia.", {"Pneumonia": UNC}),
    ("Questionable right rib fracture.", {"Fracture": UNC}),
    ("Possible edema, lung opacity.", {"Edema": UNC, "Lung Opacity": UNC}),
    # plain findings
    ("There is a small left pleural effusion.", {"Pleural Effusion": POS, "No Finding": ""}),
    ("Moderate cardiomegaly. Widened mediastinum.", {"Cardiomegaly": POS, "Enlarged Cardiomediastinum": POS}),
    ("Right PICC line tip in the low SVC. Sternotomy wires.", {"Support Devices": POS, "No Finding": POS}),
    ("A 1.5 cm nodule in the right upper lobe.", {"Lung Lesion": POS}),
    ("Left lower lobe consolidation and pleural thickening.", {"Consolidation": POS, "Pleural Other": POS}),
    ("No change in the moderate right effusion.", {"Pleural Effusion": POS}),  # pseudo-negation
    # mixed clauses
    ("No pneumothorax, but a small left effusion.", {"Pneumothorax": NEG, "Pleural Effusion": POS}),
    ("Possible small effusion; no pneumothorax.", {"Pleural Effusion": UNC, "Pneumothorax": NEG}),
    ("No effusion, consolidation is likely.", {"Pleural Effusion": NEG, "Consolidation": UNC}),
    ("Small pericardial effusion.", {"Pleural Effusion": ""}),
    # "No Finding"
    ("The lungs are clear. No acute cardiopulmonary process.", {"No Finding": POS, "Pneumonia": ""}),
    ("Possible pneumonia.", {"No Finding": ""}),
])
def test_sentences(text, expected):
    values = label_text(text)
    assert set(values) == set(CHEXPERT_LABELS)
    assert {k: values[k] for k in expected} == expected, values


def test_not_mentioned_is_blank_and_priority():
    values = label_text("Small left pleural effusion.")
    assert {k for k, v in values.items() if v} == {"Pleural Effusion"}  # "No Finding" blank: a finding
    # positive > uncertain > negative over a report's mentions (CheXpert's aggregation)
    assert label_text("No effusion. Possible effusion. Small effusion.")["Pleural Effusion"] == POS
    assert label_text("No effusion. Effusion cannot be excluded.")["Pleural Effusion"] == UNC
    assert label_text("No effusion. No effusion.")["Pleural Effusion"] == NEG
    assert [(m.label, m.value) for m in find_mentions("No pneumothorax, but a small effusion.")] == [
        ("Pneumothorax", NEG), ("Pleural Effusion", POS)]


def test_sections_and_fallback():
    report = ("INDICATION: Rule out pneumonia, history of heart failure.\nCOMPARISON: None.\n"
              "FINDINGS: No pleural effusion.\nIMPRESSION: No acute process.")
    r = label_report(report)
    assert r.source == "sections" and not r.capped
    assert r.values["Pneumonia"] == "" and r.values["Edema"] == "" and r.values["Pleural Effusion"] == NEG
    assert label_report(report, ["indication"]).values["Pneumonia"] == UNC
    only_indication = label_report("INDICATION: fever.\nCOMPARISON: Consolidation on the prior study.")
    assert only_indication.source == "whole text" and only_indication.values["Consolidation"] == POS
    assert label_report("").source == "empty"


def test_adversarial_long_input_is_fast(caplog):
    no_period = ("no evidence of possible effusion versus heart size is mildly enlarged cannot be excluded, "
                 * 4000)[:300_000]
    for text in (no_period, "a" * 300_000, "mediastin" * 33_000, "heart " * 50_000):
        with caplog.at_level(logging.WARNING, logger="mmdomain_medical.labeller"):
            t0 = time.perf_counter()
            r = label_report("FINDINGS: " + text)
            assert time.perf_counter() - t0 < 1.0
        assert r.capped and f"capped at {MAX_REPORT_CHARS}" in caplog.text
        assert "effusion" not in caplog.text  # the log names lengths, never text
        caplog.clear()
    t0 = time.perf_counter()
    label_text(no_period, max_chars=None)  # uncapped: the patterns themselves are linear
    assert time.perf_counter() - t0 < 5.0


# -- the command and the dataset ------------------------------------------------------------
@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """One synthetic site whose generator labels are moved away: a site with reports, no labels."""
    root = tmp_path_factory.mktemp("label-site")
    site = get_registry().synthetic("medical").generate(root, num_sites=1, seed=0, studies_per_site=24)[0]
    shutil.move(site / "labels.csv", root / "generator-labels.csv")
    return site


def test_label_command_writes_what_the_dataset_reads(site):
    r = CliRunner().invoke(medical, ["label", str(site)])
    assert r.exit_code == 0, r.output
    out = site / REPORT_LABELS_FILE
    assert str(out) in r.output and "Pleural Effusion" in r.output and "uncertain" in r.output
    text = out.read_text()
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0]) == ["study", *CHEXPERT_LABELS]
    assert all(row["study"].startswith("st-") and set(row.values()) - {row["study"]} <= {POS, UNC, NEG, ""}
               for row in rows)
    assert not any(n in text for n in FIRST + LAST) and "s50" not in text and "MRN" not in text
    by_study = {row["study"]: row for row in rows}
    assert any(UNC in row.values() for row in rows)  # the policies below have something to act on
    for policy, u in (("ones", 1), ("zeros", 0), ("ignore", -1)):
        ds = MedicalDataset(site, "all", uncertain=policy, cache=None)
        assert ds.label_table.keys() == by_study.keys()
        labelled = 0
        for i, st in enumerate(ds.studies):
            row = by_study.get(pseudonym(st.key, DEFAULT_KEY, "st-"))
            target = ds.target(i)
            if row is None:  # no report: nothing to label
                assert st.report is None and (target == -1).all()
                continue
            labelled += 1
            expected = [{POS: 1, NEG: 0, UNC: u, "": 0}[row[n]] for n in CHEXPERT_LABELS]
            assert target.tolist() == expected
            assert torch.equal(target, encode(row, CHEXPERT_LABELS, policy))
        assert labelled == len(rows)
    # the dataset's meta id is the key of the file
    ds = MedicalDataset(site, "all", cache=None)
    i = next(i for i, st in enumerate(ds.studies) if st.report is not None)
    assert ds.sample_meta(i)["id"] in by_study


def test_agreement_with_the_generator(site):
    """The synthetic reports state each positive and uncertain label ("There is X", "Possible Y")
    and rarely a negative one: where both give a value they agree, and no positive is missed."""
    out = site.parent / "agreement.csv"
    assert CliRunner().invoke(medical, ["label", str(site), "-o", str(out)]).exit_code == 0
    ours = {row["study"]: row for row in csv.DictReader(out.open())}
    gen = {pseudonym("s" + row["study_id"], DEFAULT_KEY, "st-"): row
           for row in csv.DictReader((site.parent / "generator-labels.csv").open())}
    both = agree = positives = found = 0
    for key, row in ours.items():
        for n in CHEXPERT_LABELS:
            g, v = gen[key][n], row[n]
            if g and v:
                both += 1
                agree += g == v
            if g in (POS, UNC):
                positives += 1
                found += v == g
    assert both > 50 and agree / both >= 0.95
    assert positives and found / positives >= 0.95


def test_label_file_option_sections_and_stdout(site, tmp_path):
    runner = CliRunner()
    out = tmp_path / "elsewhere.csv"
    r = runner.invoke(medical, ["label", str(site), "-o", str(out), "--sections", "impression", "--json"])
    assert r.exit_code == 0, r.output
    assert '"sections": [\n    "impression"\n  ]' in r.output and '"labelled"' in r.output
    ds = MedicalDataset(site, "all", cache=None, label_file=out)
    assert ds.label_table.keys() == {row["study"] for row in csv.DictReader(out.open())}
    r = runner.invoke(medical, ["label", str(site), "-o", "-"])
    assert r.exit_code == 0 and r.stdout.startswith("study,Atelectasis,") and "studies labelled" in r.stderr
    r = runner.invoke(medical, ["label", str(site), "--sections", "findings,nonsense"])
    assert r.exit_code != 0 and "nonsense" in r.output and "Traceback" not in r.output
    with pytest.raises(Exception, match="label file not found"):
        MedicalDataset(site, "all", cache=None, label_file="missing.csv")


def test_generator_labels_still_come_first(site, tmp_path):
    """A site with its own labels.csv keeps reading it; the labeller's file is used only without one."""
    copy = tmp_path / "site"
    shutil.copytree(site, copy)
    shutil.copy(site.parent / "generator-labels.csv", copy / "labels.csv")
    r = CliRunner().invoke(medical, ["label", str(copy)])
    assert r.exit_code == 0 and "the dataset reads labels.csv" in r.output
    ds = MedicalDataset(copy, "all", cache=None)
    assert all(k.isdigit() for k in ds.label_table)


def test_manifest_layout(tmp_path):
    site = tmp_path / "manifest-site"
    site.mkdir()
    reports = {"a1": "FINDINGS: No pneumothorax, but a small left effusion.",
               "a2": "FINDINGS: Cannot exclude pneumonia.\nIMPRESSION: Cardiomegaly.",
               "a3": "IMPRESSION: No acute process."}
    with (site / "manifest.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["study", "report"])
        w.writeheader()
        w.writerows({"study": k, "report": v} for k, v in reports.items())
    r = CliRunner().invoke(medical, ["label", str(site)])
    assert r.exit_code == 0, r.output
    ds = MedicalDataset(site, "all", uncertain="ones", cache=None)
    targets = {st.key: dict(zip(CHEXPERT_LABELS, ds.target(i).tolist())) for i, st in enumerate(ds.studies)}
    assert targets["a1"]["Pleural Effusion"] == 1 and targets["a1"]["Pneumothorax"] == 0
    assert targets["a2"]["Pneumonia"] == 1 and targets["a2"]["Cardiomegaly"] == 1  # uncertain -> 1 (U-ones)
    assert targets["a3"]["No Finding"] == 1 and sum(targets["a3"].values()) == 1


def test_clear_errors(site, tmp_path):
    runner = CliRunner()
    empty = tmp_path / "empty"
    empty.mkdir()
    r = runner.invoke(medical, ["label", str(empty)])
    assert r.exit_code != 0 and str(empty) in r.output and "looked for" in r.output and "Traceback" not in r.output
    images_only = tmp_path / "images-only"
    shutil.copytree(site, images_only, ignore=shutil.ignore_patterns("*.txt", "*.csv"))
    r = runner.invoke(medical, ["label", str(images_only)])
    assert r.exit_code != 0 and "no reports found" in r.output and str(images_only) in r.output
    assert "sNNNN.txt" in r.output and not (images_only / REPORT_LABELS_FILE).exists()
