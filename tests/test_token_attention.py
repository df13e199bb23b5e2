"""The token-level cross-modal attention head (mmdomain.fusion.token_attention) and the encoders'
token sequences (EncoderSpec.supports_tokens)."""

import copy
import math

import pytest
import torch
from torch import nn

from mmdomain import EncoderSpec, ModalitySpec, hookimpl
from mmdomain.config import ModelConfig, parse
from mmdomain.data.sample import Batch
from mmdomain.errors import ConfigError
from mmdomain.fusion import TokenAttentionFusion
from mmdomain.models import build_model
from mmdomain.training import train_one_epoch


class Pooled(nn.Module):
    def __init__(self, modality, out_dim: int = 8):
        super().__init__()
        self.out_dim = out_dim
        self.lin = nn.Linear(1, out_dim)

    def forward(self, x):
        return self.lin(x.flatten(1).mean(1, keepdim=True))


class ImageAndText:
    @hookimpl
    def register_modalities(self, register):
        register(ModalitySpec("image", "image", channels=1))
        register(ModalitySpec("text", "text"))

    @hookimpl
    def register_encoders(self, register):
        register(EncoderSpec("pooled_only", ("image",), Pooled, out_dim=8))


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def reg(register_plugin):
    return register_plugin(ImageAndText()).registry


def _config(text="bag_of_words", image="cnn", task=None, **model) -> ModelConfig:
    return parse(ModelConfig, {
        "modalities": ["image", "text"],
        "encoders": {"image": {"name": image, "options": {"out_dim": 16, "width": 8} if image == "cnn" else {}},
                     "text": {"name": text, "options": {"out_dim": 16}}},
        "tokenizers": {"text": {"name": "hashing", "options": {"buckets": 256}}},
        "fusion": {"name": "token_attention", "options": {"dim": 16, "heads": 2, "dropout": 0.0}},
        "task": task or {"name": "multiclass", "options": {"num_classes": 3, "dropout": 0.0}}, **model})


def _head_inputs(b=5, ti=6, tt=4):
    g = torch.Generator().manual_seed(0)
    tokens = {"image": (torch.randn(b, ti, 8, generator=g), torch.ones(b, ti, dtype=torch.bool)),
              "text": (torch.randn(b, tt, 6, generator=g), torch.tensor([[1, 1, 0, 0]] * b, dtype=torch.bool))}
    present = {"image": torch.tensor([True, True, False, True, True]),
               "text": torch.tensor([True, False, True, True, False])}
    emb = {m: s.mean(1) for m, (s, _) in tokens.items()}
    return emb, present, tokens


@pytest.mark.parametrize("mlp_ratio", [0, 2])
def test_absent_modalities_and_padded_tokens_are_ignored_exactly(mlp_ratio):
    torch.manual_seed(0)
    head = TokenAttentionFusion({"image": 8, "text": 6}, dim=8, heads=2, dropout=0.0, mlp_ratio=mlp_ratio).eval()
    assert (head.blocks[0].mlp is None) == (mlp_ratio == 0)
    emb, present, tokens = _head_inputs()
    out = head(emb, present, tokens=tokens)
    assert out.shape == (5, 8) and torch.isfinite(out).all()
    # whatever stands in the padded text positions and in the absent rows: identical outputs, NaN included
    for fill in (1e4, float("nan")):
        altered = {}
        for m, (seq, valid) in tokens.items():
            keep = valid & present[m][:, None]
            altered[m] = (torch.where(keep[..., None], seq, torch.full_like(seq, fill)), valid)
        torch.testing.assert_close(head(emb, present, tokens=altered), out, rtol=0, atol=0)
    # a valid token does matter, to its own row only
    changed = copy.deepcopy(tokens)
    changed["text"][0][0, 0] += 1.0
    moved = head(emb, present, tokens=changed)
    assert not torch.allclose(moved[0], out[0]) and torch.equal(moved[1:], out[1:])


def test_bad_head_options_are_refused_by_name():
    with pytest.raises(ValueError, match=r"dim \(10\) must be divisible by heads \(4\)"):
        TokenAttentionFusion({"image": 8, "text": 6}, dim=10, heads=4)
    with pytest.raises(ValueError, match="mlp_ratio must be 0 \\(no MLP\\) to 8, got 9"):
        TokenAttentionFusion({"image": 8, "text": 6}, mlp_ratio=9)


