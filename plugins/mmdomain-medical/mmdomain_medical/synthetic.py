"""Seeded multi-site chest X-ray studies written as real DICOM files + MIMIC-CXR-style reports.

Layout per site (as MIMIC-CXR): ``files/pXX/pNNNNNNNN/sNNNNNNNN/<image>.dcm`` with the report
``files/pXX/pNNNNNNNN/sNNNNNNNN.txt`` beside the study folder, and ``labels.csv`` in the
CheXpert format (1.0 positive, 0.0 negative, -1.0 uncertain, blank not mentioned).

Sites differ like vendors do (``SITE_PROFILES``): MONOCHROME1 vs 2, 12/14/16-bit, CR vs DX,
uncompressed / RLE / JPEG 2000 lossless, pixel spacing, rescale. Headers and reports carry
fake PHI (names, MRNs, dates, phone numbers, addresses) that the loader must scrub. Some
studies have no report, a few no image.

Labels need both modalities: each finding is positive when an image sign (opacity blobs,
a large heart, a basal effusion) AND an indication cue (infection, cardiac history,
procedure/trauma) agree, so each modality alone ranks at best ~0.83 macro AUROC.

``coupling`` (0 to 1) makes the two modalities share signal, as real pairs do: cue k agrees with
sign k (infection with opacities, cardiac history with a large heart, a procedure with an
effusion) with probability ``(1 + coupling) / 2``. At 0 they are independent (nothing for
cross-modal self-supervision to find); above it, contrastive pretraining on unlabelled pairs
learns exactly the signs and cues the labels are made of. ``sign_strength`` (0 to 1, default 1)
scales how far each sign departs from a normal chest (opacity density, the heart's extra width,
the effusion's density): fainter signs need more labelled studies to learn, as subtle findings
do. Images smaller than the reader's
default size are declared in the site's ``dataset.json``, so they are read at the size written.

Heterogeneous federations (both off by default; the files are then the same as without them):
``label_skew`` (a Dirichlet concentration alpha > 0) gives each site its own prevalence of the
three signs, ``Dirichlet(alpha) x 1.5`` clipped to 0.05-0.95 (the mean stays 0.5; a smaller
alpha skews more, as in the label-skew federations of the literature), so each site sees its own
mix of findings; ``intensity_shift`` (0 to 1) gives each site its scanner's tone curve (a gamma of
``SITE_GAMMAS[site] ** intensity_shift``) and noise level (up to 2.5x), which the reader's
normalisation does not undo. Sites holding only some modalities are the federated app's
``site-modalities`` (e.g. ``2=dicom_image;3=dicom_image``).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (ExplicitVRLittleEndian, JPEG2000Lossless, PYDICOM_IMPLEMENTATION_UID, RLELossless,
                         generate_uid)

from mmdomain.data import write_declared_options

from .facts import CHEXPERT_LABELS, SOP_CLASSES

SITE_PROFILES: tuple[dict, ...] = (
    {"manufacturer": "Acme Medical", "modality": "CR", "photometric": "MONOCHROME2", "bits": 12,
     "syntax": ExplicitVRLittleEndian, "spacing": 0.139, "slope": 1.0, "intercept": 0.0},
    {"manufacturer": "Borealis Imaging", "modality": "DX", "photometric": "MONOCHROME1", "bits": 16,
     "syntax": RLELossless, "spacing": 0.148, "slope": 1.0, "intercept": 0.0},
    {"manufacturer": "Cygnus Systems", "modality": "DX", "photometric": "MONOCHROME2", "bits": 14,
     "syntax": JPEG2000Lossless, "spacing": 0.2, "slope": 0.5, "intercept": -1000.0},
)

IMAGE_SIGNS = ("opacity", "cardiomegaly", "effusion")
TEXT_CUES: dict[str, tuple[str, ...]] = {
    "infection": ("fever and productive cough", "suspected infection with chills", "cough and fever for three days",
                  "elevated white count, rule out infection"),
    "cardiac": ("known congestive heart failure", "history of CHF with worsening dyspnea",
                "cardiac history and new leg swelling", "heart failure exacerbation"),
    "procedure": ("status post central line placement", "recent fall with chest wall pain",
                  "post-operative check after thoracic surgery", "trauma, evaluate chest"),
}
NEUTRAL = ("routine preoperative evaluation", "follow-up imaging", "chest discomfort", "screening exam",
           "shortness of breath", "annual physical")
# finding -> (image sign index, text cue index); "No Finding" = none of these
LABEL_RULES: dict[str, tuple[int, int]] = {
    "Consolidation": (0, 0), "Pneumonia": (0, 0), "Lung Opacity": (0, 1), "Atelectasis": (0, 2),
    "Lung Lesion": (0, 2), "Enlarged Cardiomediastinum": (1, 0), "Cardiomegaly": (1, 1), "Fracture": (1, 2),
    "Pleural Other": (2, 0), "Edema": (2, 1), "Pleural Effusion": (2, 1), "Pneumothorax": (2, 2),
    "Support Devices": (2, 2),
}
FIRST = ("Zebulon", "Philippa", "Thaddeus", "Ottoline", "Barnaby", "Griselda", "Leopold", "Winifred",
         "Ignatius", "Clementine", "Evander", "Hortensia")
LAST = ("Quackenbush", "Fairweather", "Throckmorton", "Pennyworth", "Blatherwick", "Higginbotham",
        "Cholmondeley", "Wolfenden", "Scattergood", "Ravenscroft", "Winterbottom", "Featherstonehaugh")
TOWNS = ("Springfield", "Riverton", "Lakeside", "Fairview")
STREETS = ("Maple", "Juniper", "Chestnut", "Willow")
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")
SIZE = 256
SITE_GAMMAS = (1.0, 0.55, 1.8, 0.75, 1.35, 0.65)  # each site's tone curve at intensity_shift = 1
SITE_NOISE = (1.0, 2.5, 1.5, 2.0, 1.25, 1.75)  # ... and its noise, x the base 0.03
READ_SIZE = 128  # the dataset's default image_size


def _uid(*parts) -> str:
    return generate_uid(entropy_srcs=[str(p) for p in parts])


def chest_image(rng: np.random.Generator, signs: tuple[bool, bool, bool], size: int | None = None,
                strength: float = 1.0, gamma: float = 1.0, noise: float = 1.0) -> np.ndarray:
    """Attenuation map in [0, 1] (1 = dense), ``size x size`` (default ``SIZE``); ``strength`` scales
    each sign's departure from a normal chest; ``gamma`` and ``noise`` are the scanner's tone curve
    and noise level (1 = the default scanner)."""
    n = int(size or SIZE)
    y, x = np.mgrid[:n, :n].astype(np.float32) / n
    cx = 0.5 + rng.normal(0, 0.015)
    body = ((x - cx) / 0.46) ** 2 + ((y - 0.55) / 0.5) ** 2 < 1
    img = np.where(body, 0.45, 0.05).astype(np.float32)
    lungs = np.zeros_like(img, dtype=bool)
    for side in (-1, 1):
        lungs |= ((x - (cx + side * 0.19)) / 0.14) ** 2 + ((y - 0.5) / 0.3) ** 2 < 1
    img[lungs] = 0.15
    img += 0.08 * (np.sin(y * 60 + rng.uniform(0, 6)) > 0.85) * lungs  # ribs
    img[np.abs(x - cx) < 0.035] = 0.7  # spine
    heart_w = 0.12 + 0.08 * strength if signs[1] else 0.12
    heart_w += rng.normal(0, 0.01)
    heart = ((x - (cx + 0.04)) / heart_w) ** 2 + ((y - 0.66) / 0.12) ** 2 < 1
    img[heart] = 0.65
    if signs[0]:  # patchy opacities in the lungs
        ys, xs = np.nonzero(lungs[: int(n * 0.7)])
        for _ in range(int(rng.integers(3, 6))):
            k = int(rng.integers(len(ys)))
            r2 = (y - ys[k] / n) ** 2 + (x - xs[k] / n) ** 2
            img += 0.35 * strength * np.exp(-r2 / (2 * rng.uniform(0.025, 0.04) ** 2)) * lungs
    if signs[2]:  # basal effusion with a meniscus on one or both sides
        level = rng.uniform(0.62, 0.7)
        for side in ((-1,), (1,), (-1, 1))[int(rng.integers(3))]:
            meniscus = level - 0.06 * np.abs(x - (cx + side * 0.19)) / 0.14
            side_mask = (np.sign(x - cx) == side) & lungs & (y > meniscus)
            img[side_mask] = 0.15 + 0.45 * strength
    img += rng.normal(0, 0.03 * noise, img.shape).astype(np.float32)
    img = np.clip(img, 0, 1)
    return img if gamma == 1.0 else (img ** gamma).astype(np.float32)


def _dicom(img: np.ndarray, profile: dict, *, ids: dict, seed: int, site: int, study: int) -> Dataset:
    bits = profile["bits"]
    top = (1 << bits) - 1
    a = img if profile["photometric"] == "MONOCHROME2" else 1.0 - img
    modality_value = a * 3000.0 - 500.0 if profile["slope"] != 1.0 else a * top
    stored = np.clip(np.round((modality_value - profile["intercept"]) / profile["slope"]), 0, top).astype(np.uint16)
    study_uid = _uid(seed, site, study, "study")
    series_uid = _uid(seed, site, study, "series")
    sop_uid = _uid(seed, site, study, "sop")
    sop_class = SOP_CLASSES[profile["modality"]]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "MMDOMAIN_SYNTH"
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_uid
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.FrameOfReferenceUID = _uid(seed, site, study, "for")
    ds.PatientName = f"{ids['last']}^{ids['first']}"
    ds.PatientID = ids["mrn"]
    ds.PatientBirthDate = ids["birth"]
    ds.PatientSex = ids["sex"]
    ds.PatientAge = f"{ids['age']:03d}Y"
    ds.PatientAddress = ids["address"]
    ds.PatientTelephoneNumbers = ids["phone"]
    ds.OtherPatientIDs = ids["other_id"]
    ds.AccessionNumber = ids["accession"]
    ds.StudyID = ids["accession"][-6:]
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = ids["date"]
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "103200"
    ds.ReferringPhysicianName = f"{ids['ref_last']}^{ids['ref_first']}"
    ds.OperatorsName = f"{ids['rad_last']}^{ids['rad_first']}"
    ds.InstitutionName = ids["institution"]
    ds.StationName = f"XR{site:02d}"
    ds.StudyDescription = "CHEST (PA AND LAT)"
    ds.Modality = profile["modality"]
    ds.Manufacturer = profile["manufacturer"]
    ds.ManufacturerModelName = profile["manufacturer"].split()[0] + " 3000"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.BurnedInAnnotation = "NO"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = profile["photometric"]
    ds.Rows, ds.Columns = img.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits, bits - 1
    ds.PixelRepresentation = 0
    if profile["modality"] == "CR":
        ds.PixelSpacing = [profile["spacing"]] * 2
    else:
        ds.ImagerPixelSpacing = [profile["spacing"]] * 2
    if profile["slope"] != 1.0 or profile["intercept"] != 0.0:
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = profile["slope"], profile["intercept"], "US"
    ds.PixelData = stored.tobytes()
    if profile["syntax"] != ExplicitVRLittleEndian:
        ds.compress(profile["syntax"], stored, generate_instance_uid=False)
    return ds


def _report(rng, ids: dict, cues: tuple[bool, bool, bool], labels: dict[str, str]) -> str:
    parts = [TEXT_CUES[name][int(rng.integers(len(TEXT_CUES[name])))] for name, on in zip(TEXT_CUES, cues) if on]
    if not parts:
        parts = [NEUTRAL[int(rng.integers(len(NEUTRAL)))]]
    order = rng.permutation(len(parts))
    indication = " and ".join(parts[i] for i in order)
    pos = [k for k, v in labels.items() if v == "1.0"]
    unc = [k for k, v in labels.items() if v == "-1.0"]
    findings = ("There is " + ", ".join(p.lower() for p in pos) + "." if pos else
                "The lungs are clear. Heart size is normal. No pleural effusion or pneumothorax.")
    if unc:
        findings += " Possible " + ", ".join(u.lower() for u in unc) + "."
    impression = ("; ".join(pos) if pos else "No acute cardiopulmonary process") + "."
    d = ids["date"]
    us_date = f"{d[4:6]}/{d[6:]}/{d[:4]}"
    prior = f"{MONTHS[int(rng.integers(12))]} {int(rng.integers(1, 28))}, {int(d[:4]) - 1}"
    return (
        "                                 FINAL REPORT\n"
        " EXAMINATION:  CHEST (PA AND LAT)\n"
        f" Patient: {ids['first']} {ids['last']}   MRN: {ids['mrn']}   Accession: {ids['accession']}\n"
        f" Date of exam: {us_date}\n\n"
        f" INDICATION:  {ids['age']}-year-old {'man' if ids['sex'] == 'M' else 'woman'} with {indication}. "
        f"Referred by Dr. {ids['ref_first']} {ids['ref_last']}, phone {ids['phone']}.\n\n"
        f" COMPARISON:  Chest radiograph {prior}.\n\n"
        f" FINDINGS:  {findings}\n\n"
        f" IMPRESSION:  {impression}\n\n"
        f" Electronically signed by Dr. {ids['rad_first']} {ids['rad_last']} on {us_date} at 11:05.\n"
        f" Patient address: {ids['address']}\n"
    )


def site_prevalence(seed: int, site: int, label_skew: float) -> np.ndarray:
    """Each image sign's prevalence at ``site``: 0.5 (no skew), else ``Dirichlet(label_skew) x 1.5``
    clipped to 0.05-0.95, from a stream of its own (the other draws stay as without skew)."""
    if label_skew == 0:
        return np.full(3, 0.5)
    draw = np.random.default_rng([seed, site, 11]).dirichlet(np.full(3, float(label_skew)))
    return np.clip(draw * 1.5, 0.05, 0.95)


def _labels(rng, signs, cues, uncertain_rate: float) -> dict[str, str]:
    out: dict[str, str] = {}
    any_pos = False
    for name in CHEXPERT_LABELS:
        if name == "No Finding":
            continue
        i, j = LABEL_RULES[name]
        pos = signs[i] and cues[j]
        any_pos |= pos
        if pos:
            out[name] = "-1.0" if rng.random() < uncertain_rate else "1.0"
        else:
            out[name] = "0.0" if rng.random() < 0.5 else ""
    out["No Finding"] = "" if any_pos else "1.0"
    return {n: out[n] for n in CHEXPERT_LABELS}


def generate(root: str | Path, *, num_sites: int = 2, seed: int = 0, studies_per_site: int = 120,
             missing_report: float = 0.12, missing_image: float = 0.05, uncertain_rate: float = 0.05,
             image_size: int = SIZE, coupling: float = 0.0, sign_strength: float = 1.0, label_skew: float = 0.0,
             intensity_shift: float = 0.0) -> list[Path]:
    """Write ``num_sites`` sites under ``root``; ``image_size`` is the stored pixel matrix (square);
    ``coupling`` how much the report's cues agree with the image's signs; ``label_skew`` and
    ``intensity_shift`` how the sites differ (module docstring)."""
    root = Path(root)
    if image_size < 16:
        raise ValueError(f"image_size must be >= 16, got {image_size}")
    if not 0.0 <= coupling <= 1.0:
        raise ValueError(f"coupling must be in [0, 1], got {coupling}")
    if not 0.0 < sign_strength <= 1.0:
        raise ValueError(f"sign_strength must be in (0, 1], got {sign_strength}")
    if not (label_skew >= 0.0 and np.isfinite(label_skew)):
        raise ValueError(f"label_skew must be 0 (off) or a Dirichlet concentration > 0, got {label_skew}")
    if not 0.0 <= intensity_shift <= 1.0:
        raise ValueError(f"intensity_shift must be in [0, 1], got {intensity_shift}")
    sites = []
    for s in range(num_sites):
        profile = SITE_PROFILES[s % len(SITE_PROFILES)]
        rng = np.random.default_rng([seed, s, 7])
        prevalence = site_prevalence(seed, s, label_skew)
        gamma = SITE_GAMMAS[s % len(SITE_GAMMAS)] ** intensity_shift
        noise = SITE_NOISE[s % len(SITE_NOISE)] ** intensity_shift
        site = root / f"site-{s}"
        site.mkdir(parents=True, exist_ok=True)
        rows = []
        study, patient = 0, 0
        while study < studies_per_site:
            subject = f"p1{s}{patient:06d}"
            pr = np.random.default_rng([seed, s, patient])
            first, last = FIRST[int(pr.integers(len(FIRST)))], LAST[int(pr.integers(len(LAST)))]
            patient_ids = {
                "first": first, "last": last, "sex": "MF"[int(pr.integers(2))], "age": int(pr.integers(25, 90)),
                "mrn": f"{int(pr.integers(10**6, 10**7))}", "other_id": f"H{int(pr.integers(10**6, 10**7))}",
                "birth": f"{int(pr.integers(1935, 1999))}{int(pr.integers(1, 13)):02d}{int(pr.integers(1, 28)):02d}",
                "address": f"{int(pr.integers(10, 999))} {STREETS[int(pr.integers(4))]} Street, "
                           f"{TOWNS[int(pr.integers(4))]}, MA 0{int(pr.integers(1000, 2800))}",
                "phone": f"({int(pr.integers(201, 989))}) {int(pr.integers(200, 999))}-{int(pr.integers(1000, 9999))}",
                "ref_first": FIRST[int(pr.integers(len(FIRST)))], "ref_last": LAST[int(pr.integers(len(LAST)))],
                "rad_first": FIRST[int(pr.integers(len(FIRST)))], "rad_last": LAST[int(pr.integers(len(LAST)))],
                "institution": f"{TOWNS[s % 4]} General Hospital",
            }
            for _ in range(int(pr.integers(1, 4))):
                if study >= studies_per_site:
                    break
                study_id = f"s5{s}{study:06d}"
                ids = dict(patient_ids, accession=f"A{int(rng.integers(10**7, 10**8))}",
                           date=f"{int(rng.integers(2015, 2023))}{int(rng.integers(1, 13)):02d}"
                                f"{int(rng.integers(1, 28)):02d}")
                signs = tuple(bool(v) for v in rng.random(3) < prevalence)
                u = rng.random(3)  # at coupling 0, the same draws and cues as independent ones
                cues = tuple(bool(v < 0.5 + coupling / 2 if sg else v < 0.5 - coupling / 2) for v, sg in zip(u, signs))
                labels = _labels(rng, signs, cues, uncertain_rate)
                img = chest_image(rng, signs, image_size, sign_strength, gamma, noise)
                drop = rng.random()
                has_image = drop >= missing_image
                has_report = not (missing_image <= drop < missing_image + missing_report)
                text = _report(rng, ids, cues, labels)
                sdir = site / "files" / f"p1{s}" / subject
                if has_image:
                    ds = _dicom(img, profile, ids=ids, seed=seed, site=s, study=study)
                    (sdir / study_id).mkdir(parents=True, exist_ok=True)
                    ds.save_as(sdir / study_id / f"{ds.SOPInstanceUID[-12:]}.dcm", enforce_file_format=True)
                if has_report:
                    sdir.mkdir(parents=True, exist_ok=True)
                    (sdir / f"{study_id}.txt").write_text(text)
                rows.append({"subject_id": subject[1:], "study_id": study_id[1:], **labels})
                study += 1
            patient += 1
        with (site / "labels.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        if image_size < READ_SIZE:
            write_declared_options(site, {"image_size": image_size})
        sites.append(site)
    return sites
