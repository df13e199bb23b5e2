"""ModelConfig.balance: unimodal auxiliary heads and OGM(-GE) gradient modulation (mmdomain.models.balance)."""

import copy
import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

from mmdomain.checkpoint import load_checkpoint, save_checkpoint
from mmdomain.config import ModelConfig, contrastive_variant, parse, single_modality
from mmdomain.data.sample import Batch
from mmdomain.errors import ConfigError
from mmdomain.models import balance, build_model
from mmdomain.training import train_one_epoch

FUSIONS = ["concat", "late", "gated", "cross_attention"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def reg(image_text):
    return image_text.registry


def _config(fusion="concat", task=None, **model) -> ModelConfig:
    data = {"modalities": ["image", "text"],
            "encoders": {"image": {"name": "cnn", "options": {"out_dim": 16, "width": 8}},
                         "text": {"name": "bag_of_words", "options": {"out_dim": 16}}},
            "tokenizers": {"text": {"name": "hashing", "options": {"buckets": 256}}},
            "fusion": {"name": fusion, "options": {"dropout": 0.0}},
            "task": task or {"name": "multiclass", "options": {"num_classes": 3, "dropout": 0.0}}, **model}
    return parse(ModelConfig, data)


def _model(reg, fusion="concat", seed=0, **model):
    torch.manual_seed(seed)
    m = build_model(_config(fusion, **model), reg)
    for module in m.modules():  # no dropout anywhere: two passes see the same network
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return m.train()


# -- config ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("balance_cfg, field", [({"aux_weight": -1}, "balance.aux_weight"),
                                                ({"aux_weight": float("nan")}, "balance.aux_weight"),
                                                ({"modulation": "ogm_ge"}, "balance.modulation"),
                                                ({"alpha": 0}, "balance.alpha"),
                                                ({"aux": 1.0}, "balance.aux")])
