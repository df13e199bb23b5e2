"""The quality benchmarks' JSON options are checked at start-up, with a clear error, before any site is
generated (a typo must not cost the minutes of a generated site, nor end in a traceback)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

from harness import json_options  # noqa: E402


def parser() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog="bench")


def test_options_parse_to_a_dict():
    assert json_options(parser(), "--site-options", '{"sign_strength": 0.4}') == {"sign_strength": 0.4}
    nested = '{"medical": {"studies_per_site": 500}}'
    assert json_options(parser(), "--site-options", nested, per_dataset=True) == {"medical": {"studies_per_site": 500}}


@pytest.mark.parametrize(("text", "per_dataset", "expected"), [
    ('{"sign_strength": 0.4', False, "is not valid JSON"),
    ("[1, 2]", False, "must be a JSON object of generator options"),
    ('{"medical": 500}', True, "object of generator options per dataset"),
])
def test_bad_options_exit_with_a_clear_message(capsys, text, per_dataset, expected):
    with pytest.raises(SystemExit) as exit_:
        json_options(parser(), "--site-options", text, per_dataset=per_dataset)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--site-options" in err and expected in err and "Traceback" not in err


@pytest.mark.parametrize("script, flag", [("dp_utility.py", "--public-options"),
                                          ("label_efficiency.py", "--site-options"),
                                          ("missing_modality.py", "--site-options")])
def test_scripts_refuse_bad_json_before_generating_sites(tmp_path, script, flag):
    done = subprocess.run([sys.executable, str(BENCH / script), flag, "{not json", "--out" if script != "dp_utility.py"
                           else "--results", str(tmp_path / "r.json")], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"{flag} is not valid JSON" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "r.json").exists()


def test_unknown_datasets_are_refused_with_the_names_available():
    from harness import dataset_names

    from mmdomain.plugins import get_registry

    registry = get_registry()
    assert dataset_names(registry, "toy,") == ["toy"]
    with pytest.raises(SystemExit, match=r"--datasets: .*'nothing'.*available: .*toy"):
        dataset_names(registry, "toy,nothing")
