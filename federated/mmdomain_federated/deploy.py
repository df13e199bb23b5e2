"""A real deployment on loopback: SuperLink + one SuperNode per site, TLS + SuperNode auth.

``deploy_local`` generates a CA and a server certificate (SAN 127.0.0.1, localhost), one ECDSA
P-384 key pair per site (OpenSSH format, like ``ssh-keygen -t ecdsa -b 384``), starts the
SuperLink with ``--enable-supernode-auth``, registers each site's public key
(``flwr supernode register``), starts the SuperNodes (each with its own data folder and policy
via ``--node-config``), runs the app with ``flwr run``, collects ``summary.json``, and stops
every process it started by PID (also on error).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .simulate import APP_DIR, FLOWER_ENV, run_config_arg


# -- credentials ----------------------------------------------------------------------------------
def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def make_certificates(folder: Path, sans: tuple[str, ...] | list[str] = ("127.0.0.1", "localhost"), *,
                      days: int = 30, ca_key: Path | None = None) -> dict[str, Path]:
    """A CA and a SuperLink certificate it signs for ``sans`` (IP addresses and DNS names; the
    first is the subject's common name). Writes ca.crt, server.pem, server.key (0600) to
    ``folder``; the CA's private key is written only to ``ca_key`` when given (0600; kept apart
    from the certificates), else discarded. Returns paths ca, cert, key (and ca_key)."""
    if not sans:
        raise ValueError("a server certificate needs at least one subject alternative name")
    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)
    start, end = now - dt.timedelta(minutes=5), now + dt.timedelta(days=days)
    ca_private = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name("mmdomain-fed CA")).issuer_name(_name("mmdomain-fed CA"))
          .public_key(ca_private.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(start).not_valid_after(end)
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_private, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(_name(sans[0])).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName([_san(n) for n in dict.fromkeys(sans)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca_private, hashes.SHA256()))
    paths = {"ca": folder / "ca.crt", "cert": folder / "server.pem", "key": folder / "server.key"}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_private(paths["key"], key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption()))
    if ca_key is not None:
        ca_key.parent.mkdir(parents=True, exist_ok=True)
        _write_private(ca_key, ca_private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                        serialization.NoEncryption()))
        paths["ca_key"] = ca_key
    return paths


def _write_private(path: Path, data: bytes) -> None:
    """A private key file, readable by its owner only from the moment it exists."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # a file that existed keeps its mode through os.open
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def make_site_keys(folder: Path, name: str) -> tuple[Path, Path]:
    """ECDSA P-384 key pair in OpenSSH format: (private, public)."""
    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    priv, pub = folder / f"{name}.key", folder / f"{name}.key.pub"
    _write_private(priv, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                           serialization.NoEncryption()))
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                  serialization.PublicFormat.OpenSSH) + b" " + name.encode() + b"\n")
    return priv, pub


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- processes --------------------------------------------------------------------------------------
class Processes:
    """Every process started here, stopped by PID (its own process group) on close."""

    def __init__(self, logs: Path, env: dict[str, str]):
        self.logs, self.env, self.procs = logs, env, {}
        logs.mkdir(parents=True, exist_ok=True)

    def start(self, name: str, cmd: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        """``env``: variables added to this one process's environment."""
        log = (self.logs / f"{name}.log").open("w")
        proc = subprocess.Popen(cmd, env={**self.env, **(env or {})}, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=str(self.logs))
        self.procs[name] = proc
        return proc

    def stop(self, name: str, sig: int = signal.SIGTERM) -> None:
        proc = self.procs.get(name)
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def close(self) -> None:
        for name in reversed(list(self.procs)):
            self.stop(name)

    def log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""


def wait_for_text(path: Path, text: str, timeout: float, alive: Callable[[], bool] = lambda: True) -> bool:
    """Until ``path`` (a run's ``events.log``, a service's log) holds ``text``; False after
    ``timeout`` seconds or once ``alive()`` is false (the process writing it has ended)."""
    deadline = time.time() + timeout
    while time.time() < deadline and alive():
        if path.exists() and text in path.read_text(errors="replace"):
            return True
        time.sleep(0.5)
    return False


def _bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


class LocalDeployment:
    """SuperLink + SuperNodes on 127.0.0.1 with TLS and SuperNode authentication."""

    def __init__(self, work: Path):
        self.work = work
        self.home = work / "flwr-home"
        self.env = {**os.environ, **FLOWER_ENV, "FLWR_HOME": str(self.home),
                    "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")}
        self.procs = Processes(work / "logs", self.env)
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.certs = make_certificates(work / "certs")

    def start_superlink(self, secure: bool = True) -> None:
        """``secure=False``: Flower's stock insecure settings (no TLS, no SuperNode auth), for comparison."""
        c = self.certs
        flags = ["--ssl-ca-certfile", str(c["ca"]), "--ssl-certfile", str(c["cert"]), "--ssl-keyfile", str(c["key"]),
                 "--enable-supernode-auth"] if secure else ["--insecure"]
        self.procs.start("superlink", [_bin("flower-superlink"), *flags, "--host", "127.0.0.1",
                                       "--port", str(self.port), "--database", str(self.work / "superlink.db")])
        self.home.mkdir(parents=True, exist_ok=True)
        trust = f'root-certificates = "{c["ca"]}"\n' if secure else "insecure = true\n"
        (self.home / "config.toml").write_text(
            f'[superlink]\ndefault = "deploy"\n\n[superlink.deploy]\naddress = "{self.address}"\n' + trust)
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.procs.procs["superlink"].poll() is not None:
                raise RuntimeError("SuperLink exited:\n" + self.procs.log("superlink")[-2000:])
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.3)
        raise RuntimeError("SuperLink did not open its port:\n" + self.procs.log("superlink")[-2000:])

    def flwr(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([_bin("flwr"), *args], env=self.env, capture_output=True, text=True, timeout=timeout,
                              cwd=str(APP_DIR))

    def register(self, public_key: Path) -> None:
        deadline = time.time() + 60
        while True:
            r = self.flwr("supernode", "register", str(public_key), "deploy")
            if r.returncode == 0:
                return
            if time.time() > deadline:
                raise RuntimeError(f"flwr supernode register failed: {r.stdout[-1500:]} {r.stderr[-1500:]}")
            time.sleep(1)

    def start_supernode(self, name: str, private_key: Path | None, node_config: dict[str, Any], *,
                        insecure: bool = False, retries: int | None = None, warm: bool = True,
                        env: dict[str, str] | None = None) -> subprocess.Popen:
        """``warm``: the SuperNode runs with ``--isolation process`` and this site's ClientApps are
        started by ``warm_exec`` (forked from preloaded imports) instead of a fresh interpreter each.
        An invalid ``policy-file`` raises ``policy.PolicyFileError`` (every problem) before any process starts."""
        policy_file = node_config.get("policy-file")
        if policy_file:
            from .policy import load_policy
            load_policy(policy_file)
        runtime_port = free_port()
        cmd = [_bin("flower-supernode"), "--superlink", self.address, "--port", str(runtime_port),
               "--node-config", run_config_arg(node_config)]
        cmd += ["--insecure"] if insecure else ["--root-certificates", str(self.certs["ca"])]
        if private_key:
            cmd += ["--auth-supernode-private-key", str(private_key)]
        if retries is not None:
            cmd += ["--max-retries", str(retries), "--max-wait-time", "20"]
        if warm:
            cmd += ["--isolation", "process"]
        node = self.procs.start(name, cmd, env)
        if warm:  # the Runtime API stays on loopback, plain as in Flower's own subprocess mode
            self.procs.start(f"{name}-exec", [sys.executable, "-m", "mmdomain_federated.warm_exec",
                                              "--runtime-api-address", f"127.0.0.1:{runtime_port}", "--insecure",
                                              "--parent-pid", str(node.pid),
                                              *(["--policy-file", str(policy_file)] if policy_file else [])],
                             env)
        return node

    def run_app(self, run_config: dict[str, Any], timeout: float = 900,
                app: Path = APP_DIR) -> subprocess.CompletedProcess:
        return self.flwr("run", str(app), "deploy", "--stream", "--run-config", run_config_arg(run_config),
                         timeout=timeout)

    def close(self) -> None:
        self.procs.close()


def deploy_local(num_sites: int, run_config: dict[str, Any], *, work: Path | None = None,
                 site_roots: list[Path] | None = None, policies: list[Path | None] | None = None,
                 log: Callable[[str], None] = print, timeout: float = 900) -> dict[str, Any]:
    """The whole deployment; returns the server's summary (plus ``logs``)."""
    from mmdomain.plugins import get_registry

    from . import task
    from .settings import Settings

    if policies:  # every site's policy file, before anything starts (start_supernode checks each again)
        from .policy import load_policy
        for path in policies:
            load_policy(path)  # no-op for None
    work = Path(work or tempfile.mkdtemp(prefix="mmdomain-deploy-"))
    settings = Settings.from_run_config(run_config)
    if site_roots is None:
        root = task.synthetic_root(get_registry(), settings.dataset, num_sites, settings.seed, settings.synthetic_quick)
        site_roots = task.site_folders(root)[:num_sites]
    out = work / "run"
    config = {"min-sites": min(num_sites, max(2, settings.min_sites)), "expected-sites": num_sites,
              **run_config, "out-dir": str(out)}
    dep = LocalDeployment(work)
    try:
        dep.start_superlink()
        log(f"SuperLink (TLS, SuperNode auth) on {dep.address}")
        for i, site in enumerate(site_roots):
            priv, pub = make_site_keys(work / "keys", f"site-{i}")
            dep.register(pub)
            node_config = {"data-root": str(site)}
            if policies and policies[i]:
                node_config["policy-file"] = str(Path(policies[i]).resolve())  # the services run in logs/
            dep.start_supernode(f"supernode-{i}", priv, node_config)
        log(f"{len(site_roots)} SuperNodes started; running the app")
        result = dep.run_app(config, timeout=timeout)
        if result.returncode != 0 or not (out / "summary.json").exists():
            raise RuntimeError(f"flwr run failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-2000:]}")
        summary = json.loads((out / "summary.json").read_text())
        summary["logs"] = str(work / "logs")
        return summary
    finally:
        dep.close()
