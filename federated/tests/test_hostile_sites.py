"""A server that survives its sites (#17 item 4): hostile or broken replies, driven through the
real ServerApp loop (``run_server`` + ``LocalGrid``, ``tamper[node](reply)``) and through the real
strategy on real replies of the real ClientApp. A bad reply is rejected for its site, logged by
node id, never raised; counts are capped; no single site sets the model or the score."""

import copy
import json

import numpy as np
import pytest
from flwr.app import ConfigRecord, MetricRecord, RecordDict

from mmdomain.errors import ConfigError
from mmdomain_federated.aggregation import (READINESS_MARGIN, BadReply, Caps, cap_shares, check_update,
                                            declared_caps)
from mmdomain_federated.inprocess import LocalGrid
from mmdomain_federated.records import arrays_to_numpy, numpy_to_arrays
from mmdomain_federated.rounds import readiness_report, secure_update
from mmdomain_federated.server_app import run_server
from mmdomain_federated.settings import Settings
from mmdomain_federated.strategy import make_strategy, origin

QUICK = {"max-steps": 1, "num-server-rounds": 1, "batch-size": 16, "local-batch-size": 0, "readiness": False}


# -- real replies of the real ClientApp, tampered one at a time -------------------------------------
@pytest.fixture(scope="module")
def honest(registry):
    """One real train round's messages and replies of three sites (toy, one step each)."""
    from mmdomain_federated import task

    s = Settings.from_run_config(QUICK)
    model = task.build(s, registry)
    weights = task.get_weights(model)
    grid = LocalGrid(3, s.as_run_config())
    strategy = make_strategy(s)
    msgs = list(strategy.configure_train(1, numpy_to_arrays(weights), ConfigRecord({"fused-eval": True}), grid))
    replies = sorted(grid.send_and_receive(msgs), key=lambda r: r.metadata.src_node_id)  # Flower samples in any order
    assert len(replies) == 3 and not any(r.has_error() for r in replies)
    return s, weights, msgs, replies, tuple(model.modalities)


def _aggregate(honest, replies, *, caps=None, **settings):
    s, weights, msgs, _, modalities = honest
    strategy = make_strategy(Settings.from_run_config({**QUICK, **settings}))
    strategy.caps = caps or Caps(strategy.settings.max_site_samples, modalities=modalities)
    return strategy.aggregate_modalities(1, replies, weights, origin(msgs))


def _arrays(reply, change):
    w = arrays_to_numpy(reply.content.array_records["arrays"])
    change(w)
    reply.content["arrays"] = numpy_to_arrays(w)


def _metric(key, value):
    def tamper(reply):
        reply.content.metric_records["metrics"][key] = value
    return tamper


def _first(fn):
    return lambda w: fn(w, sorted(w)[0])


def _without(name):
    def tamper(reply):
        reply.content = RecordDict({k: v for k, v in reply.content.items() if k != name})
    return tamper


def _replace(reply, name, record):
    reply.content = RecordDict({**{k: v for k, v in reply.content.items() if k != name}, name: record})


TAMPERS = {  # what a hostile or broken site sends -> what the rejection must say
    "wrong shape": (lambda r: _arrays(r, _first(lambda w, k: w.__setitem__(k, np.zeros((3, 5, 7), np.float32)))),
                    "has shape (3, 5, 7)"),
    "int64 x1e6": (lambda r: _arrays(r, _first(lambda w, k: w.__setitem__(k, (w[k] * 1e6).astype(np.int64)))),
                   "dtype int64"),
    "complex x1e6": (lambda r: _arrays(r, _first(lambda w, k: w.__setitem__(k, w[k].astype(np.complex64) * 1e6))),
                     "dtype complex64"),
    "extra array": (lambda r: _arrays(r, lambda w: w.__setitem__("evil.weight", np.ones(3, np.float32))),
                    "not parameters the server sent"),
    "part of a group": (lambda r: _arrays(r, lambda w: w.pop("task.head.1.bias")), "group task sent in part"),
    "no arrays": (_without("arrays"), "no arrays record"),
    "arrays not an ArrayRecord": (lambda r: _replace(r, "arrays", MetricRecord({"x": 1.0})), "no arrays record"),
    "no metrics": (_without("metrics"), "no metrics record"),
    "num-examples NaN": (_metric("num-examples", float("nan")), "num-examples is nan"),
    "num-examples inf": (_metric("num-examples", float("inf")), "num-examples is inf"),
    "num-examples negative": (_metric("num-examples", -5), "num-examples is -5"),
    "num-examples fractional": (_metric("num-examples", 2.5), "num-examples is 2.5"),
    "num-examples above the ceiling": (_metric("num-examples", 10**9), "above max-site-samples"),
    "modality count NaN": (_metric("count/toy_image", float("nan")), "count/toy_image is nan"),
    "count above num-examples": (_metric("count/toy_image", 10**5), "above num-examples"),
    "count of an unknown modality": (_metric("count/x-ray", 3), "modality the model does not have"),
    "list metric": (_metric("train-loss", [1.0, 2.0]), "not single numbers"),
    "fused-eval n NaN": (_metric("eval-n", float("nan")), "eval-n is nan"),
    "unknown compress": (lambda r: r.content.config_records["site"].__setitem__("compress", "zip"), "compress"),
}


