import pytest
import torch
from opacus.accountants import RDPAccountant
from opacus.grad_sample import GradSampleModule
from opacus.optimizers import DPOptimizer
from torch.utils.data import Subset

from mmdomain.checkpoint import load_checkpoint, save_checkpoint
from mmdomain.data.collate import Collate
from mmdomain.data.sample import Batch
from mmdomain.training import make_loader
from mmdomain_federated import local_dp, task
from mmdomain_federated.inprocess import LocalGrid
from mmdomain_federated.server_app import run_server
from mmdomain_federated.settings import Settings

SITE0 = {"partition-id": 0, "num-partitions": 2}


def _site(settings_for, registry, **kw):
    s = settings_for(local_dp=True, **kw)
    return s, task.build(s, registry), task.load_site(s, SITE0, registry, "train")


def _one(batch: Batch, i: int) -> Batch:
    inputs = {m: (v[i:i + 1] if isinstance(v, torch.Tensor) else [v[i]]) for m, v in batch.inputs.items()}
    return Batch(inputs, {m: p[i:i + 1] for m, p in batch.present.items()}, batch.target[i:i + 1], batch.meta[i:i + 1])


def test_local_dp_sgd_reports_epsilon_per_site(settings_for, tmp_path):
    s = settings_for(num_server_rounds=1, local_dp=True, local_noise_multiplier=1.0, local_clip_norm=1.0,
                     max_steps=2, batch_size=8)
    summary = run_server(LocalGrid(2, s.as_run_config()), s, tmp_path)
    assert summary["rounds"] == 1
    eps = summary["history"][0]["local-epsilon"]
    assert len(eps) == 2 and all(0 < e < 100 for e in eps.values())


@pytest.mark.parametrize("fusion", ["concat", "late", "gated"])
def test_opacus_per_sample_gradients_equal_one_sample_at_a_time(settings_for, registry, fusion):
    """Every parameter of the toy model (missing-modality tokens, bag-of-words included) gets its
    per-sample gradient from an Opacus rule, equal to the gradient of that sample alone."""
    s, model, data = _site(settings_for, registry, fusion=fusion)
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    model.train()
    patterns = {}
    for i in range(len(data)):  # a batch with both modalities, image only and note only
        patterns.setdefault(frozenset(data[i].inputs), i)
    assert len(patterns) == 3
    batch = Collate(model.modalities)([data[i] for i in [*patterns.values(), 0, 1]])
    params = [p for p in model.parameters()]
    alone = [torch.autograd.grad(model.sample_losses(model(one), one).sum(), params)
             for one in (_one(batch, i) for i in range(len(batch)))]
    assert local_dp.unsupported_layers(model) == []
    hooked = GradSampleModule(model)
    model.sample_losses(hooked(batch), batch).mean().backward()
    for j, p in enumerate(params):
        torch.testing.assert_close(p.grad_sample, torch.stack([g[j] for g in alone]), rtol=1e-4, atol=1e-6)
    hooked.cleanup()


def test_training_goes_through_dp_optimizer_and_clips_each_sample(settings_for, registry, monkeypatch):
    s, model, data = _site(settings_for, registry, local_clip_norm=0.01, local_noise_multiplier=0.0, max_steps=3)
    seen = []
    clip_and_accumulate = DPOptimizer.clip_and_accumulate

    def spy(self):
        assert all(isinstance(p.grad_sample, torch.Tensor) for p in self.params)
        size = len(self.params[0].grad_sample)
        norms = torch.stack([g.reshape(size, -1).norm(dim=1) for g in self.grad_samples], 1).norm(dim=1)
        clip_and_accumulate(self)
        summed = torch.cat([p.summed_grad.flatten() for p in self.params]).norm()
        seen.append((size, float(norms.min()) if size else 0.0, float(summed)))

    monkeypatch.setattr(DPOptimizer, "clip_and_accumulate", spy)
    before = task.get_weights(model)
    stats = task.train_site(model, data, s)
    after = task.get_weights(model)
    assert len(seen) == 3 and stats["train-samples"] == sum(n for n, _, _ in seen)
    for size, smallest, summed in seen:
        assert smallest > 0.01  # every sample's gradient was larger than the clip...
        assert summed <= size * 0.01 * (1 + 1e-4)  # ...and the clipped sum is bounded by size x clip
    assert after.keys() == before.keys()  # the model's own names: no Opacus wrapper prefix
    assert any(not (after[k] == before[k]).all() for k in after)
    assert not hasattr(next(model.parameters()), "grad_sample")  # hooks and per-sample state removed