def test_attention_maps_relate_each_token_to_the_other_modalitys_tokens():
    torch.manual_seed(0)
    head = TokenAttentionFusion({"image": 8, "text": 6}, dim=8, heads=2, dropout=0.0).eval()
    emb, present, tokens = _head_inputs()
    head.record_attention = True
    head(emb, present, tokens=tokens)
    maps = head.last_attention
    assert set(maps) == {"image->text", "text->image"}
    assert all(torch.equal(head.last_valid[m], v & present[m][:, None]) for m, (_, v) in tokens.items())
    assert maps["text->image"].shape == (5, 4, 6) and maps["image->text"].shape == (5, 6, 4)
    assert torch.all(maps["image->text"][:, :, 2:] == 0)  # padded text tokens get no attention
    assert torch.all(maps["image->text"][~present["text"]] == 0)  # nor an absent report
    assert torch.all(maps["text->image"][~present["image"]] == 0)
    both = present["image"] & present["text"]
    sums = maps["text->image"][both].sum(-1)
    assert torch.all(sums > 0) and torch.all(sums < 1)  # the rest went to the null key


def test_without_tokens_each_pooled_embedding_is_one_token():
    torch.manual_seed(0)
    head = TokenAttentionFusion({"image": 8, "text": 6}, dim=8, heads=2, dropout=0.0).eval()
    emb, present, _ = _head_inputs()
    ones = {m: (e[:, None], present[m][:, None]) for m, e in emb.items()}
    torch.testing.assert_close(head(emb, present), head(emb, present, tokens=ones))


@pytest.mark.parametrize("text", ["bag_of_words", "tiny_transformer"])
def test_the_model_trains_on_mixed_availability_from_the_encoders_tokens(reg, fake_batch, text):
    torch.manual_seed(0)
    model = build_model(_config(text, balance={"aux_weight": 1.0, "modulation": "ogm"}), reg).train()
    assert model.uses_tokens
    batch = model.tokenize(fake_batch)
    emb, tokens = model.encode_tokens(batch)
    seq, valid = tokens["image"]
    assert seq.shape == (6, 4, 16)  # 16x16 image, 2 stride-2 stages of the cnn (depth 3): 2x2 cells
    assert torch.equal(valid.all(1), fake_batch.present["image"])
    assert torch.equal(tokens["text"][1], (batch.inputs["text"] != 0) & fake_batch.present["text"][:, None])
    torch.testing.assert_close(emb["image"][fake_batch.present["image"]],
                               model.encoders["image"](fake_batch.inputs["image"][fake_batch.present["image"]]))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    first = train_one_epoch(model, [fake_batch], optimizer, device=torch.device("cpu"))["loss"]
    stats = train_one_epoch(model, [fake_batch] * 30, optimizer, device=torch.device("cpu"))
    assert math.isfinite(stats["loss"]) and stats["loss"] < 0.5 * first
    model.eval()
    out = model(fake_batch).output
    # the absent rows' pixels and a report's extra padding change nothing
    altered = Batch(dict(fake_batch.inputs), fake_batch.present, fake_batch.target)
    absent = (~fake_batch.present["image"]).float()[:, None, None, None]
    altered.inputs["image"] = fake_batch.inputs["image"] + 50 * absent
    torch.testing.assert_close(model(altered).output, out, rtol=0, atol=0)
    ids = model.tokenize(fake_batch).inputs["text"]
    padded = Batch(dict(fake_batch.inputs, text=torch.cat([ids, torch.zeros_like(ids)], 1)), fake_batch.present,
                   fake_batch.target)
    torch.testing.assert_close(model(padded).output, out, rtol=1e-5, atol=1e-6)


def test_token_head_refuses_what_it_cannot_serve(reg):
    with pytest.raises(ConfigError, match=r"encoders.image \('pooled_only'\) cannot return tokens.*'cnn'"):
        build_model(_config(image="pooled_only"), reg)
    with pytest.raises(ConfigError, match="segmentation needs a dense head"):
        build_model(_config(task={"name": "segmentation", "options": {"num_classes": 2}}), reg)
    with pytest.raises(ConfigError, match="impute_weight fills pooled embeddings"):
        build_model(_config(missing={"impute_weight": 1.0}), reg)
