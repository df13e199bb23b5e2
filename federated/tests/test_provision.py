"""`mmdomain fed provision`: one consortium file (coordinator 127.0.0.10, hospitals 127.0.0.11-13)
-> one startup kit per participant. What each kit holds, that no private key is in a kit that is
not its owner's (the CA's key in none), the server certificate's SANs and chain, the sites' keys
against the coordinator's list, the scripts, the policy files, bad consortium files, and that a
re-run neither overwrites nor half-writes. The slow test starts the coordinator's SuperLink from
its kit and checks that the Control API is not reachable on the public address."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import http.client
import ipaddress
import json
import os
import re
import shutil
import socket
import ssl
import stat
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from mmdomain.errors import ConfigError
from mmdomain_federated import provision
from mmdomain_federated.deploy import free_port, make_site_keys
from mmdomain_federated.plugin import fed
from mmdomain_federated.policy import TEMPLATE_POLICY, load_policy
from mmdomain_federated.simulate import APP_DIR
from mmdomain_federated.site_guard import app_hash
from mmdomain_federated.split_superlink import FleetOnly

SITES = ("hospital-a", "hospital-b", "hospital-c")
CONSORTIUM = """
[coordinator]
name = "coordinator"
address = "127.0.0.10"
extra-sans = ["fl.example.org"]

[[site]]
name = "hospital-a"
address = "127.0.0.11"

[[site]]
name = "hospital-b"
address = "127.0.0.12"
data-root = "/srv/hospital-b/data"