def test_epsilon_is_opacus_rdp_for_the_steps_taken(settings_for, registry):
    def epsilon(**kw):
        s, model, data = _site(settings_for, registry, batch_size=16, **kw)
        return task.train_site(model, data, s)["local-epsilon"], len(data)

    one, n = epsilon(max_steps=1)
    three, _ = epsilon(max_steps=3)
    quieter, _ = epsilon(max_steps=3, local_noise_multiplier=2.0)
    assert one < three and quieter < three
    expected = RDPAccountant()
    for _ in range(3):
        expected.step(noise_multiplier=1.0, sample_rate=16 / n)
    assert three == pytest.approx(expected.get_epsilon(delta=1e-5))


def test_local_dp_training_lowers_the_loss(settings_for, registry):
    s, model, data = _site(settings_for, registry, local_epochs=5, max_steps=0, lr=0.01,
                           local_noise_multiplier=0.5, local_clip_norm=1.0)
    start = task.evaluate_site(model, data, s)["loss"]
    task.train_site(model, data, s)
    assert task.evaluate_site(model, data, s)["loss"] < 0.9 * start  # 0.70-0.84 over 8 tries


def test_empty_poisson_batches_take_a_noise_only_step(settings_for, registry, monkeypatch):
    s, model, data = _site(settings_for, registry, max_steps=0, lr=0.1)
    loader = make_loader(data, model.modalities, 16, shuffle=True)
    assert next(iter(local_dp.poisson_loader(loader, 1e-9, torch.Generator()))) is None
    real = next(iter(loader))
    monkeypatch.setattr(local_dp, "poisson_loader", lambda *a: [None, real, None])
    before = task.get_weights(model)
    stats = task.train_site(model, data, s)
    after = task.get_weights(model)
    moved = [k for k in after if not (after[k] == before[k]).all()]
    assert stats["train-samples"] == len(real) and stats["local-epsilon"] > 0
    assert set(moved) == set(after)  # noise reaches every parameter, even when no sample did


def test_fedprox_gradient_is_added_after_clipping_and_noise(settings_for, registry):
    s, model, data = _site(settings_for, registry, local_clip_norm=1e-12, local_noise_multiplier=0.0, max_steps=1)
    loader = make_loader(Subset(data, range(32)), model.modalities, 16, shuffle=True)
    start = [p.detach().clone() for p in model.parameters()]
    mu, lr = 0.5, 0.1

    def prox(m):  # pulls every weight towards start + 1
        return (mu / 2) * sum(((p - a - 1) ** 2).sum() for p, a in zip(m.parameters(), start))

    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    local_dp.private_training(model, loader, optimizer, s, device=torch.device("cpu"), extra_loss=prox)
    for p, a in zip(model.parameters(), start):  # one step of exactly lr * mu towards the anchor
        torch.testing.assert_close(p.detach() - a, torch.full_like(a, lr * mu), rtol=0, atol=1e-6)


@pytest.mark.parametrize("fusion", ["cross_attention"])
def test_layers_without_opacus_rules_are_vectorised_by_vmap(settings_for, registry, fusion):
    """nn.MultiheadAttention has no hook rule: torch.func's vmap gives each sample's gradient,
    equal to that sample's alone, and a private run trains on it (clipping, noise and accounting
    stay Opacus')."""
    s, model, data = _site(settings_for, registry, fusion=fusion, max_steps=2)
    assert local_dp.unsupported_layers(model)
    model.eval()  # no dropout (attention's included): both paths see the same network
    batch = Collate(model.modalities)([data[i] for i in range(6)])
    params = [p for p in model.parameters() if p.requires_grad]
    losses = local_dp.vectorised(model, batch, params)
    by_vmap = [p.grad_sample.clone() for p in params]
    alone = local_dp.one_sample_at_a_time(model, batch, params)
    torch.testing.assert_close(losses, alone, rtol=1e-5, atol=1e-6)
    for a, p in zip(by_vmap, params):
        torch.testing.assert_close(a, p.grad_sample, rtol=1e-4, atol=1e-5)
        del p.grad_sample
    before = {k: v.clone() for k, v in model.state_dict().items()}
    stats = task.train_site(model, data, s)
    assert stats["per-sample-path"] == "vmap" and stats["local-epsilon"] > 0 and stats["train-samples"] > 0
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(hasattr(p, "grad_sample") for p in model.parameters())


