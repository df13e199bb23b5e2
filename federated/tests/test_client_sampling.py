"""Client sampling (issue #16 item 8): ``fraction-train`` trains a share of the live sites each round
(at least ``min-sites``), every site still evaluates; 20 small sites finish in seconds in-process."""

import pytest

from mmdomain.errors import ConfigError
from mmdomain_federated.inprocess import LocalGrid
from mmdomain_federated.server_app import run_server
from mmdomain_federated.settings import Settings


def test_twenty_sites_train_a_quarter_each_round_and_all_evaluate(settings_for, tmp_path):
    s = settings_for(num_server_rounds=3, fraction_train=0.25, min_sites=3, max_steps=1, batch_size=8)
    summary = run_server(LocalGrid(20, s.as_run_config()), s, tmp_path, echo=False)
    assert summary["stopped"] == "completed" and summary["rounds"] == 3
    assert [h["sites"] for h in summary["history"]] == [5, 5, 5]  # 20 x 0.25, no site dropped
    assert all(h["dropped"] == 0 for h in summary["history"])
    evaluated = [site for site, m in summary["final"]["per_site"].items() if m.get("n")]
    assert len(evaluated) == 20  # sampling is for training; the final test evaluation asks every site


def test_a_round_never_trains_fewer_than_min_sites(settings_for, tmp_path):
    s = settings_for(num_server_rounds=1, fraction_train=0.1, min_sites=3, max_steps=1, batch_size=8)
    summary = run_server(LocalGrid(5, s.as_run_config()), s, tmp_path, echo=False)
    assert summary["history"][0]["sites"] == 3  # 5 x 0.1 rounds down to 0: min-sites is the floor


@pytest.mark.parametrize("config, words", [({"fraction-train": 0}, "in (0, 1]"),
                                           ({"fraction-train": 1.5}, "in (0, 1]"),
                                           ({"fraction-train": 0.5, "central-dp": True}, "without central-dp"),
                                           ({"fraction-train": 0.5, "secagg": True}, "without secagg")])
def test_bad_sampling_is_a_clear_config_error(config, words):
    with pytest.raises(ConfigError, match="fraction-train") as err:
        Settings.from_run_config(config)
    assert words in str(err.value)
