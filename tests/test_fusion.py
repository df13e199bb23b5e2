"""Every fusion head: trains on mixed availability; output independent of absent fill values."""

import functools
import itertools

import pytest
import torch

from mmdomain.fusion import ConcatFusion, CrossAttentionFusion, GatedFusion, HeMISFusion, LateFusion, modality_dropout

HEADS = {"concat": ConcatFusion, "late": LateFusion, "gated": GatedFusion, "cross_attention": CrossAttentionFusion,
         "cross_attention+patterns": functools.partial(CrossAttentionFusion, pattern_tokens=True),
         "hemis": HeMISFusion}
DIMS = {"a": 8, "b": 12, "c": 6}


def _inputs(batch=8, spatial=()):
    g = torch.Generator().manual_seed(1)
    emb = {m: torch.randn(batch, d, *spatial, generator=g) for m, d in DIMS.items()}
    # every subset of modalities appears, including single-modality samples
    patterns = [p for r in (1, 2, 3) for p in itertools.combinations(sorted(DIMS), r)][:batch]
    present = {m: torch.tensor([m in p for p in patterns]) for m in DIMS}
    return emb, present


@pytest.mark.parametrize("name", HEADS)
@pytest.mark.parametrize("spatial", [(), (3, 4)])
def test_output_ignores_fill_values_of_absent_modalities(name, spatial):
    torch.manual_seed(0)
    head = HEADS[name](DIMS).eval()
    emb, present = _inputs(7, spatial)
    out = head(emb, present)
    assert out.shape == (7, head.out_dim, *spatial)
    assert torch.isfinite(out).all()
    altered = {m: torch.where(present[m].view(-1, *[1] * (e.dim() - 1)), e, torch.full_like(e, 1e4))
               for m, e in emb.items()}
    torch.testing.assert_close(head(altered, present), out, rtol=0, atol=1e-5)
    nan_filled = {m: torch.where(present[m].view(-1, *[1] * (e.dim() - 1)), e, torch.full_like(e, float("nan")))
                  for m, e in emb.items()}
    assert torch.isfinite(head(nan_filled, present)).all()
    # but a present modality's values do matter
    changed = dict(emb)
    changed["a"] = emb["a"] + 1.0
    assert not torch.allclose(head(changed, present)[present["a"]], out[present["a"]])


@pytest.mark.parametrize("name", HEADS)
def test_head_trains_when_samples_lack_different_modalities(name):
    torch.manual_seed(0)
    head = HEADS[name](DIMS)
    lin = torch.nn.Linear(head.out_dim, 2)
    emb, present = _inputs(7)
    target = torch.tensor([0, 1, 0, 1, 0, 1, 1])
    opt = torch.optim.Adam([*head.parameters(), *lin.parameters()], lr=1e-2)
    losses = []
    for _ in range(60):
        loss = torch.nn.functional.cross_entropy(lin(head(emb, present)), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_late_fusion_is_mean_of_present_projections():
    head = LateFusion({"a": 4, "b": 4}, out_dim=3, dropout=0.0).eval()
    emb = {"a": torch.randn(2, 4), "b": torch.randn(2, 4)}
    present = {"a": torch.tensor([True, True]), "b": torch.tensor([True, False])}
    out = head(emb, present)
    pa, pb = head.branches["a"](emb["a"]), head.branches["b"](emb["b"])
    torch.testing.assert_close(out[0], (pa[0] + pb[0]) / 2)
    torch.testing.assert_close(out[1], pa[1])


def test_gates_and_attention_are_zero_for_absent_modalities():
    emb, present = _inputs(7)
    gated = GatedFusion(DIMS).eval()
    gated(emb, present)
    gates = gated.last_gates
    mask = torch.stack([present[m] for m in sorted(DIMS)], 1)
    assert torch.all(gates[~mask] == 0)
    torch.testing.assert_close(gates.sum(-1), torch.ones(7))
    xattn = CrossAttentionFusion(DIMS).eval()
    xattn.record_attention = True
    xattn(emb, present)
    assert torch.all(xattn.last_attention[~mask] == 0)


def test_modality_dropout_never_empties_a_sample():
    g = torch.Generator().manual_seed(0)
    present = {"a": torch.ones(500, dtype=torch.bool), "b": torch.rand(500, generator=g) > 0.5}
    dropped = modality_dropout(present, 0.9, generator=g)
    assert torch.all(dropped["a"] | dropped["b"])
    assert not torch.any(dropped["b"] & ~present["b"])  # never invents a modality
    assert dropped["a"].float().mean() < 0.9  # and really drops some


def test_missing_token_is_a_layer_and_old_checkpoints_still_load():
    torch.manual_seed(0)
    head = ConcatFusion(DIMS, out_dim=16).eval()
    assert all(isinstance(head.missing[m], torch.nn.Module) for m in DIMS)  # Opacus needs a layer per parameter
    state = head.state_dict()
    assert "missing.a.weight" in state
    old = {(k.removesuffix(".weight") if k.startswith("missing.") else k): v + 1 for k, v in state.items()}
    assert "missing.a" in old  # the name the token had as a bare parameter
    fresh = ConcatFusion(DIMS, out_dim=16)
    fresh.load_state_dict(old)  # strict: every key must fit
    torch.testing.assert_close(fresh.missing["a"].weight, state["missing.a.weight"] + 1)
    model = torch.nn.ModuleDict({"fusion": ConcatFusion(DIMS, out_dim=16)})  # nested, as in a full model
    model.load_state_dict({f"fusion.{k}": v for k, v in old.items()})
    torch.testing.assert_close(model["fusion"].missing["b"].weight, state["missing.b.weight"] + 1)