@pytest.mark.parametrize("case", sorted(TAMPERS))
def test_a_bad_train_reply_is_rejected_for_its_site_never_raised(honest, case):
    tamper, reason = TAMPERS[case]
    replies = [copy.deepcopy(r) for r in honest[3]]
    tamper(replies[0])
    agg = _aggregate(honest, replies)
    rejected = dict(agg.rejected)
    assert reason in rejected.get(101, ""), agg.rejected
    assert [u.site for u in agg.accepted] == [102, 103]
    assert all(np.all(np.isfinite(v)) for v in agg.weights.values())
    assert set(agg.weights) == set(honest[1]) and all(agg.weights[k].shape == v.shape for k, v in honest[1].items())


def _flip(factor):
    """The site's delta from the global model, reversed and scaled (a sign-flip attack)."""
    def tamper(reply, global_w):
        _arrays(reply, lambda w: w.update({k: (global_w[k] - factor * (v - global_w[k])).astype(v.dtype)
                                           for k, v in w.items()}))
    return tamper


def _steps(new, global_w, honest_w):
    """The aggregate's step and the honest sites' mean step, over the float arrays, flattened."""
    keys = sorted(k for k in honest_w[0] if np.issubdtype(global_w[k].dtype, np.floating))
    step = np.concatenate([(new[k] - global_w[k]).ravel() for k in keys])
    good = np.concatenate([(np.mean([h[k] for h in honest_w], axis=0) - global_w[k]).ravel() for k in keys])
    return step, good


def test_a_forged_count_is_capped_and_one_site_has_at_most_max_site_weight(honest):
    """A sign-flipped update with a forged sample count of 10**5 (under max-site-samples): with
    >= 3 sites its share of every group's average is 0.5 at most (max-site-weight)."""
    global_w = honest[1]
    replies = [copy.deepcopy(r) for r in honest[3]]
    _flip(1.0)(replies[0], global_w)
    for k in ("num-examples", "count/toy_image", "count/toy_note"):
        replies[0].content.metric_records["metrics"][k] = 10**5
    agg = _aggregate(honest, replies)
    assert [u.site for u in agg.accepted] == [101, 102, 103]  # not an outlier by norm
    w = [arrays_to_numpy(r.content.array_records["arrays"]) for r in replies]
    n = [u.num_examples for u in agg.accepted]
    key = "task.head.1.weight"
    rest = (n[1] * w[1][key] + n[2] * w[2][key]) / (n[1] + n[2])
    assert np.allclose(agg.weights[key], 0.5 * w[0][key] + 0.5 * rest, atol=1e-6)  # old code: ~w[0] (share 0.9995)
    uncapped = _aggregate(honest, replies, **{"max-site-weight": 1.0})
    assert np.allclose(uncapped.weights[key], (n[0] * w[0][key] + n[1] * w[1][key] + n[2] * w[2][key]) / sum(n),
                       atol=1e-6)
    # with its readiness report the forged count itself is lowered to what the site declared
    report = {str(s): {"splits": {"train": {"n": 40, "modalities": {"toy_image": 30, "toy_note": "<5"}}}}
              for s in (101, 102, 103)}
    caps = declared_caps(report, 1_000_000, honest[4])
    agg = _aggregate(honest, replies, caps=caps)
    assert agg.accepted[0].num_examples == 40 + READINESS_MARGIN
    assert agg.accepted[0].modality_counts == {"toy_image": 30 + READINESS_MARGIN, "toy_note": 4 + READINESS_MARGIN}
    assert any(site == 101 and "num-examples 100000 capped to 70 (its readiness report)" in what
               for site, what in agg.capped)


