"""The whole deployment story (issue #15, item 7), on distinct loopback addresses, from the kits.

A coordinator (127.0.0.10) and three hospitals (127.0.0.11-13) are provisioned from one consortium
file and started with their kits' own scripts, as DEPLOY.md tells their operators: at most three
commands each (``start-superlink.sh`` + ``register-sites.sh`` + ``flwr run``; ``start-site.sh``).
Then, as attackers and as operators would:

- an outsider: a SuperNode whose key was never registered and one connecting in plain text get no
  work; from a hospital's address (source address 127.0.0.11) the Control API is not reachable
  (its port is closed on the public address, its paths answer 404 on the Fleet listener, and
  ``flwr ls`` / ``flwr supernode register`` through the public address fail);
- a job the policy refuses (no DP, the kits' policy requires DP-SGD at the site) and a modified app
  (not the provisioned app hash) are refused by every site's own code, with the reason in the
  site's log and in the coordinator's summary, by site name;
- a two-round run in which hospital-c is stopped after round 1 and the coordinator then crashes
  (SIGKILL): the restarted coordinator resumes the run from its checkpoint and finishes round 2
  with the two sites left;
- ``stop.sh`` stops the SuperLink with a ``flwr run --stream`` client connected, by SIGTERM (no
  SIGKILL fallback), and every process is gone.
The summary names sites by their consortium names and parses with a strict JSON parser; ``mmdomain
fed results`` shows the run. One deployment for all of it (each start costs seconds here)."""

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mmdomain.plugins import get_registry
from mmdomain_federated import task
from mmdomain_federated.deploy import free_port, make_site_keys, wait_for_text
from mmdomain_federated.simulate import APP_DIR, FLOWER_ENV, run_config_arg

SITES = {"hospital-a": "127.0.0.11", "hospital-b": "127.0.0.12", "hospital-c": "127.0.0.13"}
JOB = {"num-server-rounds": 2, "max-steps": 2, "readiness": False, "min-sites": 2, "expected-sites": 3,
       "round-timeout": 60, "local-dp": True, "local-noise-multiplier": 1.0, "local-clip-norm": 1.0}


def _strict(text):
    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")
    return json.loads(text, parse_constant=refuse)


def _bash(script, timeout=120, **kw):
    return subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=timeout, **kw)


def _connects(host, port, source=None):
    try:
        with socket.create_connection((host, port), timeout=1, source_address=(source, 0) if source else None):
            return True
    except OSError:
        return False


def _tree(pid):
    """``pid`` and its descendants, whatever their session (the SuperLink's ServerApps have their own)."""
    out = [pid]
    children = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout.split()
    for child in children:
        out += _tree(int(child))
    return out


def _consortium(tmp_path, roots):
    fleet, control, health = free_port(), free_port(), free_port()
    lines = [f'[coordinator]\naddress = "127.0.0.10"\nfleet-port = {fleet}\ncontrol-port = {control}\n'
             f'health-port = {health}\n']
    for (name, address), root in zip(SITES.items(), roots):
        lines.append(f'[[site]]\nname = "{name}"\naddress = "{address}"\ndata-root = "{root}"\n'
                     f'runtime-port = {free_port()}\nhealth-port = {free_port()}\n')
    path = tmp_path / "consortium.toml"
    path.write_text("\n".join(lines))
    return path, fleet, control


