"""``Settings()`` is the app's ``[tool.flwr.app.config]``: same keys, same defaults."""

import tomllib
from dataclasses import fields
from pathlib import Path

import pytest

from mmdomain.errors import ConfigError
from mmdomain_federated.settings import NOT_IN_APP_CONFIG, Settings

APP_CONFIG = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]


def test_defaults_equal_the_app_config():
    defaults = Settings().as_run_config()
    for key, value in APP_CONFIG.items():
        assert key in defaults, f"[tool.flwr.app.config] {key} is not a Settings field"
        assert defaults[key] == value and type(defaults[key]) is type(value), (key, defaults[key], value)


def test_every_field_is_in_the_app_config_or_excluded_with_a_reason():
    for f in fields(Settings):
        key = f.name.replace("_", "-")
        if f.name in NOT_IN_APP_CONFIG:
            assert key not in APP_CONFIG and NOT_IN_APP_CONFIG[f.name].strip(), f.name
        else:
            assert key in APP_CONFIG, f"Settings.{f.name} is missing from [tool.flwr.app.config]"


def test_the_app_config_parses_to_the_defaults():
    assert Settings.from_run_config(APP_CONFIG) == Settings()


@pytest.mark.parametrize("config, message", [({"strategy": "fedsgd"}, "strategy"), ({"nope": 1}, "unknown key"),
                                             ({"secagg": True, "compress": "bf16"}, "compress"),
                                             ({"augment": "sideways"}, "augment must be auto, on or off"),
                                             ({"batch-size": "many"}, "is not a int"),
                                             # a site's policy reads these: "perhaps" must not mean false
                                             ({"local-dp": "perhaps"}, "local-dp='perhaps' is not a bool"),
                                             ({"secagg": 0.5}, "is not a bool")])
def test_bad_run_configs_are_refused(config, message):
    with pytest.raises(ConfigError, match=message):
        Settings.from_run_config(config)


def test_booleans_read_as_written():
    for text, value in (("true", True), ("Yes", True), ("1", True), ("false", False), ("no", False), ("0", False)):
        assert Settings.from_run_config({"local-dp": text}).local_dp is value


def test_private_runs_train_with_large_poisson_batches_by_default():
    plain, private = Settings(), Settings.from_run_config({"local-dp": True})
    assert plain.train_batch_size(2000) == plain.batch_size == 16
    assert private.train_batch_size(2000) == 256 and private.train_batch_size(100) == 100
    assert Settings.from_run_config({"local-dp": True, "local-batch-size": 0}).train_batch_size(2000) == 16
    with pytest.raises(ConfigError, match="local-batch-size"):
        Settings.from_run_config({"local-batch-size": -1})


def test_cli_run_config_paths_are_the_callers(tmp_path, monkeypatch):
    """`fed run --set init-from=runs/x` means the caller's runs/x, not one under where the apps run."""
    from mmdomain_federated.plugin import _parse_kv

    monkeypatch.chdir(tmp_path)
    parsed = _parse_kv(("init-from=runs/pretrain/model.safetensors", "data-root=sites", "rounds=2", "lr=0.01"))
    assert parsed["init-from"] == str(tmp_path / "runs/pretrain/model.safetensors")
    assert parsed["data-root"] == str(tmp_path / "sites") and parsed["rounds"] == 2 and parsed["lr"] == 0.01