def test_robust_aggregation_keeps_a_sign_flipped_update_from_reversing_the_step(honest):
    """A x5 sign-flipped update passes the norm screen (5 < outlier-factor 10); the weighted mean
    lands far from the honest sites' step, the coordinate-wise median / trimmed mean stay near it."""
    global_w = honest[1]
    replies = [copy.deepcopy(r) for r in honest[3]]
    honest_w = [arrays_to_numpy(r.content.array_records["arrays"]) for r in replies[1:]]
    _flip(5.0)(replies[0], global_w)
    mean = _aggregate(honest, replies)
    assert len(mean.accepted) == 3  # not an outlier by norm
    step, good = _steps(mean.weights, global_w, honest_w)
    off = np.linalg.norm(step - good)
    assert off > np.linalg.norm(good)  # the weighted mean lands further from the honest step than no step at all
    for how in ("median", "trimmed-mean"):
        robust = _aggregate(honest, replies, aggregation=how)
        step, good = _steps(robust.weights, global_w, honest_w)
        assert np.linalg.norm(step - good) < 0.5 * off and step @ good > 0, how
        for k in honest_w[0]:  # the median of three lies between the two honest values
            lo, hi = np.minimum(honest_w[0][k], honest_w[1][k]), np.maximum(honest_w[0][k], honest_w[1][k])
            assert np.all(robust.weights[k] >= lo - 1e-6) and np.all(robust.weights[k] <= hi + 1e-6), (how, k)


def test_cap_shares_and_readiness_caps():
    assert np.allclose(cap_shares([1e5, 40, 40], 0.5), [0.5, 0.25, 0.25])
    assert np.allclose(cap_shares([1e5, 1e5, 40, 40], 0.3), [0.3, 0.3, 0.2, 0.2])
    assert np.allclose(cap_shares([1e5, 40], 0.5), [1e5 / (1e5 + 40), 40 / (1e5 + 40)])  # two sites: no cap
    assert np.allclose(cap_shares([5, 5, 5], 0.1), [1 / 3] * 3)  # a cap below 1/k is 1/k
    report = {"1": {"splits": {"train": {"n": 12, "modalities": {"a": "<5"}}, "val": {"error": "no val split"}}},
              "2": {"error": "site failed"}, "3": {"splits": {"train": {"n": "lots", "modalities": {}}}},
              "4": {"splits": []}}
    caps = declared_caps(report, 500)
    assert caps.limit(1, "train") == (12 + READINESS_MARGIN, "its readiness report")
    assert caps.limit(1, "train", "a") == (4 + READINESS_MARGIN, "its readiness report")
    assert caps.limit(1, "val") == caps.limit(3, "train") == caps.limit(4, "test") == (500, "max-site-samples")
    for bad in ("not json", json.dumps({"splits": []}), json.dumps({"splits": {"train": {"n": float("nan")}}}),
                json.dumps({"splits": {"train": {"n": 3, "modalities": {"a": -1}}}})):
        with pytest.raises(BadReply):
            readiness_report(ConfigRecord({"readiness": bad}))


GOOD_PROFILE = {"rows": 40, "labels": {"kind": "multi-label", "counts": [12, "<5"]},
                "inputs": {"a": {"rows": 40, "mean": [0.5, -1.0], "std": [0.2, 0.0]}}}