@pytest.mark.slow
def test_a_consortium_from_its_kits_on_distinct_addresses(tmp_path):
    try:
        for address in ("127.0.0.10", *SITES.values()):
            with socket.socket() as s:
                s.bind((address, 0))
    except OSError:
        pytest.skip("127.0.0.10-13 are not loopback addresses here (Linux has all of 127/8)")
    roots = task.site_folders(task.synthetic_root(get_registry(), "toy", 3, 0, True))[:3]
    consortium, fleet, control = _consortium(tmp_path, roots)
    kits = tmp_path / "kits"
    r = subprocess.run([str(Path(sys.executable).with_name("mmdomain")), "fed", "provision", str(consortium),
                        "-o", str(kits)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    coord = kits / "coordinator"
    env = {**os.environ, **FLOWER_ENV, "FLWR_HOME": str(coord / "flwr-home"),
           "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")}
    flwr = str(Path(sys.executable).with_name("flwr"))
    strangers = []

    def researcher(*args, timeout=300):  # the coordinator's researcher: the kit's Flower connection
        return subprocess.run([flwr, *args], capture_output=True, text=True, timeout=timeout, env=env)

    def run(config, app=APP_DIR, timeout=300):
        return researcher("run", str(app), "coordinator", "--stream", "--run-config", run_config_arg(config),
                          timeout=timeout)

    def summary(name):
        return _strict((coord / "results" / name / "summary.json").read_text())

    try:
        # -- start: at most three commands per participant -------------------------------------------------
        r = _bash(coord / "start-superlink.sh")
        assert r.returncode == 0, r.stdout + r.stderr
        r = _bash(coord / "register-sites.sh")
        assert r.returncode == 0 and all(f"{name}: node" in r.stdout for name in SITES), r.stdout + r.stderr
        for name in SITES:
            r = _bash(kits / name / "start-site.sh")
            assert r.returncode == 0, (name, r.stdout + r.stderr)
        for kit in (coord, *(kits / n for n in SITES)):
            deadline = time.time() + 60
            while (h := _bash(kit / "health.sh", timeout=30)).returncode != 0 and time.time() < deadline:
                time.sleep(1)
            assert h.returncode == 0 and "SERVING" in h.stdout, (kit.name, h.stdout + h.stderr)

        # -- outsiders -----------------------------------------------------------------------------------
        assert _connects("127.0.0.10", fleet, source="127.0.0.11")
        assert not _connects("127.0.0.10", control, source="127.0.0.11")  # Control API: not on the public address
        tls = ssl.create_default_context(cafile=str(coord / "ca.crt"))
        with socket.create_connection(("127.0.0.10", fleet), timeout=5, source_address=("127.0.0.11", 0)) as raw:
            with tls.wrap_socket(raw, server_hostname="127.0.0.10") as conn:
                conn.sendall(b"POST /v1/control/list-runs HTTP/1.1\r\nHost: 127.0.0.10\r\nContent-Length: 0\r\n"
                             b"Connection: close\r\n\r\n")
                assert conn.recv(64).startswith(b"HTTP/1.1 404"), "the Fleet listener passed a Control API path"
        outside = tmp_path / "outsider-home"
        outside.mkdir()
        (outside / "config.toml").write_text(f'[superlink]\ndefault = "public"\n\n[superlink.public]\naddress = '
                                             f'"127.0.0.10:{fleet}"\nroot-certificates = "{coord / "ca.crt"}"\n')
        stranger_priv, stranger_pub = make_site_keys(tmp_path / "stranger", "stranger")
        for args in (("ls", "public"), ("supernode", "register", str(stranger_pub), "public")):
            r = subprocess.run([flwr, *args], capture_output=True, text=True, timeout=120,
                               env={**env, "FLWR_HOME": str(outside)})
            assert r.returncode != 0, (args, r.stdout[-800:])
        for label, extra in (("unregistered", ["--root-certificates", str(coord / "ca.crt"),
                                               "--auth-supernode-private-key", str(stranger_priv)]),
                             ("plaintext", ["--insecure"])):
            log = (tmp_path / f"{label}.log").open("w")
            strangers.append((label, subprocess.Popen(
                [str(Path(sys.executable).with_name("flower-supernode")), "--superlink", f"127.0.0.10:{fleet}",
                 *extra, "--max-retries", "50", "--max-wait-time", "30", "--port", str(free_port()),
                 "--node-config", f'data-root="{roots[0]}"'], stdout=log, stderr=subprocess.STDOUT, env=env,
                start_new_session=True)))

        # -- refusals by the sites' own code ---------------------------------------------------------------
        r = run({**JOB, "local-dp": False, "out-dir": "no-dp"})
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        refused = summary("no-dp")["refused"]
        assert sorted(refused) == sorted(SITES), refused  # by consortium name
        assert all("requires local DP-SGD" in why for why in refused.values()), refused
        modified = tmp_path / "modified-app"
        shutil.copytree(APP_DIR, modified, ignore=shutil.ignore_patterns("tests", "__pycache__"))
        (modified / "mmdomain_federated" / "policy.py").write_text(
            (APP_DIR / "mmdomain_federated" / "policy.py").read_text() + "\n\ndef violations(*a, **k):\n    return []\n")
        r = run({**JOB, "out-dir": "modified"}, app=modified)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        refused = summary("modified")["refused"]
        assert sorted(refused) == sorted(SITES) and all("approved-apps" in why for why in refused.values()), refused
        for name in SITES:
            log = (kits / name / "logs" / "warm-exec.log").read_text()
            assert "requires local DP-SGD" in log and "not one of the site's approved-apps" in log, log[-2000:]

        # -- two rounds; a site stops; the coordinator crashes and resumes ---------------------------------------
        results = coord / "results" / "story"
        job = {**JOB, "out-dir": "story"}
        first = subprocess.Popen([flwr, "run", str(APP_DIR), "coordinator", "--stream", "--run-config",
                                  run_config_arg(job)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                                 text=True, start_new_session=True)
        assert wait_for_text(results / "events.log", "round 1: {", 240, lambda: first.poll() is None), \
            first.poll() is None or first.stdout.read()[-3000:]
        r = _bash(kits / "hospital-c" / "stop-site.sh", timeout=60)
        assert r.returncode == 0 and "supernode stopped" in r.stdout and "killed" not in r.stdout, r.stdout
        pid = int((coord / "run" / "superlink.pid").read_text())
        for proc in _tree(pid):  # the coordinator's machine goes down: every process at once, no clean stop
            os.kill(proc, signal.SIGKILL)
        first.wait(timeout=120)
        assert not (results / "summary.json").exists()  # the run did not finish
        r = _bash(coord / "start-superlink.sh")
        assert r.returncode == 0, r.stdout + r.stderr
        second = run({**job, "expected-sites": 2})  # the researcher knows hospital-c is down
        assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-2000:]
        done = summary("story")
        assert done["stopped"] == "completed" and done["rounds"] == 2, done["stopped"]
        assert [h["round"] for h in done["history"]] == [1, 2]
        assert done["history"][0]["sites"] == 3 and done["history"][1]["sites"] == 2  # c stopped after round 1
        assert sorted(done["final"]["per_site"]) == ["hospital-a", "hospital-b"]  # names, not node ids
        assert done["site-names"] and set(done["site-names"].values()) == set(SITES)
        events = (results / "events.log").read_text()
        assert "resuming after round 1" in events, events[-3000:]
        round_2 = json.loads(next(line for line in events.splitlines() if " round 2: {" in line).split(": ", 1)[1])
        assert sorted(round_2["per-site"]) == ["hospital-a", "hospital-b"]  # the log names sites too
        assert sorted(done["history"][0]["per-site"]) == sorted(SITES)
        shown = subprocess.run([str(Path(sys.executable).with_name("mmdomain")), "fed", "results", "story", "--dir",
                                str(coord / "results")], capture_output=True, text=True, timeout=60)
        assert shown.returncode == 0 and "completed, 2 round(s)" in shown.stdout and "site hospital-a" in shown.stdout

        # -- outsiders got nothing; a clean stop with a streaming client connected ------------------------------
        stream = subprocess.Popen([flwr, "run", str(APP_DIR), "coordinator", "--stream", "--run-config",
                                   run_config_arg({**JOB, "num-server-rounds": 50, "out-dir": "long"})],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
        assert wait_for_text(coord / "results" / "long" / "events.log", "sites connected", 120, lambda: stream.poll() is None)
        t0 = time.time()
        r = _bash(coord / "stop.sh", timeout=60)
        took = time.time() - t0
        assert r.returncode == 0 and "superlink stopped" in r.stdout, r.stdout + r.stderr  # not "killed"
        assert took < 10, f"stop.sh took {took:.1f} s with a streaming client"
        print(f"stop.sh with a flwr run --stream client connected: {took:.1f} s")
        stream.wait(timeout=60)
        for name in ("hospital-a", "hospital-b"):
            r = _bash(kits / name / "stop-site.sh", timeout=60)
            assert r.returncode == 0 and "killed" not in r.stdout, r.stdout
    finally:
        for label, proc in strangers:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        for kit, script in ((coord, "stop.sh"), *((kits / n, "stop-site.sh") for n in SITES)):
            if (kit / script).exists():
                _bash(kit / script, timeout=60)
    # the outsiders never got in, each told why; the coordinator's log names the unknown key (a plain-text
    # attempt fails in the TLS handshake, which Flower's listener does not log)
    unregistered = (tmp_path / "unregistered.log").read_text(errors="replace")
    assert "Failed to activate SuperNode" in unregistered, unregistered[-1500:]
    assert "No SuperNode found with the given public key" in (coord / "logs" / "superlink.log").read_text()
    plaintext = (tmp_path / "plaintext.log").read_text(errors="replace")
    assert "Connection attempt failed" in plaintext and "activate" not in plaintext.lower(), plaintext[-1500:]
    left = subprocess.run(["ps", "-ww", "-eo", "pid=,args="], capture_output=True, text=True).stdout
    assert str(kits) not in left, left  # every process of every kit is gone
    assert f"127.0.0.1:{control} " not in left, left  # and every ServerApp the SuperLink started (own sessions)