def test_a_forward_vmap_cannot_trace_falls_back_to_one_sample_at_a_time(settings_for, registry, monkeypatch):
    """A fusion head that branches on a tensor's value defeats vmap: the run says so and goes on
    one sample at a time, with the same gradients."""
    s, model, data = _site(settings_for, registry, fusion="cross_attention", max_steps=1, batch_size=4)
    fusion = model.fusion
    real_forward = fusion.forward

    def branching(*args, **kwargs):
        out = real_forward(*args, **kwargs)
        return out * 2 if bool(out.sum() > 1e9) else out  # data-dependent control flow

    monkeypatch.setattr(fusion, "forward", branching)
    batch = Collate(model.modalities)([data[i] for i in range(4)])
    params = [p for p in model.parameters() if p.requires_grad]
    with pytest.raises(local_dp.NotVectorisable):
        local_dp.vectorised(model, batch, params)
    assert not any(hasattr(p, "grad_sample") for p in params)
    path = local_dp.PerSampleGradients(model)
    dp = DPOptimizer(torch.optim.SGD(params, lr=0.1), noise_multiplier=1.0, max_grad_norm=1.0, expected_batch_size=4)
    losses = path(batch, dp, dp.params)
    assert path.path == "one-at-a-time" and path.fallbacks and path.fallbacks[0].startswith("vmap: ")
    assert losses.shape == (4,) and all(p.grad_sample.shape[0] == 4 for p in params)


def test_one_sample_at_a_time_equals_the_hooks(settings_for, registry):
    s, model, data = _site(settings_for, registry, fusion="concat")
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    batch = Collate(model.modalities)([data[i] for i in range(6)])
    params = list(model.parameters())
    local_dp.one_sample_at_a_time(model, batch, params)
    alone = [p.grad_sample.clone() for p in params]
    hooked = GradSampleModule(model)
    model.sample_losses(hooked(batch), batch).mean().backward()
    for a, p in zip(alone, params):
        torch.testing.assert_close(p.grad_sample, a, rtol=1e-4, atol=1e-6)
    hooked.cleanup()


def test_medical_resnet_defeats_the_hooks_and_still_trains_privately(registry, tmp_path):
    """MONAI's ResNet adds its residual in place onto a hooked layer's output (Opacus' hooks
    fail there); BatchNorm becomes GroupNorm for DP-SGD, and its checkpoint rebuilds the same
    layers. The site trains with vmap's per-sample gradients through the ResNet and the BERT text
    encoder, equal to each sample's alone."""
    s = Settings.from_run_config({"dataset": "medical", "local-dp": True, "max-steps": 1, "batch-size": 4,
                                       "readiness": False})
    model = task.build(s, registry)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert any(isinstance(m, torch.nn.GroupNorm) for m in model.encoders["dicom_image"].modules())
    again, _ = load_checkpoint(save_checkpoint(model, tmp_path / "model.safetensors", registry), registry)
    assert again.state_dict().keys() == model.state_dict().keys()  # was: lacked bn running statistics
    site = task.site_folders(task.synthetic_root(registry, "medical", 2, 0, True))[0]
    data = task.load_site(s, {"data-root": str(site)}, registry, "train")
    model.eval()  # no dropout: the two paths see the same network
    batch = model.tokenize(Collate(model.modalities)([data[i] for i in range(3)]))
    params = [p for p in model.parameters() if p.requires_grad]
    local_dp.vectorised(model, batch, params)
    by_vmap = [p.grad_sample.clone() for p in params]
    local_dp.one_sample_at_a_time(model, batch, params)
    for a, p in zip(by_vmap, params):
        torch.testing.assert_close(a, p.grad_sample, rtol=1e-4, atol=1e-5)
        del p.grad_sample
    stats = task.train_site(model, data, s)
    assert stats["local-epsilon"] > 0 and stats["train-samples"] > 0
    assert stats["per-sample-path"] == "vmap"


@pytest.mark.gpu
def test_gpu_path_skips_cleanly_without_cuda(settings_for, registry):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU here")
    s = settings_for(device="cuda")
    m = task.build(s, registry)
    data = task.load_site(s, SITE0, registry, "train")
    assert task.train_site(m, data, s)["train-samples"] > 0
    assert next(m.parameters()).is_cuda
