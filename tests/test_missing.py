"""Missing-modality methods beyond dropout: the HeMIS head, availability-pattern tokens, cross-modal
imputation and distillation from the full-modality teacher (mmdomain.fusion.hemis,
fusion.cross_attention, models.missing)."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from mmdomain.checkpoint import load_checkpoint, save_checkpoint
from mmdomain.config import ModelConfig, contrastive_variant, parse, single_modality
from mmdomain.data.sample import Batch
from mmdomain.errors import ConfigError
from mmdomain.fusion import CrossAttentionFusion, HeMISFusion
from mmdomain.fusion.base import mask_like
from mmdomain.models import build_model, missing
from mmdomain.training import train_one_epoch

FUSIONS = ["concat", "late", "gated", "cross_attention", "hemis"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def reg(image_text):
    return image_text.registry


def _config(fusion="concat", task=None, **model) -> ModelConfig:
    data = {"modalities": ["image", "text"],
            "encoders": {"image": {"name": "cnn", "options": {"out_dim": 16, "width": 8}},
                         "text": {"name": "bag_of_words", "options": {"out_dim": 12}}},
            "tokenizers": {"text": {"name": "hashing", "options": {"buckets": 256}}},
            "fusion": {"name": fusion, "options": {"dropout": 0.0}},
            "task": task or {"name": "multiclass", "options": {"num_classes": 3, "dropout": 0.0}}, **model}
    return parse(ModelConfig, data)


def _model(reg, fusion="concat", seed=0, **model):
    torch.manual_seed(seed)
    return build_model(_config(fusion, **model), reg).train()


# -- HeMIS ---------------------------------------------------------------------------------------------
def test_hemis_sees_the_mean_and_variance_of_the_present_projections():
    torch.manual_seed(0)
    head = HeMISFusion({"a": 4, "b": 6, "c": 5}, dim=8, out_dim=7, dropout=0.0).eval()
    emb = {"a": torch.randn(3, 4), "b": torch.randn(3, 6), "c": torch.randn(3, 5)}
    present = {"a": torch.tensor([True, True, False]), "b": torch.tensor([True, False, True]),
               "c": torch.tensor([True, False, False])}
    out = head(emb, present)
    p = {m: head.proj[m](emb[m]) for m in emb}
    three = torch.stack([p["a"][0], p["b"][0], p["c"][0]])
    expect0 = head.out(torch.cat([three.mean(0), three.var(0, unbiased=False)]))
    torch.testing.assert_close(out[0], expect0)
    torch.testing.assert_close(out[1], head.out(torch.cat([p["a"][1], torch.zeros(8)])))  # one modality: var 0
    torch.testing.assert_close(out[2], head.out(torch.cat([p["b"][2], torch.zeros(8)])))
    nothing = {m: torch.zeros(3, dtype=torch.bool) for m in emb}
    torch.testing.assert_close(head(emb, nothing), head.out(torch.zeros(3, 16)))  # no modality: zeros


# -- availability-pattern tokens --------------------------------------------------------------------------
def test_each_row_gets_the_token_of_its_own_availability_pattern():
    torch.manual_seed(0)
    dims = {"a": 4, "b": 6}
    head = CrossAttentionFusion(dims, dim=8, heads=2, dropout=0.0, pattern_tokens=True).eval()
    assert head.patterns.weight.shape == (4, 8)  # one per subset of {a, b}
    emb = {"a": torch.randn(4, 4), "b": torch.randn(4, 6)}
    present = {"a": torch.tensor([True, True, False, False]), "b": torch.tensor([True, False, True, False])}
    probe = torch.randn(8)  # a LayerNorm'ed output sums to a constant: weigh it instead
    (head(emb, present) * probe).sum().backward()
    used = head.patterns.weight.grad.abs().sum(1) > 0
    assert used.tolist() == [True, True, True, True]  # bits: none=0, a=1, b=2, a+b=3
    head.zero_grad()
    only_a = {"a": torch.tensor([True, True, True, True]), "b": torch.zeros(4, dtype=torch.bool)}
    (head(emb, only_a) * probe).sum().backward()
    assert (head.patterns.weight.grad.abs().sum(1) > 0).tolist() == [False, True, False, False]
    # the token changes the output, and attention is still reported over the modality tokens only
    plain = CrossAttentionFusion(dims, dim=8, heads=2, dropout=0.0).eval()
    plain.load_state_dict({k: v for k, v in head.state_dict().items() if not k.startswith("patterns")})
    assert not torch.allclose(plain(emb, present), head(emb, present))
    head.record_attention = True
    head(emb, present)
    assert head.last_attention.shape == (4, 2)
    assert torch.all(head.last_attention[~present["b"], 1] == 0)


def test_pattern_tokens_refuse_more_modalities_than_the_table_holds():
    with pytest.raises(ValueError, match="pattern_tokens takes at most 10"):
        CrossAttentionFusion({f"m{i}": 2 for i in range(11)}, dim=8, heads=2, pattern_tokens=True)


# -- imputation ------------------------------------------------------------------------------------------
def test_an_absent_embedding_becomes_the_translation_of_the_present_ones(reg, fake_batch):
    model = _model(reg, missing={"impute_weight": 1.0}).eval()
    assert set(model.translators) == {"image", "text"}
    emb = model.encode(model.tokenize(fake_batch))
    present = fake_batch.present
    filled, seen = missing.impute(model.translators, emb, present)
    both = present["image"] | present["text"]
    assert torch.equal(seen["image"], both) and torch.equal(seen["text"], both)
    no_text = present["image"] & ~present["text"]
    torch.testing.assert_close(filled["text"][no_text], model.translators["text"]["image"](emb["image"][no_text]))
    torch.testing.assert_close(filled["text"][present["text"]], emb["text"][present["text"]])  # own kept
    # what stood in the absent rows never matters: NaN there changes nothing
    poisoned = {m: torch.where(mask_like(present[m], e), e, torch.full_like(e, float("nan"))) for m, e in emb.items()}
    again, _ = missing.impute(model.translators, poisoned, present)
    for m in emb:
        torch.testing.assert_close(again[m], filled[m])
    # and the model's prediction for a row without text uses the translation
    out = model(fake_batch).output
    manual = model.task(model.fusion(filled, seen), filled, seen)
    torch.testing.assert_close(out, manual)


def test_imputation_loss_is_the_error_on_rows_holding_both_and_zero_elsewhere(reg, fake_batch):
    model = _model(reg, missing={"impute_weight": 0.5})
    out = model(fake_batch)
    emb, present = out.embeddings, fake_batch.present
    rows = missing.impute_sample_losses(model.translators, emb, present)
    both = present["image"] & present["text"]
    t_of_i = F.mse_loss(model.translators["text"]["image"](emb["image"]), emb["text"], reduction="none").mean(1)
    i_of_t = F.mse_loss(model.translators["image"]["text"](emb["text"]), emb["image"], reduction="none").mean(1)
    torch.testing.assert_close(rows[both], ((t_of_i + i_of_t) / 2)[both])
    assert torch.all(rows[~both] == 0)
    torch.testing.assert_close(out.missing_losses, 0.5 * rows)
    torch.testing.assert_close(model.loss(out, fake_batch), F.cross_entropy(out.output, fake_batch.target)
                               + 0.5 * rows.mean())
    per_row = model.sample_losses(out, fake_batch)  # what DP-SGD trains: the same objective row by row
    torch.testing.assert_close(per_row.mean(), model.loss(out, fake_batch))
    # the target is detached: the image->text error trains the translator and the image encoder, not the text one
    model.zero_grad()
    only = torch.nn.ModuleDict({"text": model.translators["text"]})
    missing.impute_sample_losses(only, emb, present).sum().backward()
    assert model.translators["text"]["image"].weight.grad.abs().sum() > 0
    assert all(p.grad is None or not p.grad.any() for p in model.encoders["text"].parameters())
    assert any(p.grad is not None and p.grad.any() for p in model.encoders["image"].parameters())
    assert model.eval()(fake_batch).missing_losses is None  # training only


def test_the_translators_learn_to_predict_the_absent_modality(reg, fake_batch):
    model = _model(reg, missing={"impute_weight": 5.0})
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    full = copy.copy(fake_batch)
    full.present = {m: torch.ones(6, dtype=torch.bool) for m in fake_batch.present}
    full.inputs = dict(fake_batch.inputs, text=[f"note {i} {'urgent' if i % 2 else 'routine'}" for i in range(6)])

    def error():
        model.eval()
        with torch.no_grad():
            e = model.encode(model.tokenize(full))
            return float(missing.impute_sample_losses(model.translators, e, full.present).mean())

    before = error()
    model.train()
    train_one_epoch(model, [full] * 40, optimizer, device=torch.device("cpu"))
    assert error() < 0.5 * before


# -- distillation ----------------------------------------------------------------------------------------
def test_distillation_pulls_only_the_thinned_rows_toward_the_teacher(reg, fake_batch):
    model = _model(reg, modality_dropout=0.5, missing={"distill_weight": 2.0, "distill_temperature": 3.0})
    torch.manual_seed(3)
    out = model(fake_batch)
    thinned = missing.thinned_rows(fake_batch.present, out.present)
    assert thinned.any() and not thinned.all()
    # the encoders saw every row as it came, so the teacher's inputs are there for the thinned rows
    has_image = fake_batch.present["image"]
    assert torch.all(out.embeddings["image"][has_image].abs().sum(1) > 0)
    with torch.no_grad():
        teacher = model.task(model.fusion(out.embeddings, fake_batch.present), out.embeddings, fake_batch.present)
    t = 3.0
    kl = F.kl_div(F.log_softmax(out.output / t, -1), F.softmax(teacher / t, -1), reduction="none").sum(1) * t * t
    torch.testing.assert_close(out.missing_losses, torch.where(thinned, 2.0 * kl, 0.0))
    out.missing_losses.sum().backward()  # the teacher is not trained by it
    assert model.task.head[1].weight.grad.abs().sum() > 0


def test_every_supervised_task_has_a_distillation_loss_that_is_zero_at_the_teacher():
    from mmdomain.tasks.classification import MultilabelTask, MulticlassTask
    from mmdomain.tasks.segmentation import SegmentationTask

    torch.manual_seed(0)
    for head, shape in ((MulticlassTask(4, {}, num_classes=3), (5, 3)), (MultilabelTask(4, {}, num_labels=4), (5, 4)),
                        (SegmentationTask(4, {}, num_classes=3), (5, 3, 4, 4))):
        s, t = torch.randn(shape), torch.randn(shape)
        losses = head.distill_losses(s, t, 2.0)
        assert losses.shape == (5,) and torch.all(losses > 0)
        torch.testing.assert_close(head.distill_losses(t, t, 2.0), torch.zeros(5), atol=1e-6, rtol=0)


# -- config ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("model, message", [
    ({"missing": {"distill_weight": 1.0}}, "needs modality_dropout > 0"),
    ({"missing": {"impute_weight": -1}}, "missing.impute_weight"),
    ({"missing": {"distill_temperature": 0}}, "missing.distill_temperature"),
    ({"missing": {"imputation": 1}}, "missing.imputation"),
])
def test_bad_missing_options_name_the_field(model, message):
    with pytest.raises(ConfigError, match=message):
        _config(**model)


def test_missing_methods_need_two_modalities_and_a_target(reg):
    with pytest.raises(ConfigError, match="two or more modalities"):
        parse(ModelConfig, {**_config().model_dump(), "modalities": ["image"], "encoders": {
            "image": {"name": "cnn"}}, "tokenizers": {}, "missing": {"impute_weight": 1.0}})
    with pytest.raises(ConfigError, match="missing: task 'contrastive'.*no target"):
        build_model(_config(task={"name": "contrastive"}, missing={"impute_weight": 1.0}), reg)
    single = single_modality(_config(missing={"impute_weight": 1.0}), "image")
    assert not single.missing.active
    variant = parse(ModelConfig, contrastive_variant(_config(modality_dropout=0.2, missing={
        "impute_weight": 1.0, "distill_weight": 1.0}).model_dump(mode="json"), proj_dim=8))
    assert not variant.missing.active and build_model(variant, reg).translators is None


def test_a_checkpoint_carries_the_translators(reg, tmp_path):
    model = _model(reg, "hemis", missing={"impute_weight": 1.0, "impute_hidden": 8})
    path = save_checkpoint(model, tmp_path / "m.safetensors", reg)
    back, _ = load_checkpoint(path, reg)
    assert back.config.missing.impute_hidden == 8
    for k, v in model.state_dict().items():
        torch.testing.assert_close(back.state_dict()[k], v)


# -- every head --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fusion", FUSIONS)
def test_every_head_trains_with_every_method_and_predicts_from_one_modality(reg, fake_batch, fusion):
    options = {"pattern_tokens": True} if fusion == "cross_attention" else {}
    data = _config(fusion, modality_dropout=0.3, missing={"impute_weight": 1.0, "distill_weight": 1.0}).model_dump()
    data["fusion"]["options"].update(options)
    torch.manual_seed(0)
    model = build_model(parse(ModelConfig, data), reg).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    stats = train_one_epoch(model, [fake_batch] * 3, optimizer, device=torch.device("cpu"))
    assert math.isfinite(stats["loss"]) and stats["steps"] == 3
    for prefix in ("translators.image.text", "translators.text.image", "fusion.", "task."):
        assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items() if k.startswith(prefix)), prefix
    model.eval()
    for keep in ("image", "text"):  # trained on both, scored with one: every row still gets a finite prediction
        batch = Batch(fake_batch.inputs, {m: (p if m == keep else torch.zeros_like(p))
                                          for m, p in fake_batch.present.items()}, fake_batch.target)
        with torch.no_grad():
            out = model(batch).output
        assert out.shape == (6, 3) and torch.isfinite(out).all()
        rows = fake_batch.present[keep]
        other = "text" if keep == "image" else "image"
        altered = Batch(dict(fake_batch.inputs), batch.present, fake_batch.target)
        altered.inputs[other] = (fake_batch.inputs[other] + 7.0) if other == "image" else ["zzz"] * 6
        with torch.no_grad():
            torch.testing.assert_close(model(altered).output[rows], out[rows])  # the absent one is not read


# -- unimodal fallback -------------------------------------------------------------------------------------
def test_a_row_with_one_modality_is_predicted_by_that_modalitys_own_head(reg, fake_batch):
    model = _model(reg, "gated", balance={"aux_weight": 1.0}, missing={"unimodal_fallback": True}).eval()
    present = fake_batch.present
    with torch.no_grad():
        out = model(fake_batch).output
        emb = model.encode(model.tokenize(fake_batch))
        fused = model.task(model.fusion(emb, present), emb, present)
        own = {m: model.aux_heads[m](emb[m]) for m in emb}
    only = {m: present[m] & ~present[o] for m, o in (("image", "text"), ("text", "image"))}
    both = present["image"] & present["text"]
    assert only["image"].any() and only["text"].any() and both.any()
    for m, rows in only.items():
        torch.testing.assert_close(out[rows], own[m][rows])
        assert not torch.allclose(out[rows], fused[rows])
    torch.testing.assert_close(out[both], fused[both])  # two modalities: the fusion head, as without the option
    model.train()
    torch.manual_seed(1)
    train_out = model(fake_batch)  # training predicts with the fusion head; the aux heads learn through their loss
    assert train_out.aux is not None and set(train_out.aux) == {"image", "text"}
    with pytest.raises(ConfigError, match="unimodal_fallback.*needs balance.aux_weight > 0"):
        _config(missing={"unimodal_fallback": True})
