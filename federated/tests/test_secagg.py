"""SecAgg+ rounds: the modality-aware average computed from sums only, through Flower's real
SecAgg+ protocol (SecAggPlusWorkflow + secaggplus_mod) on real Messages, in-process."""

import numpy as np
import pytest

from mmdomain_federated.groups import param_group, trained_groups
from mmdomain_federated.aggregation import DPNoise, SiteUpdate, aggregate
from mmdomain_federated.inprocess import LocalGrid
from mmdomain_federated.secure import SECAGG_CONFIGS, Layout, decode, encode, group_weights
from mmdomain_federated.server_app import run_server

G = {"encoders.img.w": np.zeros(3, np.float32), "encoders.txt.w": np.full(3, 0.5, np.float32),
     "fusion.w": np.zeros(2, np.float32), "task.head.w": np.ones(2, np.float32),
     "encoders.img.bn.num_batches_tracked": np.array(0, np.int64)}


def _site(seed, counts, n):
    rng = np.random.default_rng(seed)
    groups = trained_groups(counts, n)
    local = {k: (v + rng.normal(0, 0.1, v.shape)).astype(v.dtype) if v.dtype.kind == "f" else v
             for k, v in G.items()}
    sent = {k: v for k, v in local.items() if param_group(k) in groups}
    return local, SiteUpdate(seed, sent, counts, n)


SITES = [({"img": 30, "txt": 10}, 40), ({"img": 10, "txt": 0}, 10), ({"img": 0, "txt": 30}, 30)]


@pytest.mark.parametrize("plain", [False, True])
def test_sum_of_encoded_vectors_gives_the_clear_text_average(plain):
    layout = Layout.of(G)
    vectors, updates = [], []
    for i, (counts, n) in enumerate(SITES):
        local, update = _site(i, counts, n)
        updates.append(update)
        w = group_weights(counts, n, fusion_from="multi", plain=plain, dp=False, scale=1000.0)
        vectors.append(encode(layout, G, local, w))
    mean = [sum(v[j] for v in vectors) / len(vectors) for j in range(len(vectors[0]))]
    new, totals = decode(layout, G, mean, len(vectors))
    expected, _ = aggregate(G, updates, plain=plain)
    for k in layout.summed:
        np.testing.assert_allclose(new[k], expected[k], rtol=1e-5, atol=1e-6, err_msg=k)
    assert totals["encoder:txt"] == pytest.approx((10 + 30) / 1000 if not plain else (40 + 30) / 1000)
    assert int(new["encoders.img.bn.num_batches_tracked"]) == 0  # integer buffers are not summed


def test_secure_dp_clips_at_the_site_and_noises_the_sum():
    layout = Layout.of(G)
    far = {k: (v + 50).astype(v.dtype) if v.dtype.kind == "f" else v for k, v in G.items()}
    w = group_weights({"img": 5, "txt": 5}, 10, fusion_from="multi", plain=False, dp=True, scale=1000.0)
    assert set(w.values()) == {1.0}  # equal weights under DP
    vec = encode(layout, G, far, w, clip=1.0)
    assert np.sqrt(sum(float(np.sum(v.astype(float) ** 2)) for v in vec[:-1])) == pytest.approx(1.0, rel=1e-5)
    quiet, _ = decode(layout, G, vec, 1, (0.0, 1.0, np.random.default_rng(0)))
    noisy, _ = decode(layout, G, vec, 1, (5.0, 1.0, np.random.default_rng(0)))
    assert not np.allclose(quiet["fusion.w"], noisy["fusion.w"])
    # same mechanism as the clear path: with noise 0 both give the clipped update
    clear, _ = aggregate(G, [SiteUpdate("a", far, {"img": 5, "txt": 5}, 10)],
                         dp=DPNoise(0.0, 1.0, np.random.default_rng(0)))
    np.testing.assert_allclose(quiet["fusion.w"], clear["fusion.w"], rtol=1e-5)


def test_a_site_never_sends_a_non_finite_update():
    layout = Layout.of(G)
    bad = {k: v.copy() for k, v in G.items()}
    bad["fusion.w"][0] = np.nan
    with pytest.raises(FloatingPointError, match="not sending"):
        encode(layout, G, bad, {"fusion": 1.0})


class DropAtMasking(LocalGrid):
    """Site ``victim`` answers the key-sharing stages, then vanishes before sending its masked
    vector: the server must reconstruct its secrets from the others' shares."""

    victim = 103

    def push_messages(self, messages):
        messages = list(messages)
        for m in messages:
            cfg = m.content.config_records.get(SECAGG_CONFIGS)
            if cfg is not None and cfg.get("stage") == "collect_masked_vectors":
                self.down.add(self.victim)
        return super().push_messages(messages)


def _final(out):
    return dict(np.load(out / "final.npz"))


def test_secagg_round_matches_the_clear_round_and_no_update_leaves_in_clear(settings_for, tmp_path):
    kw = dict(num_server_rounds=1, site_modalities="1=toy_image", fused_eval=False)
    clear = settings_for(**kw)
    secure = settings_for(secagg=True, **kw)
    run_server(LocalGrid(3, clear.as_run_config()), clear, tmp_path / "clear")
    grid = LocalGrid(3, secure.as_run_config())
    replies = []
    orig = grid.pull_messages
    grid.pull_messages = lambda ids: replies.extend(r := orig(ids)) or r
    summary = run_server(grid, secure, tmp_path / "secure")
    assert summary["rounds"] == 1 and summary["history"][0]["secagg"] and summary["history"][0]["sites"] == 3
    a, b = _final(tmp_path / "clear"), _final(tmp_path / "secure")
    moved = max(float(np.max(np.abs(a[k] - b[k]))) for k in a if a[k].dtype.kind == "f")
    assert moved < 1e-4  # quantisation error only: same sites, same seeds, same average
    train = [r for r in replies if SECAGG_CONFIGS in r.content.config_records and
             "masked_params" in r.content.config_records[SECAGG_CONFIGS]]
    assert len(train) == 3
    for r in train:  # the update itself travels only masked; per-modality counts are inside the sum
        assert all(len(rec) == 0 for rec in r.content.array_records.values())
        metrics = r.content.config_records.get("fitres.metrics") or {}
        assert not any(str(k).startswith("count/") for k in metrics)


def test_secagg_survives_a_site_dropping_after_key_sharing(settings_for, tmp_path):
    s = settings_for(secagg=True, num_server_rounds=2, fused_eval=False)
    grid = DropAtMasking(3, s.as_run_config())
    summary = run_server(grid, s, tmp_path / "run")
    assert summary["rounds"] == 2
    assert [h["sites"] for h in summary["history"]] == [2, 2]
    assert summary["final"]["overall"]["n"] > 0
    events = (tmp_path / "run" / "events.log").read_text()
    assert "site 103 did not answer" in events


def test_policy_requiring_secagg_accepts_a_secagg_job(settings_for, tmp_path):
    policy = tmp_path / "policy.toml"
    policy.write_text("secagg-required = true\n")
    nodes = [{"policy-file": str(policy)}] * 3
    refused = settings_for(num_server_rounds=1)
    summary = run_server(LocalGrid(3, refused.as_run_config(), node_configs=nodes), refused, tmp_path / "a")
    assert summary["rounds"] == 0 and "requires secure aggregation" in summary["stopped"]
    ok = settings_for(secagg=True, num_server_rounds=1, central_dp=True)
    summary = run_server(LocalGrid(3, ok.as_run_config(), node_configs=nodes), ok, tmp_path / "b")
    assert summary["rounds"] == 1 and summary["epsilon"] > 0
