"""Medical domain for mmdomain: DICOM images + radiology reports, paired by study and
de-identified the moment they are read (PS3.15 Annex E basic profile for headers, regex +
known-header-values scrubbing for report text)."""

from .errors import MedicalDataError

__all__ = ["MedicalDataError"]
