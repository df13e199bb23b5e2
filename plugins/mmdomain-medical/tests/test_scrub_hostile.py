"""Hostile report text (#17 items 2 and 3, text side).

- The header's identifiers are scrubbed in the variants a report writes them in (accents, case,
  dropped apostrophes / hyphens, each name part, digits in any grouping, lower-case accessions,
  "Apt 4B", dates of birth in words), on real DICOM + report studies read by the dataset.
- What the scrubber cannot know (a bare third-party name) survives in the text but never enters
  a fitted vocabulary: only tokens of ``min_groups`` (5) different patients do; the scrubbed
  text, both fitted vocabularies, the checkpoint header, its sidecar, the config and the log are
  grepped for every identifier and its normalised forms.
- Scrubbing and section splitting are linear on crafted lines that made the old patterns
  backtrack (300k characters), and a text over the ceiling is refused, by length only.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicom_factory import write
from mmdomain import Collate, ConfigError, get_registry, limits
from mmdomain.checkpoint import save_checkpoint
from mmdomain.config import ModelConfig, parse
from mmdomain.models.compose import build_model, fit_tokenizers
from mmdomain.tokenizers import WordVocabTokenizer
from mmdomain.training import texts_for_fitting
from mmdomain_medical.dataset import MedicalDataset
from mmdomain_medical.deid import known_phi, ordinal
from mmdomain_medical.errors import MedicalDataError
from mmdomain_medical.facts import CHEXPERT_LABELS
from mmdomain_medical.reports import REDACTED, fold, scrub_text, skeleton, split_sections

SECTIONS = ("indication", "comparison", "findings", "impression")
# name, MRN, accession, birth date, address, phone, referring physician; reports write them as variants
PATIENTS = [
    ("Núñez^José", "1234567", "A87654321", "19610303", "12 Maple Street Apt 4B, Springfield, MA 01234",
     "(617) 555-0199", "Vandersloot^Cornelius"),
    ("O'Brien-Smith^Mary", "2345678", "A76543210", "19700521", "9 Elm Road Unit 7C, Riverton, MA 02111",
     "(508) 555-0142", "Quackenbush^Philippa"),
    ("Ødegård^Søren", "3456789", "B65432109", "19551130", "40 Oak Avenue Suite 12, Lakeside, MA 01999",
     "(413) 555-0177", "Fairweather^Thaddeus"),
    ("Müller-Lüdenscheidt^Jürgen", "4567890", "C54321098", "19820102", "7 Pine Lane Apt 3A, Fairview, MA 01777",
     "(781) 555-0110", "Throckmorton^Ottoline"),
    ("D'Angelo^Renée", "5678901", "D43210987", "19471212", "88 Birch Court Apt 9F, Springfield, MA 01235",
     "(617) 555-0133", "Pennyworth^Barnaby"),
    ("Blatherwick^Griselda", "6789012", "E32109876", "19910715", "3 Cedar Drive Apt 2D, Riverton, MA 02112",
     "(508) 555-0188", "Higginbotham^Leopold"),
    ("Ravenscroft^Ignatius", "7890123", "F21098765", "19660808", "51 Ash Way Apt 6E, Lakeside, MA 01998",
     "(413) 555-0166", "Winterbottom^Evander"),
]
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")
WORDS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth", "eleventh",
         "twelfth", "thirteenth", "fourteenth", "fifteenth", "sixteenth", "seventeenth", "eighteenth", "nineteenth",
         "twentieth", "twenty-first", "twenty-second", "twenty-third", "twenty-fourth", "twenty-fifth", "twenty-sixth",
         "twenty-seventh", "twenty-eighth", "twenty-ninth", "thirtieth", "thirty-first")
UNSCRUBBABLE = "throgwaddle"  # a bare third-party name no header holds, in one patient's report
ONE_PATIENT_MANY_STUDIES = "brumblecombe"  # idem, in all six studies of patient 1
COMMON = "hyperinflation"  # in every patient's report: a fitted vocabulary must keep it
FOUR_PATIENTS, FIVE_PATIENTS = "bronchiectasis", "emphysema"  # the min_groups=5 boundary


def _variants(p: tuple[str, ...]) -> list[str]:
    """The identifiers of patient ``p`` as a report writes them, none spelled as in the header."""
    name, mrn, acc, dob, address, phone, ref = p
    family, given = name.split("^")
    ascii_family, ascii_given = fold(family), fold(given)
    y, m, d = int(dob[:4]), int(dob[4:6]), int(dob[6:])
    unit = address.split(",")[0].split(" ", 3)[-1]  # "Apt 4B"
    return [
        f"{ascii_given.title()} {ascii_family.title()}",  # accents folded, given first
        family.replace("'", "").replace("-", " ").upper(),  # apostrophe dropped, hyphen as a blank
        family.replace("'", ""),  # OBrien-Smith
        given.lower(),
        f"{mrn[:3]}-{mrn[3:]}", f"{mrn[:4]} {mrn[4:]}",  # digit runs in other groupings
        acc.lower(),  # the accession in lower case
        unit.upper(),
        f"{MONTHS[m - 1]} {WORDS[d - 1]}, {y}", f"{ordinal(d)} of {MONTHS[m - 1]} {y}",  # date of birth in words
        phone[-8:].replace("-", " "),  # the local number, other grouping
        ref.split("^")[0].lower() + ", " + ref.split("^")[1],  # Vandersloot, Cornelius
    ]


def _report(k: int, p: tuple[str, ...], study: int) -> str:
    v = _variants(p)
    extra = []
    if k == 0:
        extra.append(f"Seen with her cousin {UNSCRUBBABLE.title()}.")
    if k == 1:
        extra.append(f"Neighbour {ONE_PATIENT_MANY_STUDIES.title()} attended.")
    if k < 4:
        extra.append(f"Known {FOUR_PATIENTS}.")
    if k < 5:
        extra.append(f"Mild {FIVE_PATIENTS}.")
    return (
        "                FINAL REPORT\n"
        f" INDICATION: {v[0]} ({v[1]}; {v[2]}, called {v[3]}), MRN {v[4]} or {v[5]}, prior {v[6]}. "
        f"Lives at {v[7]}. Born {v[8]} ({v[9]}). Phone {v[10]}. Referred by {v[11]}. Cough, study {study}.\n"
        f" COMPARISON: None.\n"
        f" FINDINGS: The lungs are clear with {COMMON}. {' '.join(extra)}\n"
        f" IMPRESSION: No acute cardiopulmonary process.\n")


def _forbidden() -> set[str]:
    """Every identifier, its parts and its normalised forms (folded, lower case, digits alone)."""
    out: set[str] = {UNSCRUBBABLE, ONE_PATIENT_MANY_STUDIES}
    for p in PATIENTS:
        name, mrn, acc, dob, address, phone, ref = p
        for person in (name, ref):
            for part in person.replace("^", " ").replace("-", " ").replace("'", " ").split():
                if len(part) >= 3:
                    out.update({part.lower(), fold(part)})
            out.add(skeleton(person.split("^")[0]))  # obriensmith
        out.update({mrn, mrn[:4], mrn[3:], acc.lower(), acc[1:], dob, phone[-4:], phone[-8:-5]})
        out.add(address.split(",")[1].strip().lower())  # the town
        out.add(address.split(" ")[1].lower())  # the street name
        unit = address.split(",")[0].split(" ", 3)[-1]
        out.update({unit.split()[-1].lower(), skeleton(unit)})  # 4b, apt4b
    return {f for f in out if len(f) >= 3} | {"apt", "4b"}


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """A MIMIC-layout site: seven patients, one 8x8 DICOM image and one report per study; patient 1
    has six studies, the others one."""
    root = tmp_path_factory.mktemp("hostile-text")
    for k, p in enumerate(PATIENTS):
        name, mrn, acc, dob, address, phone, ref = p
        subject = root / "files" / "p10" / f"p1000000{k}"
        for s in range(6 if k == 1 else 1):
            study = f"s5{k}{s:06d}"
            write(subject / study / "img.dcm", np.arange(64, dtype=np.uint16).reshape(8, 8), seed=f"{k}-{s}",
                  PatientName=name, PatientID=mrn, AccessionNumber=acc, PatientBirthDate=dob, PatientAddress=address,
                  PatientTelephoneNumbers=phone, ReferringPhysicianName=ref, StudyDate=f"2020{k + 1:02d}1{s}")
            (subject / f"{study}.txt").write_text(_report(k, p, s), encoding="utf-8")
    return root


def test_header_identifiers_scrubbed_in_every_variant(site):
    ds = MedicalDataset(site, "all", report_sections=SECTIONS, image_size=16, cache=None)
    assert len(ds) == 12
    for i in range(len(ds)):
        text = ds[i].inputs["report"]
        assert COMMON in text and "Cough" in text and "No acute cardiopulmonary process" in text  # content kept
        k = int(ds.studies[i].subject[-1])
        for variant in _variants(PATIENTS[k]):
            assert variant.lower() not in text.lower(), (k, variant, text)
        low = text.lower()
        leaked = {f for f in _forbidden() - {UNSCRUBBABLE, ONE_PATIENT_MANY_STUDIES, "apt", "4b"}
                  if f in low and not f.isdigit()}
        assert not leaked, (k, leaked, text)
        digits = "".join(ch for ch in text if ch.isdigit())
        assert digits == str(ds.studies[i].key[-1]) or digits == "", text  # only "study N" survives
    # what no header holds is outside the scrubber's reach: the vocabulary guard below must stop it
    assert UNSCRUBBABLE in ds[[st.subject[-1] for st in ds.studies].index("0")].inputs["report"].lower()


def test_scrub_known_folds_and_keeps_neighbours(tmp_path):
    f = write(tmp_path / "h.dcm", np.zeros((2, 2), np.uint16), PatientName="O'Brien-Smith^José", PatientID="1234567",
              AccessionNumber="A87654321", PatientBirthDate="19610303",
              PatientAddress="12 Maple Street Apt 4B, Springfield, MA 01234")
    phi = known_phi(pydicom.dcmread(f))
    text = ("OBrien-Smith; O'Brien Smith; obrien smith; OBRIENSMITH; Jose; JOSÉ; Jose\u0301 (NFD); MRN 123-4567, "
            "1234 567, 12 34 567, MRN1234567; a87654321 and A-8765-4321; Apt 4B; Springfield; 1961-03-03; "
            "3 March 1961; the third of March, 1961; March 1961. Smithson, Josephine and 12345 stay.")
    out = scrub_text(text, phi)
    before, after = out.split("Smithson")
    assert set(re.findall(r"[^\W_]+", before.lower())) <= {"mrn", "and", "nfd", "the"}, out
    assert after == ", Josephine and 12345 stay."  # glued letters and other numbers are not a match


def test_vocabularies_and_checkpoint_hold_no_identifier(site, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    reg = get_registry()
    ds = MedicalDataset(site, "all", report_sections=SECTIONS, image_size=16, cache=None)
    texts = texts_for_fitting(ds, ["report"], reg)["report"]
    assert len(texts) == 12 and all(isinstance(t, tuple) and t[1].startswith("pt-") for t in texts)
    assert len({g for _, g in texts}) == 7  # one group per patient, keyed (no folder name)
    assert not any(st.subject in g for st in ds.studies for _, g in texts)
    model = {
        "modalities": ["report"],
        "encoders": {"report": {"name": "bag_of_words", "options": {"out_dim": 8}}},
        "tokenizers": {"report": {"name": "wordpiece", "options": {"vocab_size": 400, "min_frequency": 1}}},
        "fusion": {"name": "concat", "options": {"out_dim": 8}},
        "task": {"name": "multilabel",
                 "options": {"num_labels": len(CHEXPERT_LABELS), "labels": list(CHEXPERT_LABELS)}},
    }
    cfg = fit_tokenizers(parse(ModelConfig, model), reg, {"report": texts})
    wordpiece = cfg.tokenizers["report"].options["vocab"]
    words = WordVocabTokenizer.fit(texts, min_count=1)["vocab"]
    assert {COMMON, FIVE_PATIENTS} <= set(words) and COMMON in wordpiece  # the guard keeps what 5 patients share
    assert FOUR_PATIENTS not in words  # 4 patients are not enough
    assert ONE_PATIENT_MANY_STUDIES in WordVocabTokenizer.fit([t for t, _ in texts], min_count=1)["vocab"]
    # ... counted by text, six studies of one patient would pass: counted by patient they do not
    built = build_model(cfg, reg)
    built(Collate(built.modalities)([ds[i] for i in range(4)]))
    ckpt = save_checkpoint(built, tmp_path / "model.safetensors", reg, extra={"data": {"root": "site"}})
    (tmp_path / "config.json").write_text(cfg.model_dump_json(indent=2))
    checkpoint = ckpt.read_bytes()
    header = checkpoint[8:8 + int.from_bytes(checkpoint[:8], "little")].decode("utf-8")
    blobs = {"wordpiece": "\n".join(wordpiece).lower(), "word_vocab": "\n".join(words).lower(),
             "checkpoint": header.lower(), "sidecar": ckpt.with_suffix(".json").read_text().lower(),
             "config": (tmp_path / "config.json").read_text().lower(), "log": caplog.text.lower()}
    vocabularies = ("wordpiece", "word_vocab")
    leaks = sorted((where, f) for where, blob in blobs.items() for f in _forbidden() if f in blob
                   and (where in vocabularies or (len(f) >= 4 and not f.isdigit())))  # JSON holds numbers
    assert not leaks, leaks[:12]
    # the invariant itself: every piece of the WordPiece vocabulary is part of a word of 5+ patients
    patients_of: dict[str, set[str]] = {}
    for text, group in texts:
        for w in re.findall(r"[^\W_]+|[^\w\s]|_", fold(text)):
            patients_of.setdefault(w, set()).add(group)
    shared = [w for w, g in patients_of.items() if len(g) >= 5]
    assert UNSCRUBBABLE not in shared and ONE_PATIENT_MANY_STUDIES not in shared
    alone = [w for w in wordpiece if w not in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
             and not any(w.removeprefix("##") in s for s in shared)]
    assert not alone, alone[:12]


def test_min_groups_is_checked():
    for bad in (0, -1, 2.5, True, "5"):
        with pytest.raises(ConfigError, match="min_groups"):
            WordVocabTokenizer.fit(["a b"], min_groups=bad)
    assert WordVocabTokenizer.fit(["x y"] * 3, min_count=1, min_groups=3)["vocab"] == ["x", "y"]
    assert WordVocabTokenizer.fit([("x y", "p1")] * 3, min_count=1, min_groups=2)["vocab"] == []


# -- linear time and the ceiling ------------------------------------------------------------------
N = 300_000
CRAFTED = {  # each made the old patterns take seconds at 10k characters and hours at 300k
    "email: a.a.a. and one @": ("a." * (N // 2) + "@", None),
    "labelled id: digits then _": ("id " + "1" * N + "_", "id ___"),  # the label stays, the value goes
    "labelled id: acc + alnum run": ("acc" + "1" * N + "_", "acc___"),
    "name label then blanks": ("name" + " " * N + "x", None),
    "patient label then blanks": ("patient" + " " * N + "x", None),
    "heading after blanks": ("\t" * N + "x", None),
    "known digits, one a piece": ("1 2 3 4 5 6 " * (N // 12), None),
    "month then blanks": ("jan" + " " * N + "x", None),
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", list(CRAFTED))
def test_crafted_lines_are_linear(name):
    text, starts = CRAFTED[name]
    known = ["1234567", "Quackenbush^Zebulon", "A87654321"]
    t0 = time.perf_counter()
    out = scrub_text(text, known)
    sections = split_sections(text)
    elapsed = time.perf_counter() - t0
    print(f"{name}: {len(text):,} characters scrubbed and split in {elapsed:.2f} s")
    assert out.startswith(starts) if starts else out == text
    assert sections == ({"findings": " ".join(text.split())} if text.split() else {})
    if "@" in name:  # with an address in it, the e-mail pattern runs over the whole line too
        assert scrub_text(text + " mail me at jo.doe@example.org", known).endswith(f"at {REDACTED}")


def test_text_over_the_ceiling_is_refused_by_length_only(caplog, monkeypatch):
    caplog.set_level(logging.WARNING)
    one_line = "Patient Quackenbush MRN 1234567 " * 1_600_000  # 51 MB, one line; 1.6M repeated tokens
    t0 = time.perf_counter()
    for call in (lambda: scrub_text(one_line, ["Quackenbush"], path="site/r.txt"),
                 lambda: split_sections(one_line, path="site/r.txt")):
        with pytest.raises(MedicalDataError, match=f"{len(one_line):,} characters") as err:
            call()
        assert "site/r.txt" in str(err.value) and "Quackenbush" not in str(err.value)
    assert time.perf_counter() - t0 < 5.0
    assert "refused" in caplog.text and "Quackenbush" not in caplog.text and "1234567" not in caplog.text
    monkeypatch.setattr(limits, "REPORT_FILE_BYTES", 100)  # the ceiling is read at call time
    with pytest.raises(MedicalDataError, match="over the ceiling of 100"):
        scrub_text("x" * 101)
    assert scrub_text("x" * 100) == "x" * 100