BAD_PROFILES = {  # what a hostile site's heterogeneity profile may hold -> the reason
    "a list": ([1, 2], "a profile that is not an object"),
    "labels of an unknown kind": ({"labels": {"kind": "names", "counts": [1]}}, "profile labels"),
    "a negative label count": ({"labels": {"kind": "classes", "counts": [3, -2]}}, "profile labels"),
    "a million labels": ({"labels": {"kind": "classes", "counts": [1] * 10**6}}, "profile labels"),
    "a NaN mean": ({"inputs": {"a": {"rows": 9, "mean": [float("nan")], "std": [1.0]}}}, "finite means"),
    "an infinite deviation": ({"inputs": {"a": {"rows": 9, "mean": [0.0], "std": [float("inf")]}}}, "finite means"),
    "a negative deviation": ({"inputs": {"a": {"rows": 9, "mean": [0.0], "std": [-1.0]}}}, "finite means"),
    "means and deviations of other lengths": ({"inputs": {"a": {"rows": 9, "mean": [0, 1], "std": [1]}}},
                                              "finite means"),
    "a string mean": ({"inputs": {"a": {"rows": 9, "mean": "abc", "std": "abc"}}}, "finite means"),
    "no row count": ({"inputs": {"a": {"mean": [0.0], "std": [1.0]}}}, "finite means"),
}


@pytest.mark.parametrize("case", sorted(BAD_PROFILES))
def test_a_bad_heterogeneity_profile_is_a_bad_readiness_reply(case):
    profile, reason = BAD_PROFILES[case]
    good = {"splits": {"train": {"n": 40, "modalities": {"a": 40}, "profile": GOOD_PROFILE}}}
    assert readiness_report(ConfigRecord({"readiness": json.dumps(good)}))["splits"]["train"]["profile"]
    bad = {"splits": {"train": {"n": 40, "modalities": {"a": 40}, "profile": profile}}}
    with pytest.raises(BadReply, match=reason):
        readiness_report(ConfigRecord({"readiness": json.dumps(bad)}))


def test_a_0d_array_may_travel_as_shape_1_and_nothing_else_changes_shape():
    """``numpy_to_arrays`` sends a 0-d array (a BatchNorm step counter, a learned temperature) as
    shape (1,): that is the model's shape; the update takes the global model's."""
    g = {"task.log_scale": np.zeros((), np.float32), "task.w": np.zeros((1,), np.float32)}
    sent = {"task.log_scale": np.ones((), np.float32), "task.w": np.ones(1, np.float32)}
    wire = arrays_to_numpy(numpy_to_arrays(sent))
    assert wire["task.log_scale"].shape == (1,)
    assert {k: v.shape for k, v in check_update(wire, g).items()} == {"task.log_scale": (), "task.w": (1,)}
    for bad in ({"task.log_scale": np.ones((2,), np.float32)}, {"task.log_scale": np.ones((1, 1), np.float32)}):
        with pytest.raises(BadReply, match="has shape"):
            check_update({**wire, **bad}, g)


def test_secagg_metrics_that_do_not_fit_are_dropped_not_raised(honest):
    """Under SecAgg+ a site's vector is already in the sum; its clear-text metrics are checked and
    capped for the records, and dropped (noted) when they do not fit."""
    strategy = make_strategy(honest[0])
    strategy.caps = declared_caps({"7": {"splits": {"train": {"n": 20, "modalities": {}}}}}, 1000)
    notes = []
    nan = secure_update(5, {"num-examples": float("nan"), "train-loss": 0.3}, strategy, notes)
    forged = secure_update(7, {"num-examples": 10**3, "train-loss": 0.3}, strategy, notes)
    assert nan.num_examples == 0 and "num-examples is nan" in dict(notes)[5]
    assert forged.num_examples == 20 + READINESS_MARGIN and "capped" in dict(notes)[7]


@pytest.mark.parametrize("config, message", [
    ({"aggregation": "median", "central-dp": True}, "central-dp"), ({"aggregation": "trimmed-mean", "secagg": True},
                                                                   "secagg"),
    ({"aggregation": "mode"}, "trimmed-mean"), ({"max-site-weight": 0}, "max-site-weight"),
    ({"max-site-samples": 0}, "max-site-samples"), ({"outlier-factor": 0.5}, "outlier-factor"),
    ({"trim-fraction": 0.5}, "trim-fraction")])
def test_bad_screening_settings_are_refused(config, message):
    with pytest.raises(ConfigError, match=message):
        Settings.from_run_config(config)


