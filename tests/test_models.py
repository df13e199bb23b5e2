"""mmdomain.models: the composed model (encoders -> fusion -> task) on the fixture batch."""

import pytest
import torch

from mmdomain import Collate, ModalitySpec, Sample, hookimpl
from mmdomain.config import ModelConfig
from mmdomain.models import build_model


class TwoModalities:
    @hookimpl
    def register_modalities(self, register):
        register(ModalitySpec("image", "image", channels=1))
        register(ModalitySpec("text", "text"))


@pytest.mark.parametrize("fusion", ["concat", "late", "gated", "cross_attention"])
def test_composed_model_is_independent_of_absent_fill(register_plugin, fake_batch, fusion):
    registry = register_plugin(TwoModalities()).registry
    cfg = ModelConfig(modalities=["image", "text"],
                      encoders={"image": {"name": "cnn", "options": {"out_dim": 16, "width": 8}},
                                "text": {"name": "bag_of_words", "options": {"out_dim": 16}}},
                      tokenizers={"text": {"name": "hashing"}}, fusion={"name": fusion},
                      task={"name": "multiclass", "options": {"num_classes": 3}})
    torch.manual_seed(0)
    model = build_model(cfg, registry).eval()
    out = model(fake_batch).output
    noisy = fake_batch.inputs["image"] + 50 * (~fake_batch.present["image"]).float()[:, None, None, None]
    fake_batch.inputs["image"] = noisy
    fake_batch.inputs["text"] = [t or "garbage words here" for t in fake_batch.inputs["text"]]
    torch.testing.assert_close(model(fake_batch).output, out)


def test_segmentation_model_with_text_broadcast(register_plugin):
    registry = register_plugin(TwoModalities()).registry
    cfg = ModelConfig(modalities=["image", "text"],
                      encoders={"image": {"name": "cnn", "options": {"out_dim": 16, "width": 8, "depth": 2}},
                                "text": {"name": "bag_of_words", "options": {"out_dim": 16}}},
                      tokenizers={"text": {"name": "hashing"}}, fusion={"name": "cross_attention", "options": {"dim": 16}},
                      task={"name": "segmentation", "options": {"num_classes": 3}})
    model = build_model(cfg, registry)
    batch = Collate(["image", "text"])([Sample({"image": torch.randn(1, 32, 32), "text": "x"},
                                               torch.randint(0, 3, (32, 32))),
                                        Sample({"text": "only text"}, torch.randint(0, 3, (32, 32)))])
    out = model(batch)
    assert out.output.shape == (2, 3, 8, 8)
    model.loss(out, batch).backward()
