"""Config files: TOML/YAML, errors that name the field."""

import pytest

from mmdomain import ConfigError
from mmdomain.config import load_config


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_toml_and_yaml_load_the_same(tmp_path):
    t = load_config(_write(tmp_path, "a.toml", '[data]\ndataset = "toy"\nroot = "d"\n[train]\nlr = 0.01\n'))
    y = load_config(_write(tmp_path, "a.yaml", "data: {dataset: toy, root: d}\ntrain: {lr: 0.01}\n"))
    assert t == y
    assert t.data.root == (tmp_path / "d").resolve()  # relative to the config file


def test_wrong_type_names_the_field(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.lr: .*number.*'fast'"):
        load_config(_write(tmp_path, "c.toml", '[data]\ndataset = "toy"\nroot = "d"\n[train]\nlr = "fast"\n'))


def test_misspelled_key_is_rejected(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.epoch: Extra inputs"):
        load_config(_write(tmp_path, "c.yaml", "data: {dataset: toy, root: d}\ntrain: {epoch: 3}\n"))


def test_model_section_checks_encoders(tmp_path):
    text = ("data: {dataset: toy, root: d}\nmodel:\n  modalities: [a, b]\n  encoders: {a: {name: cnn}}\n"
            "  task: {name: multiclass}\n")
    with pytest.raises(ConfigError, match=r"model: .*no encoder given for modalities \['b'\]"):
        load_config(_write(tmp_path, "m.yaml", text))


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(_write(tmp_path, "bad.toml", "[data\n"))


def test_relative_paths_are_relative_to_the_config_file(tmp_path):
    folder = tmp_path / "configs"
    folder.mkdir()
    path = folder / "run.toml"
    path.write_text('[data]\ndataset = "toy"\nroot = "../data"\n[train]\nout_dir = "../runs/x"\n'
                    'init_from = "../runs/pre/model.safetensors"\n')
    config = load_config(path)
    assert config.data.root == tmp_path / "data"
    assert config.train.out_dir == tmp_path / "runs" / "x"
    assert config.train.init_from == tmp_path / "runs" / "pre" / "model.safetensors"
