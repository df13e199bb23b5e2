"""Sites by their consortium names (issue #15): the node id -> name file that register-sites.sh
writes names sites in the server's log and in summary.json; without it node ids stay."""

import json

from mmdomain_federated.inprocess import LocalGrid
from mmdomain_federated.server_app import run_server
from mmdomain_federated.site_names import ENV, SiteNames


def test_log_lines_and_summary_name_registered_sites_only():
    names = SiteNames({"101": "hospital-a", "102": "hospital-b"})
    assert names.text("round 2: site 101 failed; site 1010 and site 103 too") == \
        "round 2: site hospital-a (node 101) failed; site 1010 and site 103 too"
    summary = {"final": {"per_site": {"101": {"n": 3}, "103": {"n": 4}}}, "refused": {"102": "policy"},
               "rejections": [{"round": 1, "site": 102, "reason": "nan"}], "local-epsilon": {"101": 2.0},
               "history": [{"round": 1, "dropped-sites": {"102": "failed"}, "local-epsilon": {"101": 1.0},
                            "per-site": {"101": {"eval-n": 3}}}]}
    out = names.summary(summary)
    assert out["final"]["per_site"] == {"hospital-a": {"n": 3}, "103": {"n": 4}}
    assert out["refused"] == {"hospital-b": "policy"} and out["rejections"][0]["site"] == "hospital-b"
    assert out["history"][0]["dropped-sites"] == {"hospital-b": "failed"}
    assert out["history"][0]["per-site"] == {"hospital-a": {"eval-n": 3}}
    assert out["site-names"] == {"101": "hospital-a", "102": "hospital-b"}
    assert SiteNames().summary(summary) is summary and SiteNames().text("site 101") == "site 101"


def test_unreadable_names_file_is_logged_and_the_run_keeps_node_ids(tmp_path, monkeypatch):
    bad = tmp_path / "site-nodes.json"
    bad.write_text("{not json")
    monkeypatch.setenv(ENV, str(bad))
    said = []
    assert not SiteNames.from_env(said.append) and "unreadable (JSONDecodeError" in said[0]
    monkeypatch.setenv(ENV, str(tmp_path / "missing.json"))
    assert not SiteNames.from_env(said.append) and "does not exist yet" in said[1]


def test_a_run_names_its_sites_from_the_registration_file(settings_for, tmp_path, monkeypatch):
    names = tmp_path / "state" / "site-nodes.json"
    names.parent.mkdir()
    names.write_text(json.dumps({"node-ids": {"101": "hospital-a", "102": "hospital-b"}, "fingerprints": {}}))
    monkeypatch.setenv(ENV, str(names))
    s = settings_for(num_server_rounds=1, max_steps=1, readiness=True)  # its lines name each site
    out = tmp_path / "run"
    summary = run_server(LocalGrid(2, s.as_run_config()), s, out, echo=False)
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))
    assert sorted(summary["final"]["per_site"]) == ["hospital-a", "hospital-b"]
    assert summary["site-names"] == {"101": "hospital-a", "102": "hospital-b"}
    assert sorted(summary["history"][0]["per-site"]) == ["hospital-a", "hospital-b"]
    log = (out / "events.log").read_text()
    round_line = json.loads(next(line for line in log.splitlines() if " round 1: {" in line).split("round 1: ", 1)[1])
    assert sorted(round_line["per-site"]) == ["hospital-a", "hospital-b"]  # the round's line names them too
    assert "site hospital-a (node 101)" in log and "site 101" not in log.replace("(node 101)", "")
