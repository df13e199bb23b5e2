"""Fuzzed train replies (issue #17 item 6): seeded random mutations of a real ClientApp's reply (its
arrays' serialized bytes and values, its counts and metric records, its records themselves), fed with
two honest replies to the real aggregation entry point (``aggregate_modalities``) in a forked child
under 2 GiB and 30 s (``mmdomain.testing.fuzz``). The server never raises: the mutated site's reply
is accepted (finite weights) or rejected for that site alone, the honest sites are aggregated, and
the new model has the global model's names, shapes and dtypes, every value finite.

A rejection is the "clear" outcome here: the site it names is the reply's (the rejection's message is
``"<site>: <reason>"``). The crafted cases are in ``test_hostile_sites``. ``bench/fuzz.py`` runs the
same family with more mutants; the functions here are its source."""

from __future__ import annotations

import copy
import random
from typing import Any, Iterator

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from mmdomain.testing import fuzz
from mmdomain.testing.fuzz import Case, Refused, mutate
from mmdomain_federated.records import arrays_to_numpy, numpy_to_arrays

from test_hostile_sites import QUICK, _aggregate

SEED = 1708
SITE, HONEST = 101, (102, 103)
NUMBERS = (float("nan"), float("inf"), float("-inf"), -1, 0, 2.5, 10**9, 2**63 - 1, -2**63, 1e308, 3, -0.0)
DTYPES = (np.float16, np.float64, np.int64, np.int8, np.uint16, np.bool_, np.complex64)


def honest_replies(registry) -> tuple[Any, ...]:
    """One real train round of three sites (toy, one step each): as ``test_hostile_sites.honest``."""
    from mmdomain_federated import task
    from mmdomain_federated.inprocess import LocalGrid
    from mmdomain_federated.settings import Settings
    from mmdomain_federated.strategy import make_strategy

    s = Settings.from_run_config(QUICK)
    model = task.build(s, registry)
    weights = task.get_weights(model)
    grid = LocalGrid(3, s.as_run_config())
    msgs = list(make_strategy(s).configure_train(1, numpy_to_arrays(weights), ConfigRecord({"fused-eval": True}),
                                                 grid))
    replies = sorted(grid.send_and_receive(msgs), key=lambda r: r.metadata.src_node_id)
    assert [r.metadata.src_node_id for r in replies] == [SITE, *HONEST] and not any(r.has_error() for r in replies)
    return s, weights, msgs, replies, tuple(model.modalities)


# -- mutations of one reply ---------------------------------------------------------------------------------

def _array_bytes(reply, rng, seed):
    """An array's serialized bytes (.npy), mutated: its header declares the dtype and shape."""
    record = reply.content.array_records["arrays"]
    key = rng.choice(sorted(record.keys()))
    a = record[key]
    m = mutate(a.data, seed, focus=(0, 128))
    record[key] = Array(dtype=a.dtype, shape=a.shape, stype=a.stype, data=m.data)
    return f"bytes of {key}: {'+'.join(m.ops)}"


def _array_values(reply, rng, seed):
    w = arrays_to_numpy(reply.content.array_records["arrays"])
    key = rng.choice(sorted(w))
    a = w[key]
    how = rng.choice(("nan", "inf", "scale", "dtype", "shape", "empty", "drop", "add", "rename"))
    if how in ("nan", "inf") and a.size and np.issubdtype(a.dtype, np.floating):
        a = a.copy()
        a.flat[rng.randrange(a.size)] = np.nan if how == "nan" else rng.choice((np.inf, -np.inf))
        w[key] = a
    elif how == "scale":
        w[key] = (a * 10.0 ** rng.randint(1, 30)).astype(a.dtype)
    elif how == "dtype":
        with np.errstate(all="ignore"):
            w[key] = a.astype(rng.choice(DTYPES))
    elif how == "shape":
        w[key] = rng.choice((a.reshape(-1), a[None], a.reshape(-1)[: max(a.size - 1, 0)], np.zeros((a.size + 1,),
                                                                                               a.dtype)))
    elif how == "empty":
        w[key] = np.zeros((0,), a.dtype)
    elif how == "drop":
        del w[key]
    elif how == "add":
        w[f"{key}.extra"] = np.ones(3, np.float32)
    elif how == "rename":
        w[f"{key}x"] = w.pop(key)
    reply.content["arrays"] = numpy_to_arrays(w)
    return f"{how} {key}"