# -- the real ServerApp loop ------------------------------------------------------------------------
def _on(kind, tamper):
    """A ``tamper`` applied to one kind of reply (``train``, ``evaluate``, ``query``)."""
    def apply(reply):
        if reply.metadata.message_type == kind and not reply.has_error():
            tamper(reply)
        return reply
    return apply


def _both(*tampers):
    def apply(reply):
        for t in tampers:
            reply = t(reply)
        return reply
    return apply


def test_the_server_survives_hostile_sites(tmp_path):
    """Five sites, three of them hostile in training, one forging its test score: the run
    completes on the two good updates, each bad reply is rejected and logged by node id, and the
    forged evaluation (accuracy 1.0 on 10**5 samples) is capped to what that site declared."""
    s = Settings.from_run_config({**QUICK, "readiness": True, "min-sites": 2})
    grid = LocalGrid(5, s.as_run_config())
    grid.tamper[101] = _on("train", TAMPERS["wrong shape"][0])
    grid.tamper[102] = _on("train", TAMPERS["num-examples NaN"][0])
    grid.tamper[103] = _both(_on("train", TAMPERS["no metrics"][0]), _on("evaluate", _without("metrics")),
                             _on("query", lambda r: r.content.config_records["site"].__setitem__("readiness", "{]")))

    def forge(reply):
        m = reply.content.metric_records["metrics"]
        m["num-examples"], m["n"], m["accuracy"] = 10**5, 10**5, 1.0
    grid.tamper[105] = _on("evaluate", forge)
    summary = run_server(grid, s, tmp_path, echo=False)
    assert summary["stopped"] == "completed" and summary["rounds"] == 1
    assert summary["history"][0]["sites"] == 2 and summary["history"][0]["rejected"] == 3
    reasons = {(r["round"], r["site"]): r["reason"] for r in summary["rejections"]}
    assert "shape (3, 5, 7)" in reasons[1, 101] and "num-examples is nan" in reasons[1, 102]
    assert "no metrics record" in reasons[1, 103] and "bad readiness reply" in reasons[0, 103]
    assert "bad test evaluation reply: no metrics record" in reasons[2, 103]
    log = (tmp_path / "events.log").read_text()
    for site in (101, 102, 103):
        assert f"rejected update of site {site}: bad reply" in log
    assert "site 103: bad readiness reply" in log and "rejected test evaluation of site 103" in log
    readiness = json.loads((tmp_path / "readiness.json").read_text())
    assert "error" in readiness["103"]
    final = summary["final"]
    forged, declared = final["per_site"]["105"], readiness["105"]["splits"]["test"]["n"]
    assert forged["num-examples"] == declared + READINESS_MARGIN and "capped" in forged["note"]
    assert forged["share"] <= 0.5 and "note" in final["per_site"]["103"]
    scored = {k: v for k, v in final["per_site"].items() if "share" in v}
    assert set(scored) == {"101", "102", "104", "105"}
    assert final["overall"]["accuracy"] == pytest.approx(sum(v["share"] * v["accuracy"] for v in scored.values()))
    assert final["overall"]["accuracy"] < 0.9  # old code: 1.0 (the forged count outweighed everyone)
    with np.load(tmp_path / "final.npz") as z:
        assert all(np.all(np.isfinite(z[k])) for k in z.files)


def test_two_sites_an_inflated_update_is_rejected(tmp_path):
    """The norm screen works with two sites (each against the other): a x1e6 update is rejected
    and the round goes on with the honest one (min-sites 1)."""
    s = Settings.from_run_config({**QUICK, "min-sites": 1})
    grid = LocalGrid(2, s.as_run_config())
    grid.tamper[102] = _on("train", lambda r: _arrays(r, lambda w: w.update({k: v * 1e6 for k, v in w.items()})))
    summary = run_server(grid, s, tmp_path, echo=False)
    assert summary["stopped"] == "completed" and summary["history"][0]["sites"] == 1
    (rejection,) = summary["rejections"]
    assert rejection["site"] == 102 and "update norm of group" in rejection["reason"] and "the other's" in \
        rejection["reason"]
    with np.load(tmp_path / "final.npz") as z:
        assert max(float(np.abs(z[k]).max()) for k in z.files) < 100  # old code: averaged in, ~1e5
