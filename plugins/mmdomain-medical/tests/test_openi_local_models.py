"""OpenI / IU X-ray XML end to end (reports linked to DICOM by ``<parentImage id>``), report-only
studies scrubbed with their patient's header PHI, and ``bert_text`` + ``wordpiece`` loaded
from a local ``path=`` directory written with ``save_pretrained`` (nothing downloaded)."""

from pathlib import Path

import numpy as np
import torch

from dicom_factory import write
from mmdomain import Collate, get_registry
from mmdomain.config import ModelConfig, parse
from mmdomain.models.compose import build_model, fit_tokenizers
from mmdomain_medical.dataset import MedicalDataset

OPENI = """<?xml version="1.0" encoding="utf-8"?>
<eCitation>
  <MedlineCitation><Article><Abstract>
    <AbstractText Label="COMPARISON">None.</AbstractText>
    <AbstractText Label="INDICATION">{indication}</AbstractText>
    <AbstractText Label="FINDINGS">{findings}</AbstractText>
    <AbstractText Label="IMPRESSION">{impression}</AbstractText>
  </Abstract></Article></MedlineCitation>
  {images}
</eCitation>
"""


def _xml(path: Path, ids: list[str], *, indication: str, findings: str, impression: str) -> None:
    images = "\n  ".join(f'<parentImage id="{i}"><url>/hadoop/{i}.png</url></parentImage>' for i in ids)
    path.write_text(OPENI.format(indication=indication, findings=findings, impression=impression, images=images))


def test_openi_xml_dataset_end_to_end(tmp_path):
    root = tmp_path / "openi"
    (root / "images").mkdir(parents=True)
    (root / "reports").mkdir()
    rng = np.random.default_rng(0)
    # two images of one study (same StudyInstanceUID via seed), one image of another, one report without image
    for name, seed in (("CXR1_1_IM-0001-3001", "s1"), ("CXR1_1_IM-0001-4001", "s1"), ("CXR2_IM-0652-1001", "s2")):
        write(root / "images" / f"{name}.dcm", rng.integers(0, 4096, (32, 32)).astype(np.uint16), bits_stored=12,
              seed=seed, PatientName="Ravenscroft^Ottoline", PatientID="8812345")
    _xml(root / "reports" / "1.xml", ["CXR1_1_IM-0001-3001", "CXR1_1_IM-0001-4001"],
         indication="Chest pain, Ravenscroft here for follow-up", findings="Heart size normal. Lungs clear.",
         impression="No active disease.")
    _xml(root / "reports" / "2.xml", ["CXR2_IM-0652-1001"], indication="Cough",
         findings="Right lower lobe opacity.", impression="Pneumonia.")
    _xml(root / "reports" / "3.xml", ["CXR3_IM-1384-1001"], indication="Trauma",
         findings="No fracture.", impression="Normal chest.")
    ds = MedicalDataset(root, "all", report_sections=("findings", "impression"), image_size=32)
    assert len(ds) == 3
    samples = [ds[i] for i in range(len(ds))]
    by_text = {s.inputs.get("report", ""): s for s in samples}
    both = [s for s in samples if "dicom_image" in s.inputs and "report" in s.inputs]
    assert len(both) == 2 and len([s for s in samples if set(s.inputs) == {"report"}]) == 1
    assert any("FINDINGS: Right lower lobe opacity." in t and "IMPRESSION: Pneumonia." in t for t in by_text)
    for s in both:
        assert s.inputs["dicom_image"].shape == (1, 32, 32)
        assert float(s.inputs["dicom_image"].min()) >= 0 and float(s.inputs["dicom_image"].max()) <= 1
    # the indication is not chosen here, and when it is, the untitled surname from the header is scrubbed
    ind = MedicalDataset(root, "all", report_sections=("indication",), image_size=32)
    texts = " ".join(ind[i].inputs.get("report", "") for i in range(len(ind)))
    assert "Chest pain" in texts and "Ravenscroft" not in texts
    assert all("CXR" not in repr(s.meta) and "Ravenscroft" not in repr(s.meta) for s in samples)


def test_report_only_study_scrubbed_with_its_patients_header_phi(tmp_path):
    site = tmp_path / "site"
    subj = site / "files" / "p10" / "p10000001"
    write(subj / "s50000001" / "a.dcm", np.zeros((8, 8), np.uint16), seed="a",
          PatientName="Winterbottom^Evander", PatientID="4455667")
    (subj / "s50000001.txt").write_text(" INDICATION: cough.\n FINDINGS: clear.\n")
    # a report-only study of the same patient: bare surname and MRN, no title or label to catch them
    (subj / "s50000002.txt").write_text(" INDICATION: Winterbottom returns with fever, chart 4455667.\n"
                                        " FINDINGS: clear.\n")
    ds = MedicalDataset(site, "all", image_size=16)
    texts = [ds[i].inputs.get("report", "") for i in range(len(ds))]
    assert any("returns with fever" in t for t in texts)
    assert not any("Winterbottom" in t or "4455667" in t or "Evander" in t for t in texts), texts


def test_bert_text_and_wordpiece_from_local_directory(tmp_path):
    from transformers import BertConfig, BertModel, BertTokenizerFast

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "fever", "cough", "heart", "failure", "chest", "pain",
             "##s", "and", "with"]
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(words) + "\n")
    local = tmp_path / "tiny-bert"
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece

    tk = Tokenizer(WordPiece({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tk.normalizer = normalizers.BertNormalizer(lowercase=True)
    tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tk.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    BertTokenizerFast(tokenizer_object=tk).save_pretrained(local)
    cfg = BertConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    saved = BertModel(cfg, add_pooling_layer=False)
    saved.save_pretrained(local)
    assert (local / "tokenizer.json").is_file() and (local / "config.json").is_file()

    reg = get_registry()
    model_cfg = parse(ModelConfig, {
        "modalities": ["report"],
        "encoders": {"report": {"name": "bert_text", "options": {"path": str(local), "out_dim": 32}}},
        "tokenizers": {"report": {"name": "wordpiece", "options": {"path": str(local)}}},
        "fusion": {"name": "concat", "options": {"out_dim": 16}},
        "task": {"name": "multilabel", "options": {"num_labels": 2}},
    })
    # the normal flow (``fit`` calls fit_tokenizers): a path= tokenizer is taken as is, nothing trained
    model_cfg = fit_tokenizers(model_cfg, reg, {"report": []})
    assert model_cfg.tokenizers["report"].options == {"path": str(local)}
    model = build_model(model_cfg, reg)
    enc = model.encoders["report"]
    # the saved weights were loaded, not a fresh random init
    w = enc.bert.get_input_embeddings().weight
    assert torch.equal(w[: len(words)], saved.get_input_embeddings().weight)
    tok = model.tokenizers["report"] if hasattr(model, "tokenizers") else None
    if tok is not None:
        ids = tok(["Fever and cough", "chest pains"], max_length=16)
        assert ids[0, :2].tolist() == [words.index("[CLS]"), words.index("fever")]  # one [CLS], known words
        assert words.index("##s") in ids[1].tolist()  # WordPiece split "pains" -> pain ##s
    from mmdomain import Sample

    batch = Collate(model.modalities)([Sample({"report": "fever and cough"}, torch.tensor([1, 0])),
                                       Sample({"report": "heart failure"}, torch.tensor([0, 1]))])
    out = model(batch)
    assert out.output.shape == (2, 2) and torch.isfinite(out.output).all()