def test_bad_balance_options_name_the_field(balance_cfg, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        _config(balance=balance_cfg)


def test_balance_section_loads_from_a_run_config(tmp_path):
    from mmdomain.config import load_config

    path = tmp_path / "run.toml"
    path.write_text('[data]\ndataset = "toy"\nroot = "d"\n[model]\nmodalities = ["a", "b"]\n'
                    '[model.encoders]\na = { name = "cnn" }\nb = { name = "cnn" }\n[model.task]\nname = "multiclass"\n'
                    '[model.balance]\naux_weight = 1.0\nmodulation = "ogm-ge"\nalpha = 0.3\n')
    balance_cfg = load_config(path).model.balance
    assert (balance_cfg.aux_weight, balance_cfg.modulation, balance_cfg.alpha) == (1.0, "ogm-ge", 0.3)
    path.write_text(path.read_text().replace("alpha = 0.3", "alpha = -1"))
    with pytest.raises(ConfigError, match=r"model\.balance\.alpha"):
        load_config(path)


def test_balance_needs_two_modalities_and_single_modality_models_drop_it():
    with pytest.raises(ConfigError, match="two or more modalities"):
        parse(ModelConfig, {"modalities": ["image"], "encoders": {"image": {"name": "cnn"}},
                            "task": {"name": "multiclass"}, "balance": {"aux_weight": 1.0}})
    on = _config(balance={"aux_weight": 1.0, "modulation": "ogm-ge"})
    assert not single_modality(on, "image").balance.active


@pytest.mark.parametrize("task, option, message", [
    ({"name": "contrastive"}, {"aux_weight": 1.0}, "no target"),
    ({"name": "contrastive"}, {"modulation": "ogm"}, "no target"),
    ({"name": "segmentation", "options": {"num_classes": 3}}, {"aux_weight": 1.0}, "no unimodal head"),
])
def test_tasks_the_remedies_do_not_apply_to_are_refused(reg, task, option, message):
    with pytest.raises(ConfigError, match=f"balance.*{message}"):
        build_model(_config("concat", task=task, balance=option), reg)


# -- auxiliary heads -----------------------------------------------------------------------------------
def test_aux_loss_is_each_present_modalitys_head_loss_and_absent_rows_add_exactly_zero(reg, fake_batch):
    model = _model(reg, balance={"aux_weight": 0.7}, encode_absent=True)  # encoders run on absent rows too
    out = model(fake_batch)
    present, target = out.present, fake_batch.target
    rows = balance.aux_sample_losses(model.task, out.aux, target, present)
    by_hand = sum(torch.where(present[m], F.cross_entropy(model.aux_heads[m](out.embeddings[m]), target,
                                                           reduction="none"), 0.0) for m in model.modalities) / 2
    torch.testing.assert_close(rows, by_hand)
    torch.testing.assert_close(model.loss(out, fake_batch),
                               F.cross_entropy(out.output, target) + 0.7 * by_hand.mean())
    # another fill in the absent rows changes their embeddings, not the loss
    refilled = copy.copy(fake_batch)
    refilled.inputs = dict(fake_batch.inputs, image=fake_batch.inputs["image"]
                           + 50 * (~present["image"]).float()[:, None, None, None])
    out2 = model(refilled)
    absent = ~present["image"]
    assert not torch.allclose(out2.embeddings["image"][absent], out.embeddings["image"][absent])
    torch.testing.assert_close(model.loss(out2, refilled), model.loss(out, fake_batch), rtol=0, atol=0)
    # even NaN there reaches neither the aux loss nor the gradient
    emb = {m: e.detach().clone().requires_grad_() for m, e in out.embeddings.items()}
    poisoned = {m: torch.where(present[m][:, None], e, torch.full_like(e, float("nan"))) for m, e in emb.items()}
    aux = balance.aux_outputs(model.aux_heads, poisoned, present)
    losses = balance.aux_sample_losses(model.task, aux, target, present)
    torch.testing.assert_close(losses, rows.detach())
    losses.sum().backward()
    for m in model.modalities:
        assert torch.isfinite(emb[m].grad).all() and torch.all(emb[m].grad[~present[m]] == 0)
        assert torch.any(emb[m].grad[present[m]] != 0)


def test_sample_losses_carry_the_aux_term_and_average_to_the_batch_loss(reg, fake_batch):
    model = _model(reg, balance={"aux_weight": 1.0})
    out = model(fake_batch)
    per_row = model.sample_losses(out, fake_batch)
    assert per_row.shape == (len(fake_batch),)
    torch.testing.assert_close(per_row.mean(), model.loss(out, fake_batch))
    task_only = model.task.sample_losses(out.output, fake_batch.target, out.present)
    assert torch.all(per_row > task_only)
    model.eval()  # predictions, and the loss evaluation reports, stay the fusion head's
    out = model(fake_batch)
    assert out.aux is None
    torch.testing.assert_close(model.loss(out, fake_batch), F.cross_entropy(out.output, fake_batch.target))


def test_modulation_is_refused_where_each_sample_trains_on_its_own(reg, fake_batch):
    model = _model(reg, balance={"modulation": "ogm-ge"})
    with pytest.raises(ConfigError, match="balance.modulation.*DP-SGD"):
        model.sample_losses(model(fake_batch), fake_batch)


def test_per_sample_gradients_with_the_aux_term_trace_under_vmap(reg, fake_batch):
    """What local DP-SGD's torch.func path does (vmap of one row's gradient through the whole model,
    encode_absent on): it traces with the aux heads, and each row's gradient is that row's alone."""
    from torch.func import functional_call, grad, vmap

    model = _model(reg, "gated", balance={"aux_weight": 1.0}, encode_absent=True)
    batch = model.tokenize(fake_batch)
    weights = {n: p.detach() for n, p in model.named_parameters()}

    def loss_of_one(w, inputs, present, target):
        one = Batch({m: x[None] for m, x in inputs.items()}, {m: p[None] for m, p in present.items()}, target[None],
                    [{}])
        return model.sample_losses(functional_call(model, w, (one,)), one).sum()

    per_row = vmap(grad(loss_of_one), in_dims=(None, 0, 0, 0))(weights, batch.inputs, batch.present, batch.target)
    for i in (0, 2, 5):  # both modalities, text only, image only
        alone = grad(loss_of_one)(weights, {m: x[i] for m, x in batch.inputs.items()},
                                  {m: p[i] for m, p in batch.present.items()}, batch.target[i])
        for n in weights:
            torch.testing.assert_close(per_row[n][i], alone[n], rtol=1e-4, atol=1e-6)
    heads = per_row["aux_heads.image.weight"].flatten(1).abs().sum(1)
    assert torch.all((heads > 0) == fake_batch.present["image"])  # no image: no gradient to its head


@pytest.mark.parametrize("fusion", FUSIONS)
def test_every_fusion_head_trains_with_aux_heads_and_ogm_ge(reg, fake_batch, fusion):
    model = _model(reg, fusion, balance={"aux_weight": 1.0, "modulation": "ogm-ge", "alpha": 1.0})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    stats = train_one_epoch(model, [fake_batch] * 2, optimizer, device=torch.device("cpu"))
    assert math.isfinite(stats["loss"]) and stats["steps"] == 2
    assert set(stats["modulation"]) == {"image", "text"} and all(0 < k <= 1 for k in stats["modulation"].values())
    for prefix in ("aux_heads.image.", "aux_heads.text.", "encoders.image.", "encoders.text.", "fusion.", "task."):
        assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items() if k.startswith(prefix)), prefix
    out = model.eval()(fake_batch)
    assert out.aux is None and out.output.shape == (len(fake_batch), 3)