def _metric(reply, rng, seed):
    m = reply.content.metric_records["metrics"]
    keys = sorted(m.keys()) + ["num-examples", "count/toy_image", "count/toy_note", "count/x-ray", "eval-n",
                               "eval-samples", "train-samples", "site-seconds", "n"]
    key = rng.choice(keys)
    value = rng.choice(NUMBERS + ([1.0, 2.0], [], [3, 4]))
    try:
        m[key] = value
    except (TypeError, ValueError):  # a value a MetricRecord itself refuses: the wire cannot carry it
        m[key] = float("nan")
    return f"metric {key} = {value!r}"


def _drop_metric(reply, rng, seed):
    m = reply.content.metric_records["metrics"]
    key = rng.choice(sorted(m.keys()))
    del m[key]
    return f"no metric {key}"


def _config(reply, rng, seed):
    site = reply.content.config_records.get("site")
    if site is None:
        site = ConfigRecord()
        reply.content["site"] = site
    key, value = rng.choice((("compress", "bf16"), ("compress", "zip"), ("compress", ""), ("refused", "policy"),
                             ("readiness", "{]"), ("eval-error", "X")))
    site[key] = value
    return f"site {key} = {value!r}"


def _record(reply, rng, seed):
    name = rng.choice(("arrays", "metrics", "site"))
    other = rng.choice((None, MetricRecord({"x": 1.0}), ArrayRecord(), ConfigRecord({"a": "b"})))
    items = {k: v for k, v in reply.content.items() if k != name}
    if other is not None:
        items[name] = other
    reply.content = RecordDict(items)
    return f"record {name} -> {type(other).__name__}"


MUTATIONS = {"array-bytes": _array_bytes, "array-values": _array_values, "metric": _metric,
             "drop-metric": _drop_metric, "config": _config, "record": _record}


def mutate_reply(reply, seed: int) -> str:
    """One to three seeded ``MUTATIONS`` of ``reply`` (in place); what was done."""
    rng = random.Random(seed)
    done = []
    for _ in range(rng.randint(1, 3)):
        name = rng.choice(sorted(MUTATIONS))
        try:
            done.append(MUTATIONS[name](reply, rng, seed + len(done)))
        except Exception:  # noqa: BLE001 - what it edits is gone or unreadable (an earlier mutation)
            done.append(f"{name}: nothing to mutate")
    return "; ".join(done)


# -- aggregating, checked ------------------------------------------------------------------------------------

def aggregate_checked(honest, replies) -> None:
    """The real aggregation of ``replies``: the mutated site accepted or ``Refused`` (``"<site>:
    <reason>"``), the honest sites aggregated, the new model whole and finite."""
    _, global_w, _, _, _ = honest
    agg = _aggregate(honest, replies)
    accepted = [u.site for u in agg.accepted]
    assert all(h in accepted for h in HONEST), f"an honest site was not aggregated: {agg.rejected}"
    assert set(agg.weights) == set(global_w), "the new model lost or gained parameters"
    for k, v in agg.weights.items():
        assert v.shape == global_w[k].shape and v.dtype == global_w[k].dtype, f"{k} changed shape or dtype"
        assert np.all(np.isfinite(v)), f"{k} is not finite"
    for site, reason in agg.rejected + agg.refused + agg.failed:
        raise Refused(f"{site}: {reason}")
    assert accepted == [SITE, *HONEST], accepted


def reply_cases(honest, count: int, seed: int = SEED) -> Iterator[Case]:
    """The first site's reply mutated (``mutate_reply``), then and the two honest ones aggregated; a
    duplicate reply of the same site in one case of eight."""
    for k in range(count):
        replies = [copy.deepcopy(r) for r in honest[3]]
        what = mutate_reply(replies[0], seed + k)
        if random.Random(seed + k).random() < 0.125:
            replies.insert(1, copy.deepcopy(replies[0]))
            what += "; sent twice"
        yield Case(f"seed {seed + k}: {what}", lambda r=replies: aggregate_checked(honest, r), f"{SITE}: ")


FAMILIES = {"replies": reply_cases}


# -- the test ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def honest(registry):
    h = honest_replies(registry)
    aggregate_checked(h, [copy.deepcopy(r) for r in h[3]])  # unmutated, all three are aggregated
    return h


@pytest.mark.timeout(240)
def test_mutated_replies_are_aggregated_or_rejected_for_their_site_never_raised(honest):
    outcomes = fuzz.run_cases(reply_cases(honest, 48), allowed=())
    row = fuzz.tally(outcomes)
    assert fuzz.failures(outcomes) == [], (row, fuzz.failures(outcomes))
    assert row["clear"] > 0 and row["ok"] > 0, row
