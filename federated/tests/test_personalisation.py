"""Personalisation (``personalise = fedbn | fedper | finetune | ditto``, issue #16 item 3): what stays at a
site never leaves it and is never averaged, each site keeps its own from round to round, the
sites' personalised models are scored on their own test sets (and written where a site asks), and
a site that sends what it should keep is rejected."""

import numpy as np
import pytest
import torch
from flwr.app import Array

from mmdomain.checkpoint import load_checkpoint
from mmdomain.errors import ConfigError
from mmdomain_federated import analysis, personal, task
from mmdomain_federated.groups import param_group
from mmdomain_federated.inprocess import LocalGrid, recording
from mmdomain_federated.records import arrays_to_numpy
from mmdomain_federated.server_app import run_server
from mmdomain_federated.settings import Settings



def test_what_each_method_keeps_at_the_site(registry):
    model = task.build(Settings.from_run_config({"dataset": "toy"}), registry)
    shared = set(task.shared_keys(model))
    norms = {f"{n}.{k}" for n, m in model.named_modules() if isinstance(m, personal.NORMS) for k in m.state_dict()}
    fedbn = personal.local_keys(model, "fedbn")
    assert fedbn and fedbn == norms & shared
    assert any(k.endswith("running_mean") for k in fedbn) or any(k.endswith(".weight") for k in fedbn)
    fedper = personal.local_keys(model, "fedper")
    assert fedper == {k for k in shared if param_group(k) in ("fusion", "task")}
    assert {param_group(k) for k in shared - fedper} == {f"encoder:{m}" for m in model.modalities}  # encoders shared
    assert personal.local_keys(model, "finetune") == personal.local_keys(model, "ditto") == frozenset()
    assert personal.local_keys(model, "") == frozenset()


@pytest.mark.parametrize("config, message", [
    ({"personalise": "fedsgd"}, "personalise must be '' .* fedbn, fedper, finetune, ditto"),
    ({"ditto-lambda": 0.5}, "applies to personalise=ditto only"),
    ({"personalise": "ditto", "ditto-lambda": 0.0}, "ditto-lambda must be a finite number > 0"),
    ({"personalise": "fedbn", "secagg": True}, "SecAgg"),
    ({"finetune-epochs": 2}, "applies to personalise=finetune only"),
    ({"personalise": "finetune", "finetune-epochs": 0}, "finetune-epochs must be >= 1"),
    ({"personalise": "finetune", "finetune-select": "best"}, "finetune-select must be one of last, val-loss"),
    ({"finetune-select": "val-loss"}, "finetune-select applies to personalise=finetune only"),
])
def test_bad_personalisation_settings_are_refused(config, message):
    with pytest.raises(ConfigError, match=message):
        Settings.from_run_config(config)


@pytest.fixture(scope="module")
def fedbn_run(registry, tmp_path_factory):
    s = Settings.from_run_config({"dataset": "toy", "num-server-rounds": 2, "max-steps": 3, "readiness": False,
                                  "personalise": "fedbn"})
    replies: list = []
    grid = LocalGrid(3, s.as_run_config())
    grid.tamper = {n: recording(replies) for n in grid.contexts}
    summary = run_server(grid, s, tmp_path_factory.mktemp("fedbn"), echo=False)
    return s, grid, replies, summary


def test_fedbn_keeps_normalisation_at_each_site_and_never_sends_it(fedbn_run, registry):
    s, grid, replies, summary = fedbn_run
    model = task.build(s, registry)
    kept, start = personal.local_keys(model, "fedbn"), task.get_weights(model)
    assert summary["stopped"] == "completed" and len(replies) == 6  # 3 sites x 2 rounds, every reply accepted
    assert all(not kept & set(r.content["arrays"].keys()) for r in replies)  # never sent
    assert all(summary["history"][i]["sites"] == 3 for i in range(2))
    with np.load(summary["out_dir"] + "/final.npz") as final:  # never averaged: the global norms are the start's
        assert all(np.array_equal(final[k], start[k]) for k in kept)
        moved = [k for k in final.files if k not in kept and not np.array_equal(final[k], start[k])]
        assert moved  # the rest was trained and averaged
    own = [arrays_to_numpy(ctx.state.array_records[personal.STATE]) for ctx in grid.contexts.values()]
    assert all(set(o) == kept for o in own)
    floats = [k for k in kept if np.issubdtype(start[k].dtype, np.floating)]
    assert any(not np.allclose(own[0][k], own[1][k]) for k in floats)  # each site its own
    assert any(not np.allclose(own[0][k], start[k]) for k in floats)  # ... trained, not the start's


