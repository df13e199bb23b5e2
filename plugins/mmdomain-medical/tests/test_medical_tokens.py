"""The medical encoders' token sequences (EncoderSpec.supports_tokens) and the token-level fusion
head over a chest film's feature-map cells and a report's tokens."""

import pytest
import torch

from mmdomain import get_registry
from mmdomain.config import ModelConfig, parse
from mmdomain.data.sample import Batch
from mmdomain.models import build_model
from mmdomain_medical.plugin import DEFAULT_MODEL


@pytest.fixture
def registry():
    return get_registry()


def test_resnet_cells_and_bert_tokens_pool_to_the_embeddings(registry):
    torch.manual_seed(0)
    image = registry.encoder("monai_resnet").build(registry.modality("dicom_image")).eval()
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        seq, valid = image.tokens(x)
        assert seq.shape == (2, 4, 128) and valid.all()  # 64 px / 32: 2x2 cells of layer4
        torch.testing.assert_close(seq.mean(1), image(x), rtol=1e-4, atol=1e-5)
    text = registry.encoder("bert_text").build(registry.modality("report"), vocab_size=300, pad_id=0).eval()
    ids = torch.tensor([[5, 6, 7, 0, 0], [8, 0, 0, 0, 0]])
    with torch.no_grad():
        seq, valid = text.tokens(ids)
        assert valid.tolist() == [[True, True, True, False, False], [True, False, False, False, False]]
        pooled = (seq * valid[..., None]).sum(1) / valid.sum(1, keepdim=True)
        torch.testing.assert_close(pooled, text(ids), rtol=1e-4, atol=1e-5)


def test_default_medical_model_with_the_token_head_trains_and_maps_report_to_image(registry):
    data = {**DEFAULT_MODEL, "fusion": {"name": "token_attention", "options": {"dim": 64, "heads": 4}}}
    torch.manual_seed(0)
    model = build_model(parse(ModelConfig, data), registry).train()
    g = torch.Generator().manual_seed(0)
    has_image = torch.tensor([True, True, False, True])
    has_report = torch.tensor([True, False, True, True])
    batch = Batch({"dicom_image": torch.randn(4, 1, 64, 64, generator=g) * has_image[:, None, None, None],
                   "report": ["small left effusion", "", "no acute findings", "cardiomegaly"]},
                  {"dicom_image": has_image, "report": has_report},
                  torch.randint(0, 2, (4, 14), generator=g).float())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    out = model(batch)
    loss = model.loss(out, batch)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss) and out.output.shape == (4, 14)
    model.eval()
    model.fusion.record_attention = True
    with torch.no_grad():
        model(batch)
    maps = model.fusion.last_attention["report->dicom_image"]
    assert maps.shape[0] == 4 and maps.shape[2] == 4  # 2x2 image cells
    assert torch.all(maps[~has_image] == 0)