[[site]]
name = "hospital-c"
address = "127.0.0.13"
key = "site-provided"
"""


def _consortium(tmp: Path, text: str = CONSORTIUM) -> Path:
    path = tmp / "consortium.toml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def kits(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("provision")
    return provision.write_kits(provision.read_consortium(_consortium(tmp)), tmp / "kits")


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- what each kit holds -------------------------------------------------------------------------------
def test_each_kit_holds_what_its_owner_needs(kits):
    assert sorted(p.name for p in kits.iterdir()) == sorted(["ca-private", "coordinator", *SITES])
    assert set(_files(kits / "ca-private")) == {"ca.key", "README.txt"}
    assert set(_files(kits / "coordinator")) == {
        "README.txt", "ca.crt", "server.pem", "server.key", "sites.json", "flwr-home/config.toml",
        "site-keys/hospital-a.pub", "site-keys/hospital-b.pub", "start-superlink.sh", "stop.sh", "register-sites.sh",
        "health.sh"}
    site_files = {"README.txt", "ca.crt", "connection.toml", "policy.toml", "start-site.sh", "stop-site.sh",
                  "health.sh"}
    for name in ("hospital-a", "hospital-b"):
        assert set(_files(kits / name)) == site_files | {f"{name}.key", f"{name}.key.pub"}
    assert set(_files(kits / "hospital-c")) == site_files  # site-provided: a slot, no key
    assert "ssh-keygen -t ecdsa -b 384" in (kits / "hospital-c" / "README.txt").read_text()
    assert "hospital-c" in (kits / "coordinator" / "README.txt").read_text().split("Waiting for")[1]
    for path in [kits / "ca-private" / "ca.key", kits / "coordinator" / "server.key",
                 kits / "hospital-a" / "hospital-a.key", kits / "hospital-b" / "hospital-b.key"]:
        assert _mode(path) == 0o600, path
    for script in kits.glob("*/*.sh"):
        assert _mode(script) == 0o755, script
    assert _mode(kits / "ca-private") == 0o700
    sites = json.loads((kits / "coordinator" / "sites.json").read_text())["sites"]
    assert sites["hospital-c"] == {"key": "site-provided", "public-key": None, "fingerprint": None}
    # the researchers' Flower connection: the control address, this kit's CA
    conn = (kits / "coordinator" / "flwr-home" / "config.toml").read_text()
    assert 'address = "127.0.0.1:9093"' in conn and f'"{kits / "coordinator" / "ca.crt"}"' in conn
    b = (kits / "hospital-b" / "connection.toml").read_text()
    assert 'superlink = "127.0.0.10:9092"' in b and 'data-root = "/srv/hospital-b/data"' in b


def _private_keys(kits: Path) -> dict[Path, object]:
    """Every private key provisioning made, by the file that holds it."""
    keys = {kits / "ca-private" / "ca.key": serialization.load_pem_private_key(
                (kits / "ca-private" / "ca.key").read_bytes(), None),
            kits / "coordinator" / "server.key": serialization.load_pem_private_key(
                (kits / "coordinator" / "server.key").read_bytes(), None)}
    for name in ("hospital-a", "hospital-b"):
        path = kits / name / f"{name}.key"
        keys[path] = serialization.load_ssh_private_key(path.read_bytes(), None)
    return keys


def _views(data: bytes) -> list[bytes]:
    """The file's bytes, and every base64 run in it decoded at each of the 4 alignments (a key's
    bytes inside a PEM / OpenSSH body, or embedded in any other base64 text)."""
    out = [data]
    for run in re.findall(rb"[A-Za-z0-9+/=\r\n]{40,}", data):
        run = re.sub(rb"[\r\n=]", b"", run)
        for k in range(4):
            chunk = run[k:]
            out.append(base64.b64decode(chunk[:len(chunk) // 4 * 4]))
    return out


def test_no_private_key_in_a_kit_but_its_owners(kits):
    keys = _private_keys(kits)
    assert len({k.private_numbers().private_value for k in keys.values()}) == 4  # four distinct keys
    traces = {}  # what of each key could leak: its PKCS8 DER, its private scalar (raw and hex)
    for path, key in keys.items():
        value = key.private_numbers().private_value
        # its shortest big-endian bytes: inside both the fixed-width field of PKCS8 / SEC1 and the
        # OpenSSH mpint, which drops a leading zero byte (a fixed-width scalar would miss those 1 in 256)
        scalar = value.to_bytes((value.bit_length() + 7) // 8, "big")
        der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        traces[path] = [der, scalar, scalar.hex().encode()]
        assert any(scalar in v for v in _views(path.read_bytes()))  # the check finds a key where it is
    pem_private = re.compile(rb"-----BEGIN [A-Z ]*PRIVATE KEY-----")
    owner_kit = {path: path.parent.name for path in keys}
    for kit in kits.iterdir():
        for f in (p for p in kit.rglob("*") if p.is_file()):
            data = f.read_bytes()
            if pem_private.search(data):
                assert f in keys and owner_kit[f] == kit.name, f"private key block in {f}"
            views = _views(data)
            for path, items in traces.items():
                if path != f:
                    assert not any(t in v for t in items for v in views), f"{path.name}'s private key in {f}"
    # the CA key is in no kit (ca-private is beside the kits, not in one), and no kit holds a copy of it
    ca_key = (kits / "ca-private" / "ca.key").read_bytes()
    assert all(ca_key not in f.read_bytes() for kit in kits.iterdir() if kit.name != "ca-private"
               for f in kit.rglob("*") if f.is_file())


def test_server_certificate_names_the_coordinator_and_chains_to_the_ca(kits):
    ca = x509.load_pem_x509_certificate((kits / "coordinator" / "ca.crt").read_bytes())
    cert = x509.load_pem_x509_certificate((kits / "coordinator" / "server.pem").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.IPAddress)) == {ipaddress.ip_address("127.0.0.10"),
                                                            ipaddress.ip_address("127.0.0.1")}
    assert san.get_values_for_type(x509.DNSName) == ["fl.example.org"]
    cert.verify_directly_issued_by(ca)  # raises when the CA did not sign it
    ca_key = serialization.load_pem_private_key((kits / "ca-private" / "ca.key").read_bytes(), None)
    assert ca_key.public_key() == ca.public_key()
    server_key = serialization.load_pem_private_key((kits / "coordinator" / "server.key").read_bytes(), None)
    assert server_key.public_key() == cert.public_key()
    for name in SITES:  # every site trusts that CA
        assert (kits / name / "ca.crt").read_bytes() == (kits / "coordinator" / "ca.crt").read_bytes()


def test_each_sites_key_pair_is_the_one_the_coordinator_lists_under_its_name(kits):
    sites = json.loads((kits / "coordinator" / "sites.json").read_text())["sites"]
    for name in ("hospital-a", "hospital-b"):
        private = serialization.load_ssh_private_key((kits / name / f"{name}.key").read_bytes(), None)
        assert isinstance(private, ec.EllipticCurvePrivateKey) and private.curve.name == "secp384r1"
        listed = serialization.load_ssh_public_key((kits / "coordinator" / sites[name]["public-key"]).read_bytes())
        assert listed == private.public_key()
        spki = private.public_key().public_bytes(serialization.Encoding.PEM,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo)
        assert sites[name]["fingerprint"] == "sha256:" + hashlib.sha256(spki).hexdigest()
    assert sites["hospital-a"]["fingerprint"] != sites["hospital-b"]["fingerprint"]


def test_scripts_parse_and_use_only_their_kit_and_the_environment(kits):
    env_bin = str(provision.env_bin())
    allowed = ("/usr/bin/env", "/dev/null", "/dev/tcp/", env_bin, "/srv/hospital-b/data")
    for script in kits.glob("*/*.sh"):
        r = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert r.returncode == 0, (script, r.stderr)
        text = script.read_text().replace('"$KIT"/', "$KIT/")
        for path in re.findall(r"(?<![\w$.}])/[\w.-]+(?:/[\w.-]*)*", text):
            assert path.startswith(allowed) or path.startswith("/v1/"), (script.name, path)
        others = [n for n in ("coordinator", *SITES) if n != script.parent.name]
        assert not any(f"{n}." in text or f"/{n}" in text for n in others), script
    start = (kits / "coordinator" / "start-superlink.sh").read_text()
    assert "--fleet-address 127.0.0.10:9092" in start and "--host 127.0.0.1 --port 9093" in start
    assert "--enable-supernode-auth" in start and "--health-server-address 127.0.0.1:9098" in start
    assert 'export MMDOMAIN_SITE_NAMES="$KIT/state/site-nodes.json"' in start  # the ServerApp names sites (site_names)
    assert 'mmdomain_federated.provision register "$KIT"' in (kits / "coordinator" / "register-sites.sh").read_text()
    site = (kits / "hospital-a" / "start-site.sh").read_text()
    for part in ("--superlink 127.0.0.10:9092", '--root-certificates "$KIT/ca.crt"',
                 '--auth-supernode-private-key "$KIT/hospital-a.key"', "--isolation process",
                 "mmdomain_federated.warm_exec", '--policy-file "$KIT/policy.toml"', "--parent-pid",
                 'policy-file=\\"$KIT/policy.toml\\"', 'export FLWR_HOME="$KIT/flwr-home"', "--port 9094",
                 "--health-server-address 127.0.0.11:9095"):
        assert part in site, part


def test_a_site_script_refuses_to_start_without_its_key(kits):
    r = subprocess.run(["bash", str(kits / "hospital-c" / "start-site.sh")], capture_output=True, text=True,
                       timeout=20)
    assert r.returncode == 2 and "ssh-keygen -t ecdsa -b 384" in r.stderr, r.stderr
    assert not (kits / "hospital-c" / "run").exists()  # nothing was started


def test_policy_files_load(kits, tmp_path):
    approved = (app_hash(APP_DIR),)  # the app as installed where the kits were written
    for name in SITES:
        assert load_policy(kits / name / "policy.toml") == replace(TEMPLATE_POLICY, approved_apps=approved)
    own = tmp_path / "b-policy.toml"
    own.write_text("require-dp = true\nmin-noise-multiplier = 1.5\n")
    text = CONSORTIUM.replace('data-root = "/srv/hospital-b/data"', 'policy = "b-policy.toml"')
    kits2 = provision.write_kits(provision.read_consortium(_consortium(tmp_path, text)), tmp_path / "k")
    assert load_policy(kits2 / "hospital-b" / "policy.toml").min_noise_multiplier == 1.5
    own.write_text("require-secagg = true\n")
    with pytest.raises(ConfigError, match=r"hospital-b\) policy b-policy.toml: unknown key 'require-secagg'"):
        provision.read_consortium(_consortium(tmp_path, text))


# -- bad consortium files ------------------------------------------------------------------------------
@pytest.mark.parametrize("edit, expected", [
    (("fleet-port = 9092", "flet-port = 9092"), r"\[coordinator\]: unknown key 'flet-port': did you mean 'fleet-port'"),
    (('name = "hospital-b"', 'name = "hospital-a"'), r"'hospital-a' appears twice"),
    (('name = "hospital-b"', 'name = "Coordinator"'), r"'Coordinator' is the coordinator's name"),
    (("health-port = 9098", "health-port = 9093"),
     r"port collision: \[coordinator\] health-port and \[coordinator\] control-port both bind 127.0.0.1:9093"),
    (('address = "127.0.0.12"', 'address = "127.0.0.12"\nlocal-address = "127.0.0.11"'),
     r"port collision: site hospital-b runtime-port and site hospital-a runtime-port both bind 127.0.0.11:9094"),
    (('address = "127.0.0.10"', 'address = "127.0.0.300"'), r"\[coordinator\] address: must be an IP address"),
    (('address = "127.0.0.10"', 'address = "0.0.0.0"'), r"\[coordinator\] address: 0.0.0.0 means every address"),
    (('control-address = "127.0.0.1"', 'control-address = "127.0.0.10"'),
     r"control-address 127.0.0.10 is the public address"),
    (("fleet-port = 9092", 'fleet-port = "9092"'), r"fleet-port: must be a port.*\(write it without quotes\)"),
    (("fleet-port = 9092", "fleet-port = 70000"), r"fleet-port: must be a port, a whole number 1-65535, got int"),
    (("fleet-port = 9092", "serverappio-port = 9091"), r"'serverappio-port': Flower 1.42 serves the ServerAppIo"),
    (('key = "site-provided"', 'key = "make-one"'), r"hospital-c\) key: must be \"generate\" or \"site-provided\""),
    (('key = "site-provided"', 'key = "site-provided"\nlocal-address = "10.0.0.5"'),
     r"local-address 10.0.0.5: must be a loopback address"),
    (('data-root = "/srv/hospital-b/data"', 'data-root = "/srv/$HOME"'), r"hospital-b\) data-root: must be"),
])
def test_a_bad_consortium_file_names_the_problem(tmp_path, edit, expected):
    base = CONSORTIUM.replace('extra-sans = ["fl.example.org"]',
                              'extra-sans = ["fl.example.org"]\nfleet-port = 9092\ncontrol-address = "127.0.0.1"\n'
                              'health-port = 9098')
    assert edit[0] in base, edit
    with pytest.raises(ConfigError, match=expected):
        provision.read_consortium(_consortium(tmp_path, base.replace(edit[0], edit[1], 1)))


def test_missing_and_unreadable_files_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"does not exist .*--template"):
        provision.read_consortium(tmp_path / "none.toml")
    with pytest.raises(ConfigError, match="is not TOML"):
        provision.read_consortium(_consortium(tmp_path, "[coordinator\n"))
    with pytest.raises(ConfigError, match=r"\[coordinator\] address: missing.*no \[\[site\]\] table"):
        provision.read_consortium(_consortium(tmp_path, "[coordinator]\n"))
    with pytest.raises(ConfigError, match=r"\[site\] is a single table: write each site as \[\[site\]\]"):
        provision.read_consortium(_consortium(tmp_path, '[coordinator]\naddress = "127.0.0.10"\n[site]\nname = "a"\n'))


# -- re-runs, site-provided keys, the template, the CLI --------------------------------------------------------
def test_rerun_refuses_without_force_and_leaves_the_old_kits(tmp_path):
    consortium = _consortium(tmp_path)
    runner = CliRunner()
    r = runner.invoke(fed, ["provision", str(consortium), "-o", str(tmp_path / "kits")])
    assert r.exit_code == 0, r.output
    before = _files(tmp_path / "kits")
    r = runner.invoke(fed, ["provision", str(consortium), "-o", str(tmp_path / "kits")])
    assert r.exit_code == 1 and "exists; use --force" in r.output
    assert _files(tmp_path / "kits") == before
    r = runner.invoke(fed, ["provision", str(consortium), "-o", str(tmp_path / "kits"), "--force"])
    assert r.exit_code == 0, r.output
    after = _files(tmp_path / "kits")
    assert after.keys() == before.keys() and after["coordinator/ca.crt"] != before["coordinator/ca.crt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["consortium.toml", "kits"]  # no temporary folders left
    r = runner.invoke(fed, ["provision", str(tmp_path / "nope.toml"), "-o", str(tmp_path / "k2")])
    assert r.exit_code == 1 and "does not exist" in r.output and not (tmp_path / "k2").exists()


def test_a_failed_write_leaves_no_kit(tmp_path):
    _, pub = make_site_keys(tmp_path / "site-c", "hospital-c")
    text = CONSORTIUM.replace('key = "site-provided"', 'key = "site-provided"\npublic-key = "site-c/hospital-c.key.pub"')
    consortium = provision.read_consortium(_consortium(tmp_path, text))
    pub.unlink()  # gone between reading the file and writing the kits
    with pytest.raises(FileNotFoundError):
        provision.write_kits(consortium, tmp_path / "kits")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["consortium.toml", "site-c"]


def test_site_provided_keys_in_the_file_or_added_later(kits, tmp_path):
    # the site makes its own pair; only the public half comes to the coordinator
    priv, pub = make_site_keys(tmp_path / "at-hospital-c", "hospital-c")
    text = CONSORTIUM.replace('key = "site-provided"',
                              'key = "site-provided"\npublic-key = "at-hospital-c/hospital-c.key.pub"')
    with_key = provision.write_kits(provision.read_consortium(_consortium(tmp_path, text)), tmp_path / "k1")
    later = shutil.copytree(kits, tmp_path / "k2")
    r = CliRunner().invoke(fed, ["provision", "--add-key", "hospital-c", str(pub), "-o", str(later)])
    assert r.exit_code == 0, r.output
    private = serialization.load_ssh_private_key(priv.read_bytes(), None)
    for k in (with_key, later):
        entry = json.loads((k / "coordinator" / "sites.json").read_text())["sites"]["hospital-c"]
        listed = serialization.load_ssh_public_key((k / "coordinator" / entry["public-key"]).read_bytes())
        assert listed == private.public_key() and entry["fingerprint"] == provision.fingerprint(pub.read_bytes())
        assert not (k / "hospital-c" / "hospital-c.key").exists()  # the private half stayed at the site
    with pytest.raises(ConfigError, match="site hospital-a's already"):
        provision.add_site_key(later, "hospital-c", later / "coordinator" / "site-keys" / "hospital-a.pub")
    with pytest.raises(ConfigError, match=r"no site 'hospital-z'"):
        provision.add_site_key(later, "hospital-z", pub)
    ed = tmp_path / "ed.pub"
    ed.write_bytes(ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH))
    with pytest.raises(ConfigError, match="NIST curve"):
        provision.add_site_key(later, "hospital-c", ed)
    dup = text.replace('name = "hospital-b"\naddress = "127.0.0.12"',
                       'name = "hospital-b"\naddress = "127.0.0.12"\nkey = "site-provided"\n'
                       'public-key = "at-hospital-c/hospital-c.key.pub"')
    with pytest.raises(ConfigError, match="public key is site hospital-b's"):
        provision.read_consortium(_consortium(tmp_path, dup))


def test_the_template_is_a_valid_consortium_with_every_key_documented(tmp_path):
    r = CliRunner().invoke(fed, ["provision", "--template", str(tmp_path / "c.toml")])
    assert r.exit_code == 0, r.output
    text = (tmp_path / "c.toml").read_text()
    for key in [*provision.COORDINATOR_KEYS, *provision.SITE_KEYS]:
        assert f"# {key}" in text, key
    c = provision.read_consortium(tmp_path / "c.toml")
    assert c.coordinator.address == "127.0.0.10" and c.coordinator.control_address == "127.0.0.1"
    assert [(s.name, s.address, s.local_address) for s in c.sites] == [
        (f"hospital-{x}", f"127.0.0.1{i}", f"127.0.0.1{i}") for i, x in ((1, "a"), (2, "b"), (3, "c"))]
    assert CliRunner().invoke(fed, ["provision", "--template", str(tmp_path / "c.toml")]).exit_code == 1
    help_text = CliRunner().invoke(fed, ["provision", "--help"]).output
    assert "one startup kit per participant" in help_text and "--add-key" in help_text


def test_deploy_md_example_is_a_valid_consortium_and_its_commands_exist(tmp_path):
    doc = (Path(__file__).resolve().parents[1] / "DEPLOY.md").read_text()
    example = re.search(r"```toml\n(.*?)```", doc, re.S).group(1)
    c = provision.read_consortium(_consortium(tmp_path, example))
    assert [s.name for s in c.sites] == list(SITES) and c.sites[2].key == "site-provided"
    options = {o for p in next(cmd for name, cmd in fed.commands.items() if name == "provision").params
               for o in p.opts}
    for used in re.findall(r"mmdomain fed provision[^\n`]*", doc):
        assert set(re.findall(r"(?<!\S)(-o|--[a-z-]+)", used)) <= options, used
    for key in re.findall(r"^([a-z-]+) = ", example, re.M):
        assert key in provision.COORDINATOR_KEYS or key in provision.SITE_KEYS, key


def test_the_public_listener_passes_only_the_fleet_api():
    seen = []

    async def app(scope, receive, send):
        seen.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    def status(path: str) -> int:
        sent = []

        async def send(message):
            sent.append(message)

        async def receive():
            return {"type": "http.request", "body": b""}

        asyncio.run(FleetOnly(app)({"type": "http", "path": path}, receive, send))
        return sent[0]["status"]

    assert status("/v1/fleet/pull-messages") == 200
    for path in ("/v1/control/start-run", "/v1/control/register-node", "/v1/runtime/pull-messages", "/health",
                 "/v1/fleet/../control/start-run", "/v1/fleet//x", "/docs"):
        assert status(path) == 404, path
    assert seen == ["/v1/fleet/pull-messages"]


# -- the coordinator's SuperLink, started from its kit -------------------------------------------------------
def _connects(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


@pytest.mark.slow
def test_superlink_from_the_kit_keeps_the_control_api_off_the_public_address(tmp_path):
    try:
        with socket.socket() as s:
            s.bind(("127.0.0.10", 0))
    except OSError:
        pytest.skip("127.0.0.10 is not a loopback address here (Linux has all of 127/8)")
    fleet, control, health = free_port(), free_port(), free_port()
    text = (f'[coordinator]\naddress = "127.0.0.10"\nfleet-port = {fleet}\ncontrol-port = {control}\n'
            f'health-port = {health}\n\n[[site]]\nname = "hospital-a"\naddress = "127.0.0.11"\n')
    kits = provision.write_kits(provision.read_consortium(_consortium(tmp_path, text)), tmp_path / "kits")
    kit = kits / "coordinator"
    t0 = time.time()
    try:
        r = subprocess.run(["bash", str(kit / "start-superlink.sh")], capture_output=True, text=True, timeout=90)
        assert r.returncode == 0, r.stdout + r.stderr
        started = time.time() - t0
        pid = int((kit / "run" / "superlink.pid").read_text())
        assert _connects("127.0.0.10", fleet) and _connects("127.0.0.1", control)
        assert not _connects("127.0.0.10", control)  # the Control API is not on the public address
        # TLS with the kit's CA and the certificate's SAN for the public address; the Control API's paths answer 404
        tls = ssl.create_default_context(cafile=str(kit / "ca.crt"))
        # (415: Flower itself answered, refusing the empty request's content type)
        for host, port, path, expected in (("127.0.0.10", fleet, "/v1/control/list-nodes", 404),
                                           ("127.0.0.10", fleet, "/v1/fleet/get-run", 415),
                                           ("127.0.0.1", control, "/v1/control/list-nodes", 415)):
            conn = http.client.HTTPSConnection(host, port, context=tls, timeout=10)
            conn.request("POST", path, body=b"")
            assert conn.getresponse().status == expected, (host, port, path)
            conn.close()
        checked = time.time() - t0
        # (register-sites.sh, `flwr supernode register` under each site's name, is left out: one flwr CLI
        # start costs 3-10 s here; DEPLOY.md's consortium was registered, started and trained by hand)
    finally:
        r = subprocess.run(["bash", str(kit / "stop.sh")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "superlink stopped" in r.stdout, r.stdout + r.stderr
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not _connects("127.0.0.10", fleet) and not _connects("127.0.0.1", control)
    left = subprocess.run(["ps", "-ww", "-eo", "pid=,args="], capture_output=True, text=True).stdout
    assert str(kit) not in left, left  # its SuperExec (a session of its own) is gone too
    print(f"SuperLink up in {started:.1f} s, checked by {checked:.1f} s, stopped by {time.time() - t0:.1f} s")
