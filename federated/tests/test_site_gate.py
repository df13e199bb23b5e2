"""A site's policy is enforced by code the site installed, tested as an attacker would.

The attacker is the coordinator (or whoever can start runs): it ships a modified copy of the app
whose own policy check always passes (``client_app.violations`` patched to find nothing) and whose
ClientApp lives in a module of its own (``evil_client``), so a site's preloaded copy of the app does
not shadow it. Three real SuperNodes (TLS, SuperNode authentication, one SuperLink):

- ``a``: warm SuperExec, policy ``require-dp = true``;
- ``b``: warm SuperExec, policy approving only the stock app's FAB hash (``mmdomain fed app-hash``);
- ``c``: the control: a stock SuperNode (``--isolation subprocess``, Flower's own SuperExec, no
  gate) with the same ``require-dp`` policy in its node config, which is what the finding in the
  issue was: there the modified app trains a job without DP.

The modified app, a job without DP: ``a`` and ``b`` refuse it before any of its code is imported
(its import writes a marker naming the site: only ``c`` writes one), each site's log names the
reason, and the coordinator's summary lists both refusals, while ``c`` trains it. (That an approved
app runs where its hash is listed, and that the stock app's job without DP is refused by the gate,
``tests/test_consortium.py`` shows from the provisioned kits, which approve the stock app.)"""

import json
import shutil

import pytest

from mmdomain.plugins import get_registry
from mmdomain_federated import task
from mmdomain_federated.deploy import LocalDeployment, make_site_keys
from mmdomain_federated.simulate import APP_DIR
from mmdomain_federated.site_guard import app_hash

EVIL = '''"""A modified ClientApp: the site's policy check always passes; importing it leaves a marker."""
import os
from pathlib import Path

Path({marks!r}, "imported-by-" + os.environ.get("GATE_TEST_SITE", "unknown")).touch()

import mmdomain_federated.client_app as stock

stock.violations = lambda *args, **kwargs: []  # "every job is acceptable"
app = stock.app
'''


def _modified_app(tmp_path):
    app = tmp_path / "evil-app"
    shutil.copytree(APP_DIR, app, ignore=shutil.ignore_patterns("tests", "__pycache__", "*.md"))
    marks = tmp_path / "marks"
    marks.mkdir()
    (app / "evil_client.py").write_text(EVIL.format(marks=str(marks)))
    pyproject = app / "pyproject.toml"
    text = pyproject.read_text()
    assert 'clientapp = "mmdomain_federated.client_app:app"' in text
    assert 'fab-include = ["mmdomain_federated/*.py"]' in text
    pyproject.write_text(text.replace('clientapp = "mmdomain_federated.client_app:app"', 'clientapp = "evil_client:app"')
                         .replace('fab-include = ["mmdomain_federated/*.py"]',
                                  'fab-include = ["mmdomain_federated/*.py", "evil_client.py"]'))
    return app, marks


def _summary(out):
    return json.loads((out / "summary.json").read_text())


