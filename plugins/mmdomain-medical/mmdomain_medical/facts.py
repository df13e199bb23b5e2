"""Domain facts, declared as data."""

from __future__ import annotations

# CheXpert / MIMIC-CXR-JPG label names, in the order of mimic-cxr-2.0.0-chexpert.csv.
CHEXPERT_LABELS: tuple[str, ...] = (
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum", "Fracture",
    "Lung Lesion", "Lung Opacity", "No Finding", "Pleural Effusion", "Pleural Other", "Pneumonia",
    "Pneumothorax", "Support Devices",
)

# Uncertainty policies for CheXpert's -1.0 ("uncertain") label value -> training target.
UNCERTAIN_POLICIES: dict[str, int] = {"ignore": -1, "ones": 1, "zeros": 0}

# Window presets (centre, width) in the modality's output units (HU for CT).
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "mediastinum": (50.0, 350.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
    "abdomen": (40.0, 400.0),
    "liver": (60.0, 160.0),
}

# Transfer syntaxes the reader is meant to decode (pydicom 3 + pylibjpeg decoders).
TRANSFER_SYNTAXES: dict[str, str] = {
    "1.2.840.10008.1.2": "Implicit VR Little Endian",
    "1.2.840.10008.1.2.1": "Explicit VR Little Endian",
    "1.2.840.10008.1.2.1.99": "Deflated Explicit VR Little Endian",
    "1.2.840.10008.1.2.2": "Explicit VR Big Endian",
    "1.2.840.10008.1.2.4.50": "JPEG Baseline (Process 1)",
    "1.2.840.10008.1.2.4.51": "JPEG Extended (Process 2 and 4)",
    "1.2.840.10008.1.2.4.57": "JPEG Lossless (Process 14)",
    "1.2.840.10008.1.2.4.70": "JPEG Lossless SV1",
    "1.2.840.10008.1.2.4.80": "JPEG-LS Lossless",
    "1.2.840.10008.1.2.4.81": "JPEG-LS Near Lossless",
    "1.2.840.10008.1.2.4.90": "JPEG 2000 Lossless",
    "1.2.840.10008.1.2.4.91": "JPEG 2000",
    "1.2.840.10008.1.2.4.201": "HTJ2K Lossless",
    "1.2.840.10008.1.2.4.202": "HTJ2K Lossless RPCL",
    "1.2.840.10008.1.2.4.203": "HTJ2K",
    "1.2.840.10008.1.2.5": "RLE Lossless",
}
# Uncompressed, little-endian syntaxes the fast path reads straight from the file.
NATIVE_LITTLE_ENDIAN: frozenset[str] = frozenset({"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"})

SOP_CLASSES: dict[str, str] = {
    "CR": "1.2.840.10008.5.1.4.1.1.1",  # Computed Radiography Image Storage
    "DX": "1.2.840.10008.5.1.4.1.1.1.1",  # Digital X-Ray Image Storage - For Presentation
    "CT": "1.2.840.10008.5.1.4.1.1.2",
    "MR": "1.2.840.10008.5.1.4.1.1.4",
    "BasicTextSR": "1.2.840.10008.5.1.4.1.1.88.11",
    "EnhancedSR": "1.2.840.10008.5.1.4.1.1.88.22",
    "ComprehensiveSR": "1.2.840.10008.5.1.4.1.1.88.33",
}
SR_SOP_CLASSES: frozenset[str] = frozenset(
    {SOP_CLASSES["BasicTextSR"], SOP_CLASSES["EnhancedSR"], SOP_CLASSES["ComprehensiveSR"],
     "1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.5.1.4.1.1.88.35"})

# Report sections, the header spellings that open each, and the default the model sees
# (findings/impression state the labels, so they are off unless asked for).
REPORT_SECTIONS: dict[str, tuple[str, ...]] = {
    "indication": ("INDICATION", "CLINICAL INDICATION", "HISTORY", "CLINICAL HISTORY", "REASON FOR EXAM",
                   "REASON FOR EXAMINATION"),
    "comparison": ("COMPARISON", "COMPARISONS"),
    "technique": ("TECHNIQUE", "EXAMINATION", "EXAM"),
    "findings": ("FINDINGS",),
    "impression": ("IMPRESSION", "CONCLUSION", "CONCLUSIONS"),
}
DEFAULT_REPORT_SECTIONS: tuple[str, ...] = ("indication",)

DICOM_SUFFIXES: tuple[str, ...] = (".dcm", ".dicom", ".dic")
