import json

from click.testing import CliRunner

from mmdomain.cli import _add_plugin_commands, cli
from mmdomain_remote_sensing.synthetic import generate


def test_inspect_and_index(tmp_path):
    _add_plugin_commands()
    site = generate(tmp_path, num_sites=1, seed=0, scenes_per_site=1, size=96, patch_size=32)[0]
    safe = next((site / "s2").glob("*.SAFE"))
    r = CliRunner().invoke(cli, ["rs", "inspect", str(safe), "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.output)
    assert info["crs"] == "EPSG:32632" and info["resolution"] == 10 and len(info["bands"]) == 12
    assert info["offset"] == [-1000.0] and info["metadata"] == "MTD_MSIL2A.xml"
    assert 0 < info["cloud_fraction"] < 1 and info["time"].startswith("2023-06-01")
    vv = next((site / "s1").glob("*VV*"))
    r = CliRunner().invoke(cli, ["rs", "inspect", str(vv), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["crs"] == "EPSG:4326" and json.loads(r.output)["units"] == "db"
    r = CliRunner().invoke(cli, ["rs", "index", str(site), "-o", str(tmp_path / "m.csv")])
    assert r.exit_code == 0, r.output
    text = (tmp_path / "m.csv").read_text()
    assert "paired" in text and "2.00" in text
    r = CliRunner().invoke(cli, ["rs", "inspect", str(tmp_path / "m.csv")])
    assert r.exit_code != 0 and "Traceback" not in r.output


def test_stats_as_a_model_config_for_named_bands(tmp_path):
    _add_plugin_commands()
    site = generate(tmp_path, num_sites=1, seed=0, scenes_per_site=1, size=96, patch_size=32)[0]
    r = CliRunner().invoke(cli, ["rs", "stats", str(site), "--patches", "4", "--s2-bands", "B02,B03,B04,B08", "--model"])
    assert r.exit_code == 0, r.output
    s2 = json.loads(r.output)["encoders"]["s2"]["options"]
    assert s2["bands"] == ["B02", "B03", "B04", "B08"] and len(s2["mean"]) == len(s2["std"]) == 4
    r = CliRunner().invoke(cli, ["rs", "stats", str(site), "--s2-bands", "B02,B10"])
    assert r.exit_code != 0 and "unknown Sentinel-2 L2A band" in r.output and "Traceback" not in r.output