def test_personalised_models_are_scored_on_each_sites_own_test_set(fedbn_run):
    _, _, _, summary = fedbn_run
    mine, final = summary["personalised"], summary["final"]
    assert mine["method"] == "fedbn" and set(mine["per_site"]) == set(final["per_site"])
    assert all(m["personal-kept"] == 1 and m["num-examples"] > 0 for m in mine["per_site"].values())
    metric = "macro_auroc" if "macro_auroc" in mine["overall"] else "accuracy"
    assert any(mine["per_site"][s][metric] != final["per_site"][s][metric] for s in final["per_site"])
    table = analysis.load_run(summary["out_dir"]).cross_site(metric)
    assert "personalised (fedbn)" in table.index and "global" in table.index
    row = table.loc["personalised (fedbn)"]
    assert row.drop("pooled").notna().all() and np.isnan(row["pooled"])  # own test sets only


def test_a_site_that_sends_what_it_should_keep_is_rejected(registry, tmp_path):
    s = Settings.from_run_config({"dataset": "toy", "num-server-rounds": 1, "max-steps": 2, "readiness": False,
                                  "personalise": "fedper", "min-sites": 1})
    kept = sorted(personal.local_keys(task.build(s, registry), "fedper"))

    def leak(reply):  # a modified app: sends its own fusion head (a key it must keep) with the rest
        if reply.metadata.message_type == "train" and not reply.has_error():
            reply.content["arrays"][kept[0]] = Array(np.zeros(task.get_weights(task.build(s, registry))[kept[0]].shape,
                                                              np.float32))
        return reply
    grid = LocalGrid(2, s.as_run_config())
    grid.tamper = {101: leak}
    summary = run_server(grid, s, tmp_path, echo=False)
    reasons = [r["reason"] for r in summary["rejections"] if str(r["site"]) == "101"]
    assert reasons and "not parameters the server sent" in reasons[0]
    assert summary["history"][0]["sites"] == 1  # the honest site's update alone


def test_finetune_writes_each_sites_model_where_it_asks_and_it_scores_as_reported(registry, tmp_path):
    s = Settings.from_run_config({"dataset": "toy", "num-server-rounds": 1, "max-steps": 2, "readiness": False,
                                  "personalise": "finetune", "finetune-epochs": 2})
    folders = [tmp_path / f"site-{i}-own" for i in range(2)]
    grid = LocalGrid(2, s.as_run_config(), node_configs=[{"personal-dir": str(f)} for f in folders])
    summary = run_server(grid, s, tmp_path / "run", echo=False)
    mine = summary["personalised"]["per_site"]
    assert all(m["personal-epochs"] == 2 for m in mine.values())
    for node, folder in zip(grid.contexts, folders):
        (path,) = folder.glob("personal-*.safetensors")
        model, _ = load_checkpoint(path, registry)
        ctx = grid.contexts[node]
        scored = task.evaluate_site(model, task.load_site(s, dict(ctx.node_config), registry, "test"), s)
        metric = "macro_auroc" if "macro_auroc" in scored["overall"] else "accuracy"
        assert scored["overall"][metric] == pytest.approx(mine[str(node)][metric])
    assert not any((tmp_path / "run").glob("personal-*"))  # nothing of it at the server


def _val_loss(model, data, s):
    return float(task.evaluate_site(model, data, s)["loss"])


