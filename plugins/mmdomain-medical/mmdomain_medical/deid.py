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
import re
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


NAME_KEYWORDS = ("PatientName", "OtherPatientNames", "PatientBirthName", "PatientMotherBirthName",
                 "ReferringPhysicianName", "PerformingPhysicianName", "NameOfPhysiciansReadingStudy",
                 "OperatorsName", "RequestingPhysician", "PhysiciansOfRecord")
ID_KEYWORDS = ("PatientID", "OtherPatientIDs", "AccessionNumber", "StudyID", "PatientTelephoneNumbers",
               "InstitutionName", "StationName", "DeviceSerialNumber", "IssuerOfPatientID", "AdmissionID")
ADDRESS_KEYWORDS = ("PatientAddress", "InstitutionAddress")
DATE_KEYWORDS = ("PatientBirthDate", "StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate")
MAX_NAME_PARTS = 8  # name parts of one value combined into runs ("O Brien", "Brien Smith")
MONTH_NAMES = ("January", "February", "March", "April", "May", "June", "July", "August", "September",
               "October", "November", "December")
_ORDINAL_WORDS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth",
                  "eleventh", "twelfth", "thirteenth", "fourteenth", "fifteenth", "sixteenth", "seventeenth",
                  "eighteenth", "nineteenth", "twentieth")
_PART = re.compile(r"[^\W_]+")  # letters / digits of any script: "O'Brien-Smith" -> O, Brien, Smith
_UNIT = re.compile(r"\b(?:apt|apartment|unit|suite|ste|bldg|building|room|rm|flat|p\.?\s?o\.?\s?box)\b\.?\s{0,3}#?"
                   r"\s{0,3}[a-z0-9]{1,6}\b", re.IGNORECASE)
_ZIP = re.compile(r"\b\d{5}(?:-\d{4})?\b")


def ordinal_word(day: int) -> str:
    """1 -> "first", 23 -> "twenty-third", 30 -> "thirtieth"."""
    if day <= 20:
        return _ORDINAL_WORDS[day - 1]
    tens, unit = divmod(day, 10)
    if unit == 0:
        return ("twentieth", "thirtieth")[tens - 2]
    return ("twenty", "thirty")[tens - 2] + "-" + _ORDINAL_WORDS[unit - 1]


def ordinal(day: int) -> str:
    """1 -> "1st", 2 -> "2nd", 11 -> "11th", 23 -> "23rd"."""
    return f"{day}{'th' if 10 <= day % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(day % 10, 'th')}"


def name_variants(value: str) -> set[str]:
    """A person name (DICOM PN, ``Family^Given^Middle``) and what a report may write of it: each
    part alone (2+ characters), every run of adjacent parts ("O Brien" matches "OBrien" and
    "O'Brien"), and given before family ("Jose Nunez" for "Nunez^Jose")."""
    out = {value}
    parts = _PART.findall(value)[:MAX_NAME_PARTS]
    out.update(p for p in parts if len(p) >= 2 and p[0].isalpha())
    out.update(" ".join(parts[i:j]) for i in range(len(parts)) for j in range(i + 2, len(parts) + 1))
    groups = [g for g in value.split("=")[0].split("^")[:3] if g.strip()]
    if len(groups) >= 2:
        out.add(" ".join(groups[1:] + groups[:1]))
    return out


def id_variants(value: str) -> set[str]:
    """An identifier and its digits alone, when 4+ ("A87654321" -> "87654321"; a telephone number's
    last seven digits too: a local number written without its area code)."""
    out = {value}
    digits = "".join(ch for ch in value if ch.isdigit())
    if len(digits) >= 4:
        out.add(digits)
    if len(digits) >= 10:
        out.add(digits[-7:])
    return out


def address_variants(value: str) -> set[str]:
    """An address, each of its comma / line / ``^`` separated components (3+ characters), the
    street without its number, the unit ("Apt 4B") and the ZIP code."""
    out = {value}
    for comp in re.split(r"[,\n\r^;]+", value):
        comp = comp.strip()
        if len(comp) >= 3:
            out.add(comp)
            street = re.sub(r"^\d+[a-z]?\s+", "", comp, flags=re.IGNORECASE)
            if street != comp and len(street) >= 3:
                out.add(street)
    out.update(m.group(0) for m in _UNIT.finditer(value))
    out.update(m.group(0) for m in _ZIP.finditer(value))
    return out


def date_variants(value: str, *, birth: bool = False) -> set[str]:
    """A DA value (YYYYMMDD) as reports write it: 03/03/1961, 3/3/1961, 1961-03-03, 03.03.1961, and
    in words: "March 3 1961", "March 3rd 1961", "March third 1961", "3rd of March 1961", "3 Mar 1961"
    (commas, periods and spacing are folded when matched); for a birth date, "March 1961" too."""
    if len(value) != 8 or not value.isdigit():
        return set()
    y, m, d = value[:4], value[4:6], value[6:]
    out = {value, f"{m}/{d}/{y}", f"{int(m)}/{int(d)}/{y}", f"{y}-{m}-{d}", f"{d}.{m}.{y}", f"{d}/{m}/{y}"}
    if not (1 <= int(m) <= 12 and 1 <= int(d) <= 31):
        return out
    month = MONTH_NAMES[int(m) - 1]
    months = {month, month[:3]} | ({"Sept"} if int(m) == 9 else set())
    days = {str(int(d)), d, ordinal(int(d)), ordinal_word(int(d))}
    for mo in months:
        for da in days:
            out.update({f"{mo} {da} {y}", f"{da} {mo} {y}", f"{da} of {mo} {y}"})
        if birth:
            out.add(f"{mo} {y}")
    return out


def known_phi(ds: Dataset) -> list[str]:
    """Identifying strings of the header (names and their parts, IDs and their digits, places,
    addresses and their parts, phone numbers, dates in figures and words), gathered before they
    are removed, to scrub the same values from report text (``reports.scrub_known``, which also
    folds case, accents, punctuation and spacing, and the grouping of digits)."""
    out: set[str] = set()

    def values(kw: str) -> list[str]:
        v = ds.get(kw, None)
        if v is None:
            return []
        items = v if isinstance(v, (list, tuple)) or type(v).__name__ == "MultiValue" else [v]
        return [s for s in (str(x).strip() for x in items) if s]

    for kw in NAME_KEYWORDS:
        for v in values(kw):
            out.update(name_variants(v))
    for kw in ID_KEYWORDS:
        for v in values(kw):
            out.update(id_variants(v))
    for kw in ADDRESS_KEYWORDS:
        for v in values(kw):
            out.update(address_variants(v))
    for kw in DATE_KEYWORDS:
        for v in values(kw):
            out.update(date_variants(v, birth=kw == "PatientBirthDate"))
    return sorted((s for s in out if len(s.strip()) >= 2), key=lambda s: (-len(s), s))


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
