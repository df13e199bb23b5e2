import numpy as np

from mmdomain_federated.aggregation import DPNoise, SiteUpdate, aggregate, screen
from mmdomain_federated.groups import param_group
from mmdomain_federated.records import bf16_decode, bf16_encode

G = {"encoders.img.w": np.zeros(2, np.float32), "encoders.txt.w": np.zeros(2, np.float32),
     "fusion.w": np.zeros(2, np.float32), "task.head.w": np.zeros(2, np.float32),
     "encoders.img.bn.num_batches_tracked": np.array(0, np.int64)}


def upd(site, value, counts, n, keys=None):
    keys = keys or [k for k in G if any(k.startswith(f"encoders.{m}.") for m, c in counts.items() if c)] + \
        ["fusion.w", "task.head.w"]
    return SiteUpdate(site, {k: (np.full_like(G[k], value) if G[k].dtype.kind == "f" else np.array(5)) for k in keys},
                      counts, n)


def test_param_groups():
    assert param_group("encoders.img.conv.weight") == "encoder:img"
    assert param_group("fusion.proj.weight") == "fusion"
    assert param_group("task.head.bias") == "task"
    assert param_group("aux_heads.img.weight") == "encoder:img"  # a unimodal head goes with its encoder


def test_encoder_averaged_only_over_sites_holding_its_modality_weighted_by_modality_counts():
    a = upd("a", 1.0, {"img": 30, "txt": 10}, 40)
    b = upd("b", 4.0, {"img": 10, "txt": 0}, 10)  # holds only img: no txt encoder sent
    c = upd("c", 10.0, {"img": 0, "txt": 30}, 30)  # holds only txt
    new, used = aggregate(G, [a, b, c])
    assert np.allclose(new["encoders.img.w"], (30 * 1 + 10 * 4) / 40)  # c excluded, weights = img counts
    assert np.allclose(new["encoders.txt.w"], (10 * 1 + 30 * 10) / 40)  # b excluded, weights = txt counts
    assert np.allclose(new["fusion.w"], 1.0)  # only a holds >= 2 modalities
    assert np.allclose(new["task.head.w"], (40 * 1 + 10 * 4 + 30 * 10) / 80)
    assert set(used["encoder:img"]) == {"a", "b"} and set(used["encoder:txt"]) == {"a", "c"}
    assert int(new["encoders.img.bn.num_batches_tracked"]) == 5


def test_plain_fedavg_weights_by_examples():
    a, b = upd("a", 1.0, {"img": 30, "txt": 10}, 40), upd("b", 3.0, {"img": 5, "txt": 5}, 20)
    new, _ = aggregate(G, [a, b], plain=True)
    assert np.allclose(new["encoders.txt.w"], (40 * 1 + 20 * 3) / 60)


def test_screen_rejects_nan_and_outliers():
    ok = [upd(s, 1.0 + 0.1 * i, {"img": 10, "txt": 10}, 20) for i, s in enumerate("abc")]
    nan = upd("nan", 1.0, {"img": 10, "txt": 10}, 20)
    nan.weights["fusion.w"][0] = np.nan
    big = upd("big", 1e4, {"img": 10, "txt": 10}, 20)
    accepted, rejected = screen(ok + [nan, big], G, outlier_factor=10)
    assert [u.site for u in accepted] == ["a", "b", "c"]
    reasons = dict(rejected)
    assert "non-finite" in reasons["nan"] and "norm" in reasons["big"]


def test_central_dp_clips_and_noises():
    rng = np.random.default_rng(0)
    ups = [upd(s, 100.0, {"img": 10, "txt": 10}, 20) for s in "abc"]
    new, _ = aggregate(G, ups, dp=DPNoise(0.0, 1.0, rng))  # no noise: clipped mean, norm <= 1
    total = np.sqrt(sum(float(np.sum(v.astype(float) ** 2)) for k, v in new.items() if v.dtype.kind == "f"))
    assert total <= 1.0 + 1e-5
    noisy, _ = aggregate(G, ups, dp=DPNoise(5.0, 1.0, rng))
    assert not np.allclose(noisy["task.head.w"], new["task.head.w"])


def test_bf16_roundtrip():
    x = np.random.default_rng(0).normal(size=1000).astype(np.float32)
    enc = bf16_encode(x)
    assert enc.dtype == np.uint16 and enc.nbytes == x.nbytes // 2
    assert np.allclose(bf16_decode(enc), x, rtol=1e-2, atol=1e-3)


def test_the_average_does_not_depend_on_the_order_the_replies_came_in():
    """Flower samples (and so sends to and hears from) nodes in a random order; summed in another
    order, floats differ in the last bits, which rounds of training amplify. Values chosen so
    that the order matters even in float64."""
    import itertools

    from mmdomain_federated.aggregation import SiteUpdate, aggregate

    g = {"task.w": np.zeros(2, np.float32)}
    values = [np.array([1e16, 3.0], np.float32), np.array([1.0, 5.0], np.float32), np.array([-1e16, 7.0], np.float32)]
    updates = [SiteUpdate(i, {"task.w": v}, {}, 10) for i, v in enumerate(values)]
    results = [aggregate(g, list(order), plain=True)[0]["task.w"] for order in itertools.permutations(updates)]
    assert all(np.array_equal(r, results[0]) for r in results)
    assert np.isclose(results[0][1], 5.0)