@pytest.mark.parametrize("lr", [0.003, 30.0])
def test_finetune_by_validation_keeps_the_epoch_of_least_validation_loss(registry, lr):
    """``finetune-select = val-loss``: of the global model (epoch 0) and each epoch's, the site keeps
    the one with the least loss on its validation split; an absurd learning rate (fine-tuning that
    only hurts) leaves it the global model."""
    s = Settings.from_run_config({"dataset": "toy", "max-steps": 3, "personalise": "finetune", "finetune-epochs": 3,
                                  "finetune-select": "val-loss", "lr": lr})
    grid = LocalGrid(1, s.as_run_config())
    node_config = dict(next(iter(grid.contexts.values())).node_config)
    train, val = (task.load_site(s, node_config, registry, split) for split in ("train", "val"))
    model = task.build(s, registry)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    losses = [_val_loss(model, val, s)]
    replay = task.build(s, registry)  # the same fine-tuning, every epoch's model scored
    replay.load_state_dict(start)
    task.train_site(replay, train, personal._own(s, local_epochs=3), seed=11,
                    after_epoch=lambda e: losses.append(_val_loss(replay, val, s)))
    done = personal.personalised(model, s, None, train, seed=11, val_data=val)
    best = int(np.argmin(losses))
    assert done["personal-epochs"] == best
    assert done["personal-val-loss"] == pytest.approx(losses[best])
    assert done["personal-val-loss-start"] == pytest.approx(losses[0])
    assert _val_loss(model, val, s) == pytest.approx(losses[best])
    if lr > 1:
        assert best == 0 and all(torch.equal(model.state_dict()[k], v) for k, v in start.items())


def test_finetune_by_validation_without_a_validation_split_fine_tunes_as_last_and_says_so(registry):
    s = Settings.from_run_config({"dataset": "toy", "max-steps": 2, "personalise": "finetune", "finetune-epochs": 2,
                                  "finetune-select": "val-loss"})
    grid = LocalGrid(1, s.as_run_config())
    train = task.load_site(s, dict(next(iter(grid.contexts.values())).node_config), registry, "train")
    done = personal.personalised(task.build(s, registry), s, None, train, seed=3, val_data=[])
    assert done["personal-select-skipped"] == 1 and done["personal-epochs"] == 2


def _ditto(registry, tmp_path, lam):
    s = Settings.from_run_config({"dataset": "toy", "num-server-rounds": 2, "max-steps": 3, "readiness": False,
                                  "personalise": "ditto", "ditto-lambda": lam})
    grid = LocalGrid(2, s.as_run_config())
    replies: list = []
    grid.tamper = {n: recording(replies) for n in grid.contexts}
    summary = run_server(grid, s, tmp_path / f"ditto-{lam}", echo=False)
    sent = arrays_to_numpy([m for m in grid.sent if m.metadata.message_type == "train"][-1].content["arrays"])
    own = [arrays_to_numpy(ctx.state.array_records[personal.STATE]) for ctx in grid.contexts.values()]
    gap = float(np.mean([sum(float(((o[k] - sent[k]) ** 2).sum()) for k in sent
                             if np.issubdtype(sent[k].dtype, np.floating)) for o in own]))
    return s, summary, replies, sent, own, gap


def test_ditto_keeps_a_whole_model_of_its_own_pulled_toward_the_global_one(registry, tmp_path):
    s, summary, replies, sent, own, loose = _ditto(registry, tmp_path, 0.01)
    shared = set(task.shared_keys(task.build(s, registry)))
    assert all(set(o) == shared for o in own)  # a whole model, kept at the site
    assert all(set(r.content["arrays"].keys()) == shared for r in replies)  # the global update as FedAvg's
    assert loose > 0 and not np.allclose(own[0][sorted(sent)[0]], own[1][sorted(sent)[0]])
    assert all(m["personal-kept"] == 1 for m in summary["personalised"]["per_site"].values())
    *_, tight = _ditto(registry, tmp_path, 100.0)
    assert tight < 0.5 * loose, (tight, loose)  # a stronger pull keeps it nearer the global model it was sent
