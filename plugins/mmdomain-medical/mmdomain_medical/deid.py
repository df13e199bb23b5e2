"""De-identification of DICOM headers: PS3.15 Annex E basic profile, with the
"retain longitudinal temporal information with modified dates" and consistent UID
remapping options (both keyed, so the same patient/UID maps the same way every time
and at every site that shares the key).

``deidentify(ds, key)`` edits a pydicom Dataset in place and returns the PHI values it
removed (``known_phi``), which ``reports.scrub_text`` also strips from the study's report.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import logging
import os
import warnings
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from .errors import MedicalDataError

log = logging.getLogger(__name__)

DEFAULT_KEY = os.environ.get("MMDOMAIN_DEID_KEY", "mmdomain-medical-default-deid-key")

# Annex E basic profile, the attributes a chest radiograph / CT / MR header carries.
# X: remove; Z: empty; D: replace by a dummy value; U: remap UID; S: shift date/time.
ACTIONS: dict[str, str] = {
    # patient
    "PatientName": "Z", "PatientID": "D", "PatientBirthDate": "Z", "PatientBirthTime": "X",
    "OtherPatientIDs": "X", "OtherPatientIDsSequence": "X", "OtherPatientNames": "X", "PatientBirthName": "X",
    "PatientMotherBirthName": "X", "PatientAddress": "X", "PatientTelephoneNumbers": "X", "MilitaryRank": "X",
    "EthnicGroup": "X", "PatientReligiousPreference": "X", "PatientComments": "X", "AdditionalPatientHistory": "X",
    "PatientInsurancePlanCodeSequence": "X", "MedicalRecordLocator": "X", "PatientState": "X",
    "ResponsiblePerson": "X", "ResponsibleOrganization": "X", "CountryOfResidence": "X", "RegionOfResidence": "X",
    "Occupation": "X", "PatientSize": "X", "PatientWeight": "X", "IssuerOfPatientID": "X",
    "BranchOfService": "X", "MedicalAlerts": "X", "Allergies": "X", "PregnancyStatus": "X",
    "PatientTransportArrangements": "X", "PatientPrimaryLanguageCodeSequence": "X",
    # people and places
    "ReferringPhysicianName": "Z", "ReferringPhysicianAddress": "X", "ReferringPhysicianTelephoneNumbers": "X",
    "PerformingPhysicianName": "X", "NameOfPhysiciansReadingStudy": "X", "PhysiciansOfRecord": "X",
    "OperatorsName": "X", "RequestingPhysician": "X", "ScheduledPerformingPhysicianName": "X",
    "InstitutionName": "X", "InstitutionAddress": "X", "InstitutionalDepartmentName": "X", "StationName": "X",
    "DeviceSerialNumber": "X", "PerformedStationName": "X", "PerformedLocation": "X", "ScheduledStationName": "X",
    "CurrentPatientLocation": "X", "RequestingService": "X", "PersonName": "X", "VerifyingObserverName": "X",
    "ContentCreatorName": "X", "ReviewerName": "X", "VerifyingOrganization": "X", "ObserverName": "X",
    # study / visit identifiers and free text
    "AccessionNumber": "Z", "StudyID": "Z", "AdmissionID": "X", "IssuerOfAdmissionID": "X",
    "RequestedProcedureID": "X", "PerformedProcedureStepID": "X", "ScheduledProcedureStepID": "X",
    "FillerOrderNumberImagingServiceRequest": "X", "PlacerOrderNumberImagingServiceRequest": "X",
    "StudyDescription": "X", "SeriesDescription": "X", "ImageComments": "X", "RequestAttributesSequence": "X",
    "AdmittingDiagnosesDescription": "X", "DerivationDescription": "X", "ProtocolName": "X",
    "PerformedProcedureStepDescription": "X", "RequestedProcedureDescription": "X", "TextComments": "X",
    "ReasonForTheRequestedProcedure": "X", "ReasonForStudy": "X", "InterpretationText": "X",
    "ReferencedPatientSequence": "X", "ReferencedStudySequence": "X", "ReferencedPerformedProcedureStepSequence": "X",
    "FrameComments": "X", "ImagePresentationComments": "X", "ContentSequence": "K",
    "DigitalSignaturesSequence": "X", "OriginalAttributesSequence": "X", "SourceImageSequence": "X",
    "ContributingEquipmentSequence": "X",
    # UIDs
    "StudyInstanceUID": "U", "SeriesInstanceUID": "U", "SOPInstanceUID": "U", "FrameOfReferenceUID": "U",
    "MediaStorageSOPInstanceUID": "U", "ReferencedSOPInstanceUID": "U", "SynchronizationFrameOfReferenceUID": "U",
    "IrradiationEventUID": "U", "DimensionOrganizationUID": "U", "ConcatenationUID": "U",
    "StorageMediaFileSetUID": "U", "InstanceCreatorUID": "X", "UID": "U",
    # dates and times: shifted per patient
    "StudyDate": "S", "SeriesDate": "S", "AcquisitionDate": "S", "ContentDate": "S", "InstanceCreationDate": "S",
    "StudyTime": "K", "SeriesTime": "K", "AcquisitionTime": "K", "ContentTime": "K", "InstanceCreationTime": "K",
    "AcquisitionDateTime": "S", "PerformedProcedureStepStartDate": "S", "PerformedProcedureStepEndDate": "S",
    "ObservationDateTime": "S", "DateOfLastCalibration": "X", "LastMenstrualDate": "X",
}
# Keep these person/ID-free values; everything else that is not in ACTIONS passes unchanged.
PHI_VRS_EXTRA = ("PN",)  # any remaining Person Name element (in sequences too) is emptied


def _hmac(key: str, value: str) -> bytes:
    return hmac.new(key.encode(), value.encode(), hashlib.sha256).digest()


def remap_uid(uid: str, key: str = DEFAULT_KEY) -> str:
    """A keyed, consistent replacement UID under the 2.25 (UUID-derived) root."""
    return "2.25." + str(int.from_bytes(_hmac(key, "uid:" + str(uid))[:16], "big"))


def pseudonym(value: str, key: str = DEFAULT_KEY, prefix: str = "") -> str:
    """A short keyed pseudonym (hex), the same for the same value and key."""
    return prefix + _hmac(key, "id:" + str(value)).hex()[:16]


def date_offset_days(patient_id: str, key: str = DEFAULT_KEY) -> int:
    """Per-patient date shift in days, in [-3650, -1] (always into the past)."""
    return -1 - int.from_bytes(_hmac(key, "date:" + str(patient_id))[:4], "big") % 3650


def shift_date(value: str, days: int) -> str:
    """Shift a DA (YYYYMMDD) or the date part of a DT; empty if unparseable."""
    value = str(value).strip()
    if len(value) < 8 or not value[:8].isdigit():
        return ""
    try:
        d = dt.date(int(value[:4]), int(value[4:6]), int(value[6:8])) + dt.timedelta(days=days)
    except ValueError:
        return ""
    return d.strftime("%Y%m%d") + value[8:]


def known_phi(ds: Dataset) -> list[str]:
    """Identifying strings of the header (names and their parts, IDs, places, phone numbers, dates),
    gathered before they are removed, to scrub the same values from report text."""
    out: set[str] = set()

    def add(v) -> None:
        s = str(v).strip() if v is not None else ""
        if len(s) >= 2:
            out.add(s)

    for kw in ("PatientName", "OtherPatientNames", "PatientBirthName", "PatientMotherBirthName",
               "ReferringPhysicianName", "PerformingPhysicianName", "NameOfPhysiciansReadingStudy",
               "OperatorsName", "RequestingPhysician", "PhysiciansOfRecord"):
        values = ds.get(kw, None)
        if values is None:
            continue
        for v in (values if isinstance(values, (list, tuple)) or type(values).__name__ == "MultiValue" else [values]):
            add(v)
            for part in str(v).replace("^", " ").split():
                if len(part) >= 2 and part[0].isalpha():
                    add(part)
    for kw in ("PatientID", "OtherPatientIDs", "AccessionNumber", "StudyID", "PatientAddress",
               "PatientTelephoneNumbers", "InstitutionName", "InstitutionAddress", "StationName",
               "DeviceSerialNumber", "IssuerOfPatientID", "AdmissionID"):
        v = ds.get(kw, None)
        if v is not None:
            for item in (v if type(v).__name__ == "MultiValue" else [v]):
                add(item)
    for kw in ("PatientBirthDate", "StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate"):
        v = str(ds.get(kw, "") or "")
        if len(v) == 8 and v.isdigit():
            y, m, d = v[:4], v[4:6], v[6:]
            out.update({v, f"{m}/{d}/{y}", f"{int(m)}/{int(d)}/{y}", f"{y}-{m}-{d}", f"{d}.{m}.{y}"})
    return sorted(out, key=len, reverse=True)


def deidentify(ds: Dataset, key: str = DEFAULT_KEY, *, path: str | Path | None = None,
               burned_in: str = "refuse") -> list[str]:
    """De-identify ``ds`` in place (basic profile); return the PHI values removed.

    ``burned_in``: what to do with ``BurnedInAnnotation == "YES"``: ``"refuse"`` raises
    ``MedicalDataError``, ``"warn"`` warns and goes on (pixels are not cleaned).
    """
    if burned_in not in ("refuse", "warn"):
        raise MedicalDataError(None, f"burned_in must be 'refuse' or 'warn', got {burned_in!r}")
    if str(ds.get("BurnedInAnnotation", "") or "").upper() == "YES":
        if burned_in == "refuse":
            raise MedicalDataError(path, "BurnedInAnnotation is YES: the pixels may show identifying text; "
                                         "refused (pass burned_in='warn' to accept)")
        msg = f"{path}: BurnedInAnnotation is YES; pixels may show identifying text"
        warnings.warn(msg, stacklevel=2)
        log.warning(msg)
    phi = known_phi(ds)
    days = date_offset_days(str(ds.get("PatientID", "") or ""), key)
    _apply(ds, key, days)
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "MediaStorageSOPInstanceUID" in meta:
        meta.MediaStorageSOPInstanceUID = remap_uid(meta.MediaStorageSOPInstanceUID, key)
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "mmdomain-medical: PS3.15 E basic profile; dates shifted; UIDs remapped"
    return phi


def _apply(ds: Dataset, key: str, days: int) -> None:
    for elem in list(ds):
        if elem.tag.is_private:
            del ds[elem.tag]
            continue
        action = ACTIONS.get(elem.keyword)
        if action is None and elem.VR == "PN":
            action = "X"
        if action is None and elem.VR == "UI" and elem.keyword not in (
                "SOPClassUID", "TransferSyntaxUID", "ReferencedSOPClassUID", "CodingSchemeUID"):
            action = "U" if elem.keyword.endswith("InstanceUID") or elem.keyword.endswith("UID") and "Class" not in elem.keyword else None
        if action == "X":
            del ds[elem.tag]
        elif action == "Z":
            elem.value = "" if elem.VR != "SQ" else DicomSequence([])
        elif action == "D":
            elem.value = pseudonym(str(elem.value), key, "ANON-")
        elif action == "U" and elem.value:
            if elem.VM > 1:
                elem.value = [remap_uid(u, key) for u in elem.value]
            else:
                elem.value = remap_uid(elem.value, key)
        elif action == "S" and elem.value:
            elem.value = shift_date(elem.value, days)
        elif elem.VR == "SQ" and elem.value:
            for item in elem.value:
                _apply(item, key, days)
