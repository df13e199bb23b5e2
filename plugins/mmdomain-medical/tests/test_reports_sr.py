import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from mmdomain_medical.errors import MedicalDataError
from mmdomain_medical.facts import SOP_CLASSES
from mmdomain_medical.reports import read_openi_xml, scrub_text, select_sections, split_sections
from mmdomain_medical.sr import read_sr, sr_text


def _code(meaning):
    c = Dataset()
    c.CodeValue, c.CodingSchemeDesignator, c.CodeMeaning = "121070", "DCM", meaning
    return Sequence([c])


def _item(vtype, name, text=None, children=None, rel="CONTAINS"):
    it = Dataset()
    it.RelationshipType = rel
    if vtype:
        it.ValueType = vtype
    it.ConceptNameCodeSequence = _code(name)
    if text is not None:
        it.TextValue = text
    if vtype == "CONTAINER":
        it.ContinuityOfContent = "SEPARATE"
    if children:
        it.ContentSequence = Sequence(children)
    return it


def write_sr(path, sop_class, children):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[str(path)])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[str(path), "st"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[str(path), "se"])
    ds.Modality = "SR"
    ds.PatientName = "Srperson^Olga"
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = _code("Chest X-Ray Report")
    ds.ContinuityOfContent = "SEPARATE"
    ds.ContentSequence = Sequence(children)
    ds.save_as(path, enforce_file_format=True)
    return path


def test_basic_text_sr_roundtrip(tmp_path):
    f = write_sr(tmp_path / "basic.dcm", SOP_CLASSES["BasicTextSR"], [
        _item("CONTAINER", "Indication", children=[_item("TEXT", "Finding", "Cough and fever.")]),
        _item("CONTAINER", "Findings", children=[_item("TEXT", "Finding", "Right lower lobe opacity.")]),
        _item("CONTAINER", "Impression", children=[_item("TEXT", "Finding", "Pneumonia.")]),
    ])
    text = read_sr(f)
    sections = split_sections(text)
    assert sections == {"indication": "Cough and fever.", "findings": "Right lower lobe opacity.",
                        "impression": "Pneumonia."}


def test_comprehensive_sr_nested_and_malformed_items(tmp_path):
    broken = Dataset()  # a content item with no ValueType and no concept name
    broken.RelationshipType = "CONTAINS"
    broken.TextValue = "ignored"
    num = _item("NUM", "Heart width")
    mv = Dataset()
    mv.NumericValue = "14.5"
    mv.MeasurementUnitsCodeSequence = _code("cm")
    num.MeasuredValueSequence = Sequence([mv])
    f = write_sr(tmp_path / "comp.dcm", SOP_CLASSES["ComprehensiveSR"], [
        _item("CONTAINER", "Findings", children=[
            broken, num,
            _item("CONTAINER", "Lungs", children=[_item("TEXT", "Finding", "Small left effusion.")]),
        ]),
        _item("CONTAINER", "Impression", children=[_item("TEXT", "Finding", "Effusion.")]),
    ])
    text = read_sr(f)
    assert "Small left effusion." in text and "Heart width: 14.5 cm" in text and "ignored" not in text
    assert split_sections(text)["impression"] == "Effusion."


def test_non_sr_and_empty_sr_are_clear_errors(tmp_path):
    from dicom_factory import write

    img = write(tmp_path / "img.dcm", np.zeros((2, 2), np.uint16))
    with pytest.raises(MedicalDataError, match="not a structured report"):
        read_sr(img)
    empty = write_sr(tmp_path / "e.dcm", SOP_CLASSES["EnhancedSR"], [])
    with pytest.raises(MedicalDataError, match="no text"):
        read_sr(empty)


def test_sections_and_selection():
    text = ("FINAL REPORT\n INDICATION: cough.\n COMPARISON: none.\n FINDINGS: clear lungs.\n"
            " IMPRESSION: normal.")
    assert split_sections(text) == {"indication": "cough.", "comparison": "none.", "findings": "clear lungs.",
                                    "impression": "normal."}
    assert select_sections(text) == "INDICATION: cough."
    assert select_sections(text, ["findings", "impression"]) == "FINDINGS: clear lungs.\nIMPRESSION: normal."
    with pytest.raises(MedicalDataError):
        select_sections(text, ["bogus"])


def test_scrub_text_regex_and_known_values():
    text = ("Patient: Harriet Oddsock MRN: 1234567. Seen 03/14/2021 and March 3, 2020 at 10:45. "
            "Call Dr. Ambrose Pettigrew at (617) 555-0199 or ambrose@hospital.org. "
            "Lives at 12 Willow Street, Springfield, MA 01101. Accession A55512345. Oddsock denies pain.")
    out = scrub_text(text, known=["Oddsock", "Harriet"])
    for phi in ("Harriet", "Oddsock", "1234567", "03/14/2021", "March 3, 2020", "Ambrose", "Pettigrew",
                "555-0199", "ambrose@", "Willow", "01101", "A55512345", "10:45"):
        assert phi not in out, (phi, out)
    assert "denies pain" in out


def test_openi_xml(tmp_path):
    f = tmp_path / "1.xml"
    f.write_text("""<eCitation><MedlineCitation><Article><Abstract>
      <AbstractText Label="COMPARISON">None.</AbstractText>
      <AbstractText Label="INDICATION">Chest pain.</AbstractText>
      <AbstractText Label="FINDINGS">Normal heart size.</AbstractText>
      <AbstractText Label="IMPRESSION">No acute disease.</AbstractText>
    </Abstract></Article></MedlineCitation>
    <parentImage id="CXR1_1_IM-0001-3001"><url>/x.png</url></parentImage></eCitation>""")
    r = read_openi_xml(f)
    assert r["images"] == ["CXR1_1_IM-0001-3001"]
    assert split_sections(r["text"])["impression"] == "No acute disease."
    bad = tmp_path / "bad.xml"
    bad.write_text("<oops>")
    with pytest.raises(MedicalDataError, match="bad.xml"):
        read_openi_xml(bad)