# -- gradient modulation -----------------------------------------------------------------------------------
def _dominated_by_image(model, batch):
    """Targets all 0; the image head says class 0 loudly, the text head is uniform (1/3)."""
    with torch.no_grad():
        for m, bias in (("image", [6.0, 0.0, 0.0]), ("text", [0.0, 0.0, 0.0])):
            model.aux_heads[m].weight.zero_()
            model.aux_heads[m].bias.copy_(torch.tensor(bias))
    return Batch(batch.inputs, batch.present, torch.zeros(len(batch), dtype=torch.long), batch.meta)


def test_ogm_scales_the_dominant_encoders_gradient_by_its_coefficient(reg, fake_batch):
    alpha = 0.8
    model = _model(reg, balance={"aux_weight": 1.0, "modulation": "ogm", "alpha": alpha})
    batch = _dominated_by_image(model, fake_batch)
    s_image = F.softmax(torch.tensor([6.0, 0.0, 0.0]), 0)[0]  # every image row, by hand
    expected = 1 - math.tanh(alpha * (float(s_image) / (1 / 3) - 1))
    assert expected < 0.5

    out = model(batch)
    model.zero_grad()
    model.loss(out, batch).backward()
    plain = {m: {n: p.grad.clone() for n, p in model.encoders[m].named_parameters()} for m in model.modalities}
    coefficients = model.modulate_gradients(out, batch)
    assert float(coefficients["image"]) == pytest.approx(expected, rel=1e-5)
    assert float(coefficients["text"]) == 1.0
    for n, p in model.encoders["image"].named_parameters():
        torch.testing.assert_close(p.grad, expected * plain["image"][n], rtol=1e-5, atol=1e-8)
    for n, p in model.encoders["text"].named_parameters():
        torch.testing.assert_close(p.grad, plain["text"][n], rtol=0, atol=0)

    # train_one_epoch applies it between backward and the step; FedProx's gradient is added unscaled
    trained = copy.deepcopy(model)
    trained.zero_grad()
    start = {n: p.detach().clone() for n, p in trained.encoders["image"].named_parameters()}

    def prox(m):
        return 0.05 * sum((p ** 2).sum() for p in m.encoders["image"].parameters())

    stats = train_one_epoch(trained, [batch], torch.optim.SGD(trained.parameters(), lr=1.0), device=torch.device("cpu"),
                            grad_clip=None, extra_loss=prox)
    assert stats["modulation"]["image"] == pytest.approx(expected, rel=1e-5)
    for n, p in trained.encoders["image"].named_parameters():
        step = expected * plain["image"][n] + 0.1 * start[n]
        torch.testing.assert_close(start[n] - p.detach(), step, rtol=1e-4, atol=1e-6)


