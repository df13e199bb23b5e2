"""Private training of the trainable part: planned noise from a target epsilon, the epsilon
actually spent in the ledger and summary, frozen encoders that never travel and are checked
by hash, and every participant starting from the same checkpoint."""

import pytest
import torch

from mmdomain.checkpoint import save_checkpoint
from mmdomain.errors import ConfigError
from mmdomain_federated import task
from mmdomain_federated.client_app import SiteError, _train_locally
from mmdomain_federated.inprocess import LocalGrid
from mmdomain_federated.privacy import Ledger
from mmdomain_federated.server_app import run_server

SITE0 = {"partition-id": 0, "num-partitions": 2}


def test_local_dp_to_a_target_epsilon_spends_at_most_it(settings_for, tmp_path):
    s = settings_for(num_server_rounds=2, local_dp=True, target_epsilon=3.0, batch_size=8, max_steps=0,
                     encoder_train="toy_image=none")
    summary = run_server(LocalGrid(2, s.as_run_config()), s, tmp_path)
    assert summary["rounds"] == 2
    first, last = (h["local-epsilon"] for h in summary["history"])
    assert all(0 < first[site] < last[site] <= 3.0 for site in last)  # cumulative, within the target
    assert max(last.values()) > 2.95, last  # the plan uses the budget (the steps it plans are those trained)
    assert summary["local-epsilon"] == last
    rows = [r for r in Ledger(tmp_path / "privacy-ledger.jsonl").rows() if r["mechanism"].startswith("dp-sgd")]
    assert len(rows) == 4 and {r["round"] for r in rows} == {1, 2}
    assert all(r["noise"] > 0.5 and r["epsilon"] <= 3.0 for r in rows)


def test_target_epsilon_needs_a_mechanism(settings_for):
    with pytest.raises(ConfigError, match="turn one on"):
        settings_for(target_epsilon=8.0)
    with pytest.raises(ConfigError, match="modality=policy"):
        settings_for(encoder_train="toy_image")


def test_central_dp_to_a_target_epsilon(settings_for, tmp_path):
    s = settings_for(num_server_rounds=2, central_dp=True, target_epsilon=8.0, clip_norm=1.0)
    summary = run_server(LocalGrid(3, s.as_run_config()), s, tmp_path)
    assert summary["rounds"] == 2 and 7.0 < summary["epsilon"] <= 8.0


def test_frozen_encoders_do_not_travel(settings_for, registry):
    s = settings_for(encoder_train="toy_image=none;toy_note=last:1")
    model = task.build(s, registry)
    sent = task.get_weights(model)
    assert not any(k.startswith("encoders.toy_image.") for k in sent)
    params = dict(model.named_parameters())
    assert all(params[k].requires_grad for k in sent if k in params)  # only what trains
    assert {k for k in sent if k.startswith("encoders.toy_note.")} == {"encoders.toy_note.norm.weight",
                                                                      "encoders.toy_note.norm.bias"}  # last:1
    full = task.get_weights(task.build(settings_for(), registry))
    assert sum(v.nbytes for v in sent.values()) < sum(v.nbytes for v in full.values())
    assert task.frozen_digest(model) and task.frozen_digest(task.build(settings_for(), registry)) == ""


def test_a_site_whose_frozen_parts_differ_refuses(settings_for, registry):
    s = settings_for(encoder_train="toy_image=none")
    model = task.build(s, registry)
    weights = task.get_weights(model)
    cfg = {"frozen-sha256": task.frozen_digest(model), "server-round": 1}
    _train_locally(cfg, s, registry, SITE0, weights, 1)  # the same frozen parts: trains
    other = task.build(settings_for(encoder_train="toy_image=none", seed=1), registry)  # other frozen weights
    with pytest.raises(SiteError, match="frozen parts of this site's model differ"):
        _train_locally(cfg, s, registry, SITE0, weights, 1, model=other)


def test_every_participant_starts_from_init_from(settings_for, registry, tmp_path):
    torch.manual_seed(5)
    source = task.build(settings_for(seed=5), registry)
    ckpt = save_checkpoint(source, tmp_path / "pretrained.safetensors", registry)
    s = settings_for(init_from=str(ckpt), encoder_train="toy_image=none")
    a, b = task.build(s, registry), task.build(s, registry)
    for k, v in source.encoders.state_dict().items():
        torch.testing.assert_close(a.encoders.state_dict()[k], v)
    assert task.frozen_digest(a) == task.frozen_digest(b)