@pytest.mark.slow
def test_a_modified_app_is_refused_by_the_sites_own_code(tmp_path):
    stock_hash = app_hash(APP_DIR)
    evil_app, marks = _modified_app(tmp_path)
    assert app_hash(evil_app) != stock_hash
    policies = {"a": "require-dp = true\n", "b": f'approved-apps = ["{stock_hash}"]\n', "c": "require-dp = true\n"}
    sites = task.site_folders(task.synthetic_root(get_registry(), "toy", 3, 0, True))[:3]
    dep = LocalDeployment(tmp_path)
    try:
        dep.start_superlink()
        for (name, policy), site in zip(policies.items(), sites):
            (tmp_path / f"{name}-policy.toml").write_text(policy)
            priv, pub = make_site_keys(tmp_path / "keys", name)
            dep.register(pub)
            dep.start_supernode(name, priv, {"data-root": str(site), "policy-file": str(tmp_path / f"{name}-policy.toml")},
                                warm=name != "c", env={"GATE_TEST_SITE": name})
        job = {"num-server-rounds": 1, "max-steps": 2, "readiness": False, "min-sites": 1, "expected-sites": 3,
               "round-timeout": 90}  # no DP

        second = dep.run_app({**job, "out-dir": str(tmp_path / "run-evil")}, timeout=300, app=evil_app)
        assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-2000:]
        refused = sorted(_summary(tmp_path / "run-evil")["refused"].values())
        assert len(refused) == 2, refused
        assert any(f"app sha256 {app_hash(evil_app)} is not one of the site's approved-apps" in r for r in refused)
        assert any("requires differential privacy" in r for r in refused)
        # the gate ran before the modified app was imported at a and b; without it (c) the app ran and trained
        assert sorted(p.name for p in marks.iterdir()) == ["imported-by-c"]
        assert _summary(tmp_path / "run-evil")["history"][0]["sites"] == 1

        gate_a, gate_b = dep.procs.log("a-exec"), dep.procs.log("b-exec")
        assert gate_a.count("before running its app") == 1, gate_a[-3000:]
        assert "requires differential privacy" in gate_a
        assert gate_b.count("before running its app") == 1 and "not one of the site's approved-apps" in gate_b, \
            gate_b[-3000:]
    finally:
        dep.close()
    for proc in dep.procs.procs.values():
        assert proc.poll() is not None  # every process started here is gone


# -- the gate's rule, without a deployment (< 2 s) ---------------------------------------------------
def test_the_gate_judges_the_app_first_then_the_job(tmp_path):
    from mmdomain_federated.policy import load_policy
    from mmdomain_federated.site_guard import judge

    good, other = "a" * 64, "b" * 64
    policy = tmp_path / "policy.toml"
    policy.write_text(f'require-dp = true\napproved-apps = ["sha256:{good.upper()}"]\n')
    assert load_policy(policy).approved_apps == (good,)  # the "sha256:" prefix and case are normalised
    no_dp, dp = {"dataset": "toy"}, {"dataset": "toy", "local-dp": True, "local-noise-multiplier": 1.0}
    assert not judge(str(policy), good, dp).refused
    assert "requires differential privacy" in judge(str(policy), good, no_dp).reason
    unknown = judge(str(policy), other, dp)
    assert unknown.refused and f"app sha256 {other} is not one of the site's approved-apps" in unknown.reason
    assert "the job's run config is invalid" in judge(str(policy), good, {"dataset": "toy", "local-dp": "perhaps"}).reason
    policy.write_text("requre-dp = true\n")  # a broken policy file refuses every job, naming no path
    broken = judge(str(policy), good, dp)
    assert broken.refused and "policy file is invalid" in broken.reason and str(tmp_path) not in broken.reason
    assert not judge(None, other, no_dp).refused  # no policy: nothing to enforce


def test_the_refusal_is_a_reply_the_coordinator_reads(monkeypatch):
    from flwr.app import ConfigRecord, Message, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from mmdomain_federated.secure import SECAGG_CONFIGS
    from mmdomain_federated.site_guard import Refusing, Verdict

    for name, value in (("_run_id", 1), ("_node_id", 1), ("_task_id", 1)):  # as in a ClientApp process
        monkeypatch.setattr(TaskIdentity, name, value)
    verdict = Verdict(("the site requires X",))
    plain = Message(RecordDict({"config": ConfigRecord({"server-round": 1})}), dst_node_id=1, message_type="train")
    reply = Refusing(verdict)(plain, None)
    assert reply.content["site"]["refused"] == "site policy refuses this job: the site requires X"
    secagg = Message(RecordDict({SECAGG_CONFIGS: ConfigRecord({"stage": "setup"})}), dst_node_id=1,
                     message_type="train")
    assert Refusing(verdict)(secagg, None).error.reason == verdict.reason  # SecAgg+ stages: an error reply


def test_the_gate_refuses_to_start_on_a_flower_without_its_hooks(monkeypatch):
    import flwr.supernode.runtime.run_clientapp as rc

    from mmdomain_federated import site_guard

    assert all(hasattr(rc, name) for name in site_guard.HOOKED)  # this Flower: every hook is there
    monkeypatch.delattr(rc, "install_from_fab")
    with pytest.raises(RuntimeError, match="refusing to run jobs without the site's check"):
        site_guard.install(None)