def test_ogm_ge_adds_noise_of_each_gradients_own_spread(reg, fake_batch):
    model = _model(reg, balance={"aux_weight": 1.0, "modulation": "ogm-ge", "alpha": 0.8})
    batch = _dominated_by_image(model, fake_batch)
    out = model(batch)
    model.loss(out, batch).backward()
    weight = dict(model.encoders["image"].named_parameters())
    name = max(weight, key=lambda n: weight[n].numel())  # the largest conv kernel
    plain = weight[name].grad.clone()
    torch.manual_seed(1)
    k = float(model.modulate_gradients(out, batch)["image"])
    noise = weight[name].grad - k * plain
    assert plain.numel() > 500
    assert noise.std() == pytest.approx(float(plain.std()), rel=0.15)
    assert abs(float(noise.mean())) < 0.2 * float(plain.std())


def test_without_aux_heads_the_score_is_the_fusion_models_own_with_one_modality(reg, fake_batch):
    """Late fusion with a linear task head: the modality's own logit contribution (the paper's score)."""
    model = _model(reg, "late", balance={"modulation": "ogm", "alpha": 1.0})
    assert model.aux_heads is None
    with torch.no_grad():
        out = model(fake_batch)
    scores = balance.unimodal_scores(model, out, fake_batch)
    for m in model.modalities:
        with torch.no_grad():
            logits = model.task.head(model.fusion.branches[m](out.embeddings[m]))
        p_true = logits.softmax(-1).gather(1, fake_batch.target[:, None]).squeeze(1)
        assert float(scores[m]) == pytest.approx(float(p_true[out.present[m]].mean()), rel=1e-5)
    half = dataclasses.replace(out, embeddings={m: e.bfloat16() for m, e in out.embeddings.items()})  # CUDA autocast
    for m, s in balance.unimodal_scores(model, half, fake_batch).items():
        assert float(s) == pytest.approx(float(scores[m]), abs=0.02)
    ratio = float(scores["image"] / scores["text"])
    coefficients = balance.ogm_coefficients(scores, 1.0)
    dominant, other = ("image", "text") if ratio > 1 else ("text", "image")
    assert float(coefficients[dominant]) == pytest.approx(1 - math.tanh(max(ratio, 1 / ratio) - 1), rel=1e-5)
    assert float(coefficients[other]) == 1.0


# -- checkpoints and old configs ------------------------------------------------------------------------------
def test_configs_and_checkpoints_from_before_balance_load_unchanged(reg, tmp_path):
    plain = _model(reg)
    assert plain.aux_heads is None and not any(k.startswith("aux_heads") for k in plain.state_dict())
    path = save_checkpoint(plain, tmp_path / "old.safetensors", reg)
    with safe_open(str(path), "pt") as f:  # the header as an older version wrote it: no "balance" key
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    model_json = json.loads(meta["model"])
    model_json.pop("balance")
    save_file(tensors, str(path), metadata={**meta, "model": json.dumps(model_json)})
    loaded, _ = load_checkpoint(path, reg)
    assert not loaded.config.balance.active and loaded.aux_heads is None
    for k, v in plain.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v)

    with_heads = _model(reg, balance={"aux_weight": 0.5})
    path = save_checkpoint(with_heads, tmp_path / "aux.safetensors", reg)
    back, _ = load_checkpoint(path, reg)
    assert back.config.balance.aux_weight == 0.5
    torch.testing.assert_close(back.aux_heads["text"].weight, with_heads.aux_heads["text"].weight)


def test_the_contrastive_variant_of_a_balanced_model_builds(reg):
    """Pretraining swaps the task for contrastive, which has no target: the balance remedies go with
    the modality dropout (config.contrastive_variant: the one rule the demo, fed run and the
    benchmarks use)."""
    data = _config(balance={"aux_weight": 1.0, "modulation": "ogm-ge"}, modality_dropout=0.2).model_dump(mode="json")
    variant = contrastive_variant(data, proj_dim=16)
    assert data["balance"]["aux_weight"] == 1.0  # the original is untouched
    model = build_model(parse(ModelConfig, variant), reg)
    assert model.config.task.name == "contrastive" and not model.config.balance.active
    assert model.config.modality_dropout == 0.0 and model.aux_heads is None
