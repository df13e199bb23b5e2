"""Startup kits for a consortium: one file names the coordinator and the sites, one kit per participant.

    mmdomain fed provision --template consortium.toml   # a commented example to edit
    mmdomain fed provision consortium.toml -o kits/     # kits/<coordinator>/, kits/<site>/..., kits/ca-private/

``read_consortium`` parses and validates the file (every problem in one ``ConfigError``, each naming
its key and what is expected); ``write_kits`` writes the kits to a temporary folder beside the
target and renames it into place, so a failed run leaves no half-written kit and an existing folder
is replaced only with ``force``.

Who gets what (no private key is in a kit that is not its owner's; ``kits/ca-private/`` holds the
CA's key and goes in no kit):

- coordinator: ``ca.crt``, ``server.pem`` + ``server.key`` (its SANs: the public address, the
  control address, ``extra-sans``), ``site-keys/<site>.pub`` and ``sites.json`` (each site's name,
  key mode and public-key fingerprint), ``start-superlink.sh`` / ``stop.sh``, ``register-sites.sh``
  (registers each public key under its site's name and records node id -> name in
  ``state/site-nodes.json``), ``flwr-home/config.toml`` (the researchers' Flower connection).
- site: ``ca.crt``, its own key pair ``<site>.key`` / ``<site>.key.pub`` (``key = "generate"``; with
  ``key = "site-provided"`` a slot: the site makes the pair and sends the public half, which
  ``add_site_key`` / ``--add-key`` adds to the coordinator's kit), ``connection.toml``,
  ``policy.toml`` (``policy.template``, approving the app as installed here; or a policy file
  the consortium names),
  ``start-site.sh`` / ``stop-site.sh`` (SuperNode + warm SuperExec, as ``deploy.LocalDeployment``
  starts them).

Flower 1.42 serves the Fleet, Control and ServerAppIo (Runtime) APIs on one listener. The
coordinator's script runs ``split_superlink``: every API on ``control-address:control-port``
(loopback, or an address only researchers reach) and the Fleet API alone on
``address:fleet-port``, so a site can reach nothing but the Fleet API.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmdomain import jsonout
from mmdomain.errors import ConfigError

from .policy import closest_key, describe_value, write_new

KEY_MODES = ("generate", "site-provided")
CA_PRIVATE = "ca-private"  # the folder (beside the kits, in none of them) holding the CA's key
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_HOST = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}"
                   r"[A-Za-z0-9])?)*$")
_UNSAFE_PATH = re.compile(r'["\\$`\x00-\x1f]')  # paths go into bash double quotes and TOML strings

#: key -> (what is expected, default; None = required). The template and the checks read this.
COORDINATOR_KEYS: dict[str, tuple[str, Any]] = {
    "name": ("a name (letters, digits, '-', '_', '.'): the kit's folder and the researchers' Flower connection",
             "coordinator"),
    "address": ("the public IP address the sites connect to (the Fleet API binds it)", None),
    "fleet-port": ("a port 1-65535 (the Fleet API, on address)", 9092),
    "control-address": ("an IP address only researchers reach, e.g. the loopback 127.0.0.1 (the Control and "
                        "ServerAppIo APIs bind it)", "127.0.0.1"),
    "control-port": ("a port 1-65535 (Control + ServerAppIo API, on control-address)", 9093),
    "health-port": ("a port 1-65535 (gRPC health service without TLS, on control-address)", 9098),
    "extra-sans": ("a list of further DNS names / IP addresses for the server certificate", []),
    "certificate-days": ("a whole number of days 1-3650 (CA and server certificate validity)", 365),
}
SITE_KEYS: dict[str, tuple[str, Any]] = {
    "name": ("a name (letters, digits, '-', '_', '.'): the site's kit, its SuperNode's name", None),
    "address": ("the site's IP address (optional; a loopback one means this machine: a test federation)", None),
    "key": ('"generate" (the kit holds the key pair) or "site-provided" (the site makes it, sends the public '
            "key)", "generate"),
    "public-key": ("a site-provided public key file (OpenSSH ECDSA, NIST curve), relative to this file", None),
    "data-root": ("the site's data folder on its machine (absolute, or relative to its kit)", "data"),
    "policy": ('"template" (the commented strict hospital policy) or a policy file relative to this file',
               "template"),
    "local-address": ("a loopback address for the site's local services (Runtime API, health); default: the "
                      "site's address when that is loopback, else 127.0.0.1", None),
    "runtime-port": ("a port 1-65535 (the SuperNode's Runtime API, plain text, on local-address)", 9094),
    "health-port": ("a port 1-65535 (the SuperNode's gRPC health service, on local-address)", 9095),
}
COORDINATOR_REQUIRED, SITE_REQUIRED = ("address",), ("name",)
_HINTS = {"serverappio-port": "Flower 1.42 serves the ServerAppIo (Runtime) API on the Control API's listener: "
                              "control-port is both",
          "fleet-api-address": "write address and fleet-port", "control-api-address": "write control-address and "
                                                                                      "control-port"}


@dataclass(frozen=True)
class Coordinator:
    name: str
    address: str
    fleet_port: int
    control_address: str
    control_port: int
    health_port: int
    extra_sans: tuple[str, ...]
    certificate_days: int

    @property
    def sans(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((self.address, self.control_address, *self.extra_sans)))

    @property
    def fleet(self) -> str:
        return _join(self.address, self.fleet_port)

    @property
    def control(self) -> str:
        return _join(self.control_address, self.control_port)


@dataclass(frozen=True)
class Site:
    name: str
    address: str | None
    key: str
    public_key: Path | None  # a site-provided key known at provisioning
    data_root: str
    policy: Path | None  # None: the template
    local_address: str
    runtime_port: int
    health_port: int


@dataclass(frozen=True)
class Consortium:
    coordinator: Coordinator
    sites: tuple[Site, ...]
    source: Path


# -- reading and validating --------------------------------------------------------------------------
def read_consortium(path: str | Path) -> Consortium:
    """The consortium file, validated; ``ConfigError`` naming every problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"consortium file {path} does not exist (write an example with "
                          f"`mmdomain fed provision --template {path}`)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"consortium file {path} cannot be read as UTF-8 text: {exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"consortium file {path} is not TOML: {exc}") from None
    return parse_consortium(data, path)


def parse_consortium(data: dict[str, Any], source: Path = Path("consortium.toml")) -> Consortium:
    problems: list[str] = []
    for key in data:
        if key not in ("coordinator", "site"):
            problems.append(f"unknown top-level key {key!r}: {closest_key(key, ('coordinator', 'site'))} "
                            "(a consortium file has a [coordinator] table and [[site]] tables)")
    raw_coord = data.get("coordinator")
    coordinator = None
    if not isinstance(raw_coord, dict):
        problems.append("[coordinator]: missing (a table with at least address = \"<public IP>\")"
                        if raw_coord is None else f"[coordinator] must be a table, got {describe_value(raw_coord)}")
    else:
        coordinator = _coordinator(raw_coord, problems)
    raw_sites = data.get("site")
    sites: list[Site] = []
    if raw_sites is None or raw_sites == []:
        problems.append("no [[site]] table: name at least one site ([[site]] name = \"hospital-a\")")
    elif isinstance(raw_sites, dict):
        problems.append("[site] is a single table: write each site as [[site]] (two brackets)")
    elif not isinstance(raw_sites, list) or not all(isinstance(s, dict) for s in raw_sites):
        problems.append(f"site must be [[site]] tables, got {describe_value(raw_sites)}")
    else:
        for i, raw in enumerate(raw_sites):
            site = _site(raw, i, source, problems)
            if site is not None:
                sites.append(site)
    if coordinator is not None:
        _names(coordinator, sites, problems)
        _collisions(coordinator, sites, problems)
    _public_keys(sites, problems)
    if problems:
        raise ConfigError(f"consortium file {source} invalid ({len(problems)} problem"
                          f"{'s' if len(problems) > 1 else ''}): " + "; ".join(problems))
    return Consortium(coordinator, tuple(sites), source)


def _coordinator(raw: dict[str, Any], problems: list[str]) -> Coordinator | None:
    where = "[coordinator]"
    n = len(problems)
    values = _known(raw, COORDINATOR_KEYS, where, problems, COORDINATOR_REQUIRED)
    name = _name_value(values["name"], f"{where} name", problems)
    address = _ip(values["address"], f"{where} address", problems, specific=True)
    control = _ip(values["control-address"], f"{where} control-address", problems, specific=True)
    ports = {k: _port(values[k], f"{where} {k}", problems) for k in ("fleet-port", "control-port", "health-port")}
    sans = values["extra-sans"]
    if not isinstance(sans, list) or not all(isinstance(s, str) for s in sans):
        problems.append(f"{where} extra-sans: must be a list of DNS names / IP addresses (strings), got "
                        f"{describe_value(sans)}")
        sans = []
    for s in sans:
        if not _is_ip(s) and not _HOST.match(s):
            problems.append(f"{where} extra-sans: {s!r} is neither an IP address nor a DNS name")
    days = values["certificate-days"]
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= 3650:
        problems.append(f"{where} certificate-days: must be a whole number 1-3650, got {describe_value(days)}")
    if address and control and ipaddress.ip_address(address) == ipaddress.ip_address(control):
        problems.append(f"{where} control-address {control} is the public address: the Control API (start runs, "
                        "register nodes) would be reachable by every site; use 127.0.0.1 or an address only "
                        "researchers reach")
    if len(problems) > n:
        return None
    return Coordinator(name, address, ports["fleet-port"], control, ports["control-port"], ports["health-port"],
                       tuple(sans), days)


def _site(raw: dict[str, Any], i: int, source: Path, problems: list[str]) -> Site | None:
    label = raw.get("name") if isinstance(raw.get("name"), str) else None
    where = f"[[site]] #{i + 1}" + (f" ({label})" if label else "")
    n = len(problems)
    values = _known(raw, SITE_KEYS, where, problems, SITE_REQUIRED)
    name = _name_value(values["name"], f"{where} name", problems)
    address = None if values["address"] is None else _ip(values["address"], f"{where} address", problems,
                                                         specific=True)
    key = values["key"]
    if key not in KEY_MODES:
        problems.append(f"{where} key: must be \"generate\" or \"site-provided\", got {describe_value(key)}")
    public_key = None
    if values["public-key"] is not None:
        if key == "generate":
            problems.append(f"{where} public-key: given with key = \"generate\" (a generated pair needs none): "
                            "set key = \"site-provided\" or remove public-key")
        elif not isinstance(values["public-key"], str):
            problems.append(f"{where} public-key: must be a file path (string), got {describe_value(values['public-key'])}")
        else:
            public_key = (source.parent / values["public-key"]).expanduser()
            error = _public_key_problem(public_key)
            if error:
                problems.append(f"{where} public-key {values['public-key']}: {error}")
    data_root = values["data-root"]
    if not isinstance(data_root, str) or not data_root.strip() or _UNSAFE_PATH.search(data_root):
        problems.append(f"{where} data-root: must be a folder path without quotes, backslashes, '$', '`' or "
                        f"control characters, got {describe_value(data_root)}")
    policy = None
    if values["policy"] != "template":
        if not isinstance(values["policy"], str):
            problems.append(f"{where} policy: must be \"template\" or a policy file path, got "
                            f"{describe_value(values['policy'])}")
        else:
            from .policy import check_file

            policy = source.parent / values["policy"]
            check = check_file(policy, warn=False)
            if check.problems:
                problems.append(f"{where} policy {values['policy']}: " + "; ".join(check.problems))
    local = values["local-address"]
    if local is None:
        local = address if address and ipaddress.ip_address(address).is_loopback else "127.0.0.1"
    else:
        local = _ip(local, f"{where} local-address", problems, specific=True)
        if local and not ipaddress.ip_address(local).is_loopback:
            problems.append(f"{where} local-address {local}: must be a loopback address (the Runtime API between "
                            "the SuperNode and its SuperExec is plain text)")
    ports = {k: _port(values[k], f"{where} {k}", problems) for k in ("runtime-port", "health-port")}
    if len(problems) > n:
        return None
    return Site(name, address, key, public_key, data_root, policy, local, ports["runtime-port"], ports["health-port"])


def _known(raw: dict[str, Any], spec: dict[str, tuple[str, Any]], where: str, problems: list[str],
           required: tuple[str, ...]) -> dict:
    for key in raw:
        if key not in spec:
            hint = _HINTS.get(key) or closest_key(key, spec)
            problems.append(f"{where}: unknown key {key!r}: {hint}")
    for key in required:
        if key not in raw:
            problems.append(f"{where} {key}: missing ({spec[key][0]})")
    return {key: raw.get(key, default) for key, (_, default) in spec.items()}


def _name_value(value: Any, where: str, problems: list[str]) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or not _NAME.match(value) or value == CA_PRIVATE:
        problems.append(f"{where}: must be 1-63 letters, digits, '-', '_' or '.' (not starting with '.' or '-', "
                        f"not {CA_PRIVATE!r}), got {describe_value(value)}")
        return ""
    return value


def _ip(value: Any, where: str, problems: list[str], specific: bool = False) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or not _is_ip(value):
        problems.append(f"{where}: must be an IP address such as \"203.0.113.5\" or \"127.0.0.1\", got "
                        f"{describe_value(value)}")
        return ""
    ip = ipaddress.ip_address(value)
    if specific and ip.is_unspecified:
        problems.append(f"{where}: {value} means every address of the machine; name the one address to bind")
        return ""
    return str(ip)


def _port(value: Any, where: str, problems: list[str]) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        hint = " (write it without quotes)" if isinstance(value, str) and value.isdigit() else ""
        problems.append(f"{where}: must be a port, a whole number 1-65535, got {describe_value(value)}{hint}")
        return 0
    return value


def _names(coordinator: Coordinator, sites: list[Site], problems: list[str]) -> None:
    seen: dict[str, str] = {coordinator.name.lower(): "the coordinator"}
    for site in sites:
        other = seen.get(site.name.lower())
        if other == "the coordinator":
            problems.append(f"[[site]] name {site.name!r} is the coordinator's name: every participant needs a kit "
                            "folder of its own; rename the site or the coordinator")
        elif other:
            problems.append(f"[[site]] name {site.name!r} appears twice (names are compared ignoring case): each "
                            "site needs a name of its own")
        seen.setdefault(site.name.lower(), site.name)


def _collisions(coordinator: Coordinator, sites: list[Site], problems: list[str]) -> None:
    """Two services of participants on one machine bound to the same address and port. Participants
    with a loopback address are all on this machine (a test federation); others share a machine when
    they share an address."""
    def machine(address: str | None, who: str) -> str:
        if address is None:
            return who
        return "this machine" if ipaddress.ip_address(address).is_loopback else address

    binds: dict[tuple[str, str, int], str] = {}

    def bind(where: str, address: str | None, host: str, port: int, label: str) -> None:
        key = (machine(address, where), host, port)
        if key in binds:
            problems.append(f"port collision: {label} and {binds[key]} both bind {_join(host, port)}; give one "
                            "of them another port")
        else:
            binds[key] = label

    c = coordinator
    bind("coordinator", c.address, c.address, c.fleet_port, "[coordinator] fleet-port")
    bind("coordinator", c.address, c.control_address, c.control_port, "[coordinator] control-port")
    bind("coordinator", c.address, c.control_address, c.health_port, "[coordinator] health-port")
    for s in sites:
        bind(s.name, s.address, s.local_address, s.runtime_port, f"site {s.name} runtime-port")
        bind(s.name, s.address, s.local_address, s.health_port, f"site {s.name} health-port")


def _public_keys(sites: list[Site], problems: list[str]) -> None:
    seen: dict[str, str] = {}
    for site in sites:
        if site.public_key is None or _public_key_problem(site.public_key):
            continue
        fp = fingerprint(site.public_key.read_bytes())
        if fp in seen:
            problems.append(f"site {site.name}'s public key is site {seen[fp]}'s: each site needs its own key pair")
        seen[fp] = site.name


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# -- keys --------------------------------------------------------------------------------------------
def load_public_key(data: bytes):
    """An OpenSSH EC public key on a NIST curve (what ``flwr supernode register`` accepts)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from flwr.supercore.primitives.asymmetric import uses_nist_ec_curve

    key = serialization.load_ssh_public_key(data.strip())
    if not isinstance(key, ec.EllipticCurvePublicKey) or not uses_nist_ec_curve(key):
        raise ValueError("not an ECDSA key on a NIST curve (make one with: ssh-keygen -t ecdsa -b 384)")
    return key


def fingerprint(public_key_file_bytes: bytes) -> str:
    """``sha256:<hex>`` of the key as the SuperLink stores it (Flower's ``public_key_to_bytes``,
    PEM SubjectPublicKeyInfo): the server can match a node's key to its site's name."""
    from flwr.supercore.primitives.asymmetric import public_key_to_bytes

    return "sha256:" + hashlib.sha256(public_key_to_bytes(load_public_key(public_key_file_bytes))).hexdigest()


def _public_key_problem(path: Path) -> str:
    try:
        load_public_key(path.read_bytes())
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    except (ValueError, TypeError) as exc:
        reason = str(exc) if "NIST" in str(exc) else "not an OpenSSH public key"
        return f"{reason} (make one with: ssh-keygen -t ecdsa -b 384 -N '' -f KEY; send KEY.pub)"
    except Exception as exc:  # cryptography's UnsupportedAlgorithm and friends
        return f"not a usable public key ({type(exc).__name__})"
    return ""


# -- writing the kits ----------------------------------------------------------------------------------
def env_bin() -> Path:
    """The Python environment's bin folder (flower-superlink, flwr, mmdomain, python)."""
    return Path(sys.executable).parent


def write_kits(consortium: Consortium, out: str | Path, *, force: bool = False) -> Path:
    """Every kit under ``out``, written to a temporary folder beside it and renamed into place."""
    out = Path(out).absolute()
    if out.exists() and not force:
        raise FileExistsError(f"{out} exists; use --force to replace it (a fresh CA and fresh keys: every kit "
                              "must then be sent again)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.new-", dir=out.parent))
    try:
        _write_all(consortium, tmp, final=out)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.rename(out, old / "kits")
            try:
                os.rename(tmp, out)
            except BaseException:
                os.rename(old / "kits", out)  # the old kits back in place
                os.rmdir(old)
                raise
            shutil.rmtree(old)
        else:
            os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _write_all(consortium: Consortium, root: Path, final: Path) -> None:
    from .deploy import make_certificates, make_site_keys
    from .simulate import APP_DIR
    from .site_guard import app_hash

    c = consortium.coordinator
    approved = app_hash(APP_DIR)  # the app as installed here: what every template policy approves
    ckit = root / c.name
    ckit.mkdir(parents=True)
    (root / CA_PRIVATE).mkdir(mode=0o700)
    make_certificates(ckit, c.sans, days=c.certificate_days, ca_key=root / CA_PRIVATE / "ca.key")
    (root / CA_PRIVATE / "README.txt").write_text(_ca_readme(c))
    (ckit / "site-keys").mkdir()
    sites_json: dict[str, Any] = {}
    for site in consortium.sites:
        kit = root / site.name
        kit.mkdir()
        shutil.copyfile(ckit / "ca.crt", kit / "ca.crt")
        pub = None
        if site.key == "generate":
            _, pub = make_site_keys(kit, site.name)
        elif site.public_key is not None:
            pub = site.public_key
        entry = {"key": site.key, "public-key": None, "fingerprint": None}
        if pub is not None:
            target = ckit / "site-keys" / f"{site.name}.pub"
            shutil.copyfile(pub, target)
            entry.update({"public-key": f"site-keys/{site.name}.pub", "fingerprint": fingerprint(target.read_bytes())})
        sites_json[site.name] = entry
        _site_kit(site, c, kit, approved)
    jsonout.write(ckit / "sites.json", {"coordinator": c.name, "sites": sites_json})
    _coordinator_kit(consortium, ckit, final / c.name)


def _coordinator_kit(consortium: Consortium, kit: Path, final: Path) -> None:
    c = consortium.coordinator
    (kit / "flwr-home").mkdir()
    (kit / "flwr-home" / "config.toml").write_text(connection_toml(c, str(final / "ca.crt")))
    split = ["-m", "mmdomain_federated.split_superlink", "--fleet-address", c.fleet, "--"]
    flags = ["--ssl-ca-certfile", '"$KIT/ca.crt"', "--ssl-certfile", '"$KIT/server.pem"', "--ssl-keyfile",
             '"$KIT/server.key"', "--enable-supernode-auth", "--host", c.control_address, "--port",
             str(c.control_port), "--database", '"$KIT/state/superlink.db"', "--health-server-address",
             _join(c.control_address, c.health_port)]
    start = [_HEADER, _env_lines("$KIT/flwr-home"), _PROCS,
             'mkdir -p "$KIT/logs" "$KIT/state" "$KIT/run" "$KIT/results" "$FLWR_HOME"',
             "# the researchers' Flower connection, with this kit's own path",
             f'cat > "$FLWR_HOME/config.toml" <<EOF\n{connection_toml(c, "$KIT/ca.crt")}EOF',
             'refuse_if_running superlink',
             "# the ServerApp names sites by the names register-sites.sh recorded (site_names)",
             'export MMDOMAIN_SITE_NAMES="$KIT/state/site-nodes.json"',
             "# a run without out-dir writes results/run-<run id> (a relative out-dir: inside results/); "
             "`mmdomain fed results --dir results`",
             'export MMDOMAIN_RESULTS_DIR="$KIT/results"',
             f'start_process superlink "$BIN/{_python()}" {" ".join(split)} \\\n    {" ".join(flags)}',
             f"wait_for_port superlink {c.address} {c.fleet_port}",
             f"wait_for_port superlink {c.control_address} {c.control_port}",
             f'echo "SuperLink up: Fleet API on {c.fleet} (sites), Control + ServerAppIo API on {c.control} '
             f'(researchers); log $KIT/logs/superlink.log"']
    _script(kit / "start-superlink.sh", start)
    _script(kit / "stop.sh", [_HEADER, _PROCS, "stop_process superlink"])
    _script(kit / "health.sh", [
        _HEADER, _env_lines("$KIT/flwr-home"), _PROCS,
        "# exit 0 when the SuperLink runs and its health service answers SERVING",
        'running superlink || { echo "superlink: not running"; exit 1; }',
        f'exec "$BIN/{_python()}" -m mmdomain_federated.health {_join(c.control_address, c.health_port)}'])
    _script(kit / "register-sites.sh", [
        _HEADER, _env_lines("$KIT/flwr-home"),
        "# registers each site's public key (site-keys/) under its name; node id -> name in state/site-nodes.json",
        f'exec "$BIN/{_python()}" -m mmdomain_federated.provision register "$KIT" "$@"'])
    (kit / "README.txt").write_text(_coordinator_readme(consortium))


def _site_kit(site: Site, c: Coordinator, kit: Path, approved_app: str) -> None:
    from .policy import template

    if site.policy is None:  # the strict template, approving the app as installed here
        (kit / "policy.toml").write_text(template(approved_apps=[approved_app]), encoding="utf-8")
    else:
        shutil.copyfile(site.policy, kit / "policy.toml")
    key = f"{site.name}.key"
    connection = {"site": site.name, "superlink": c.fleet, "root-certificates": "ca.crt", "private-key": key,
                  "public-key": f"{key}.pub", "data-root": site.data_root, "policy-file": "policy.toml",
                  "runtime-api": _join(site.local_address, site.runtime_port),
                  "health": _join(site.local_address, site.health_port)}
    (kit / "connection.toml").write_text(
        f"# {site.name}'s connection settings (start-site.sh uses the same values; paths are relative to this kit)\n"
        + "".join(f'{k} = "{v}"\n' for k, v in connection.items()))
    data = shlex.quote(site.data_root) if site.data_root.startswith("/") else f'"$KIT"/{shlex.quote(site.data_root)}'
    runtime = _join(site.local_address, site.runtime_port)
    node = ["--superlink", c.fleet, "--root-certificates", '"$KIT/ca.crt"', "--auth-supernode-private-key",
            f'"$KIT/{key}"', "--node-config", '"data-root=\\"$DATA_ROOT\\" policy-file=\\"$KIT/policy.toml\\""',
            "--isolation", "process", "--host", site.local_address, "--port", str(site.runtime_port),
            "--health-server-address", _join(site.local_address, site.health_port)]
    warm = ["-m", "mmdomain_federated.warm_exec", "--runtime-api-address", runtime, "--insecure", "--parent-pid",
            '"$(cat "$KIT/run/supernode.pid")"', "--policy-file", '"$KIT/policy.toml"']
    _script(kit / "start-site.sh", [
        _HEADER, _env_lines("$KIT/flwr-home"), _PROCS,
        f"DATA_ROOT={data}",
        f'if [ ! -f "$KIT/{key}" ]; then\n'
        f'  echo "no private key $KIT/{key}: make the pair here with" >&2\n'
        f'  echo "  ssh-keygen -t ecdsa -b 384 -N \'\' -C {site.name} -f \\"$KIT/{key}\\"" >&2\n'
        f'  echo "and send {key}.pub (the public half only) to the coordinator" >&2\n  exit 2\nfi',
        'if [ ! -d "$DATA_ROOT" ]; then\n  echo "data folder $DATA_ROOT missing: put the site\'s data there '
        '(or set data-root in the consortium file)" >&2\n  exit 2\nfi',
        '"$BIN/mmdomain" fed policy check "$KIT/policy.toml" >/dev/null || exit 2',
        'mkdir -p "$KIT/logs" "$KIT/run" "$FLWR_HOME"',
        "refuse_if_running supernode", "refuse_if_running warm-exec",
        f'start_process supernode "$BIN/flower-supernode" {" ".join(node)}',
        f'start_process warm-exec "$BIN/{_python()}" {" ".join(warm)}',
        f"wait_for_port supernode {site.local_address} {site.runtime_port}",
        f'echo "{site.name}: SuperNode -> {c.fleet}, warm SuperExec started; logs in $KIT/logs, health on '
        f'{_join(site.local_address, site.health_port)}"'])
    _script(kit / "stop-site.sh", [_HEADER, _PROCS, "stop_process warm-exec", "stop_process supernode"])
    _script(kit / "health.sh", [
        _HEADER, _env_lines("$KIT/flwr-home"), _PROCS,
        "# exit 0 when the SuperNode answers SERVING and the warm SuperExec beside it runs",
        'running warm-exec || { echo "warm-exec: not running"; exit 1; }',
        'echo "warm-exec: running (PID $(cat "$KIT/run/warm-exec.pid"))"',
        f'exec "$BIN/{_python()}" -m mmdomain_federated.health {_join(site.local_address, site.health_port)}'])
    (kit / "README.txt").write_text(_site_readme(site, c))


def connection_toml(c: Coordinator, ca_path: str) -> str:
    """The researchers' Flower connection (FLWR_HOME/config.toml, as ``flwr`` 1.42 reads it)."""
    return (f'[superlink]\ndefault = "{c.name}"\n\n[superlink.{c.name}]\naddress = "{c.control}"\n'
            f'root-certificates = "{ca_path}"\n')


def _python() -> str:
    return Path(sys.executable).name


def _env_lines(flwr_home: str) -> str:
    from .simulate import FLOWER_ENV

    exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in FLOWER_ENV.items())
    return (f'BIN="${{MMDOMAIN_BIN:-{env_bin()}}}"  # the Python environment with mmdomain-federated\n'
            f'export PATH="$BIN:$PATH"\nexport FLWR_HOME="{flwr_home}"\n' + exports.rstrip("\n"))


_HEADER = """#!/usr/bin/env bash
# written by `mmdomain fed provision`; paths are this kit's own, wherever it is copied
set -euo pipefail
KIT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)\""""

#: Start / stop by PID (run/<name>.pid); each process leads its own process group, stopped whole.
_PROCS = r'''running() {  # the PID in run/$1.pid is alive and is one of this kit's processes
  local pid
  [ -f "$KIT/run/$1.pid" ] || return 1
  pid="$(cat "$KIT/run/$1.pid")"
  kill -0 "$pid" 2>/dev/null && ps -ww -o args= -p "$pid" | grep -qF -- "$KIT"
}
refuse_if_running() {
  if running "$1"; then echo "$1 already running (PID $(cat "$KIT/run/$1.pid")); stop it first" >&2; exit 1; fi
}
start_process() {  # NAME COMMAND...: in the background, its own session, output to logs/NAME.log
  local name="$1"; shift
  if command -v setsid >/dev/null; then
    nohup setsid "$@" >>"$KIT/logs/$name.log" 2>&1 </dev/null &
  else
    nohup "$@" >>"$KIT/logs/$name.log" 2>&1 </dev/null &
  fi
  echo $! >"$KIT/run/$name.pid"
}
wait_for_port() {  # NAME HOST PORT: until HOST:PORT accepts, or NAME's process has died (60 s at most)
  local i
  for i in $(seq 1 300); do
    if (exec 3<>"/dev/tcp/$2/$3") 2>/dev/null; then return 0; fi
    if ! running "$1"; then
      echo "$1 exited; the end of $KIT/logs/$1.log:" >&2; tail -n 30 "$KIT/logs/$1.log" >&2; exit 1
    fi
    sleep 0.2
  done
  echo "$1 did not open $2:$3 within 60 s; see $KIT/logs/$1.log" >&2; exit 1
}
tree() {  # PID and its descendants, whichever session they moved to (the SuperLink's ServerApps have their own)
  local child
  echo "$1"
  for child in $(ps -o pid= --ppid "$1" 2>/dev/null); do tree "$child"; done
}
stop_process() {  # NAME: SIGTERM to its process group and every descendant, SIGKILL after 15 s
  local pid pids p i alive
  if ! running "$1"; then echo "$1 not running"; rm -f "$KIT/run/$1.pid"; return 0; fi
  pid="$(cat "$KIT/run/$1.pid")"
  pids="$(tree "$pid" | tr '\n' ' ')"
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  for p in $pids; do kill -TERM "$p" 2>/dev/null || true; done
  for i in $(seq 1 75); do
    alive=""
    for p in $pids; do if kill -0 "$p" 2>/dev/null; then alive="$alive $p"; fi; done
    [ -z "$alive" ] && break
    sleep 0.2
  done
  rm -f "$KIT/run/$1.pid"
  if [ -n "$alive" ]; then
    kill -KILL -- "-$pid" 2>/dev/null || true
    for p in $alive; do kill -KILL "$p" 2>/dev/null || true; done
    echo "$1 killed (PIDs$alive): SIGTERM did not stop them within 15 s"; return 0
  fi
  echo "$1 stopped (PID $pid)"
}'''


def _script(path: Path, parts: list[str]) -> None:
    path.write_text("\n".join(parts) + "\n")
    path.chmod(0o755)


def _ca_readme(c: Coordinator) -> str:
    return f"""The consortium's certificate authority: its private key (ca.key).

This folder goes in NO kit. Keep it offline, readable by the provisioning operator only. It is needed
only to sign a new server certificate for the coordinator ({c.name}); the certificate (ca.crt) is in
every kit.
"""


def _coordinator_readme(consortium: Consortium) -> str:
    from .simulate import APP_DIR  # the app folder (on the machine that wrote the kit)

    c = consortium.coordinator
    provided = [s.name for s in consortium.sites if s.key == "site-provided" and s.public_key is None]
    waiting = (f"\nWaiting for the public keys of: {', '.join(provided)}. When a site sends its .pub file:\n"
               f"  mmdomain fed provision --add-key SITE SITE.pub -o <this kit's parent folder>\n"
               if provided else "")
    return f"""Startup kit of the coordinator {c.name!r} (written by `mmdomain fed provision`).

Files
  ca.crt              the consortium's CA certificate (public; every kit has it)
  server.pem          the SuperLink's TLS certificate, for {', '.join(c.sans)}
  server.key          its private key (0600; this kit only)
  site-keys/SITE.pub  each site's public key (SuperNode authentication)
  sites.json          site name -> key mode, public key file, sha256 fingerprint of the key
  start-superlink.sh  starts the SuperLink: Fleet API on {c.fleet} (the sites' only way in),
                      Control + ServerAppIo API on {c.control} (researchers), health on
                      {_join(c.control_address, c.health_port)}; log logs/superlink.log, PID run/superlink.pid,
                      state state/superlink.db
  stop.sh             stops it (by that PID)
  health.sh           exit 0 when it runs and its health service answers SERVING
  register-sites.sh   registers every site's public key under its name (run once, SuperLink up);
                      node id -> site name in state/site-nodes.json
  results/            each run's folder (summary.json, events.log, model): `mmdomain fed results --dir results`
  flwr-home/          FLWR_HOME for researchers: config.toml holds the connection {c.name!r}
                      (rewritten with this kit's path by start-superlink.sh)

Commands
  ./start-superlink.sh
  ./register-sites.sh
  FLWR_HOME=$PWD/flwr-home flwr run {APP_DIR} {c.name} --stream \\
      --run-config 'expected-sites={len(consortium.sites)} dataset="..."'
  ./stop.sh

The scripts use the Python environment at MMDOMAIN_BIN (default: the one that wrote the kit).{waiting}
"""


def _site_readme(site: Site, c: Coordinator) -> str:
    key = f"{site.name}.key"
    if site.key == "generate":
        keys = (f"  {key:<18}this site's private key (0600; only in this kit: never send it)\n"
                f"  {key + '.pub':<18}its public key (the coordinator has a copy)\n")
        first = ""
    elif site.public_key is not None:  # the site made its pair and sent the public half
        keys = f"  {key:<18}(slot) put here the private key whose public half you sent (0600; never send it)\n"
        first = ""
    else:
        keys = f"  {key:<18}(slot) this site's private key: make it here, it never leaves the site\n"
        first = (f"  ssh-keygen -t ecdsa -b 384 -N '' -C {site.name} -f {key}   # once; send {key}.pub to the "
                 "coordinator\n")
    return f"""Startup kit of the site {site.name!r} (written by `mmdomain fed provision`).

Files
  ca.crt            the consortium's CA certificate: the SuperNode checks the coordinator with it
{keys}  connection.toml   this site's settings: coordinator {c.fleet}, data folder, ports
  policy.toml       this site's policy: what a job must meet here (edit it; check it with
                    `mmdomain fed policy check policy.toml`). Its approved-apps is the app the
                    consortium was provisioned with: compare it with `mmdomain fed app-hash APP`
                    for the copy you reviewed; any other app is refused here before its code runs
  start-site.sh     starts the SuperNode (TLS, authenticated with {key}) and the warm SuperExec beside it;
                    logs in logs/, PIDs in run/, Runtime API {_join(site.local_address, site.runtime_port)}
                    (loopback), health on {_join(site.local_address, site.health_port)}
  stop-site.sh      stops both (by those PIDs)
  health.sh         exit 0 when the SuperNode answers SERVING and the warm SuperExec runs

Data: {site.data_root} {'(relative to this kit)' if not site.data_root.startswith('/') else ''}

Commands
{first}  ./start-site.sh
  ./stop-site.sh

The scripts use the Python environment at MMDOMAIN_BIN (default: the one that wrote the kit).
"""


# -- after provisioning: a site's own public key, registration ----------------------------------------------
def add_site_key(kits: str | Path, site: str, public_key: str | Path) -> str:
    """Put a site-provided public key into the coordinator's kit (``site-keys/``, ``sites.json``);
    returns its fingerprint. ``ConfigError`` for an unknown site, a bad key or one in use."""
    kits = Path(kits)
    ckit = coordinator_kit(kits)
    sites = json.loads((ckit / "sites.json").read_text())
    if site not in sites["sites"]:
        raise ConfigError(f"--add-key: no site {site!r} in {ckit / 'sites.json'} (sites: "
                          f"{', '.join(sites['sites'])})")
    path = Path(public_key)
    error = _public_key_problem(path)
    if error:
        raise ConfigError(f"--add-key: public key {path}: {error}")
    fp = fingerprint(path.read_bytes())
    for name, entry in sites["sites"].items():
        if name != site and entry.get("fingerprint") == fp:
            raise ConfigError(f"--add-key: that key is site {name}'s already: each site needs its own key pair")
    target = ckit / "site-keys" / f"{site}.pub"
    tmp = target.with_suffix(".pub.tmp")
    shutil.copyfile(path, tmp)
    os.replace(tmp, target)
    sites["sites"][site].update({"public-key": f"site-keys/{site}.pub", "fingerprint": fp})
    tmp = ckit / "sites.json.tmp"
    jsonout.write(tmp, sites)
    os.replace(tmp, ckit / "sites.json")
    return fp


def coordinator_kit(kits: Path) -> Path:
    found = [p.parent for p in Path(kits).glob("*/sites.json")]
    if len(found) != 1:
        raise ConfigError(f"{kits}: not a folder of kits written by `mmdomain fed provision` (expected one "
                          "coordinator kit holding sites.json)")
    return found[0]


def register_sites(kit: Path, flwr: str = "flwr") -> dict[str, str]:
    """``flwr supernode register`` for every site with a public key, under its name, through the
    kit's connection; node id -> site name in ``state/site-nodes.json`` (what the server reads to
    name sites). A site already recorded there is skipped."""
    kit = Path(kit)
    sites = json.loads((kit / "sites.json").read_text())
    state = kit / "state" / "site-nodes.json"
    nodes: dict[str, str] = json.loads(state.read_text())["node-ids"] if state.exists() else {}
    env = {**os.environ, "FLWR_HOME": str(kit / "flwr-home")}
    for name, entry in sites["sites"].items():
        if name in nodes.values():
            print(f"{name}: registered already")
            continue
        if not entry.get("public-key"):
            print(f"{name}: no public key yet (site-provided): skipped")
            continue
        r = subprocess.run([flwr, "supernode", "register", str(kit / entry["public-key"]), sites["coordinator"],
                            "--name", name, "--format", "json"], env=env, capture_output=True, text=True,
                           timeout=120)
        try:
            node_id = str(json.loads(r.stdout[r.stdout.index("{"):])["node-id"])
        except (ValueError, KeyError):
            raise ConfigError(f"registering {name} failed (exit {r.returncode}): {(r.stdout + r.stderr)[-800:]}") \
                from None
        nodes[node_id] = name
        state.parent.mkdir(parents=True, exist_ok=True)
        jsonout.write(state, {"node-ids": nodes, "fingerprints": {n: sites["sites"][n]["fingerprint"]
                                                                  for n in nodes.values()}})
        print(f"{name}: node {node_id}")
    return nodes


# -- the example file ---------------------------------------------------------------------------------------
def template() -> str:
    """A commented consortium file (three hospitals on loopback addresses: runs on one machine)."""
    def doc(spec: dict[str, tuple[str, Any]], key: str) -> str:
        expected, default = spec[key]
        if key in (COORDINATOR_REQUIRED if spec is COORDINATOR_KEYS else SITE_REQUIRED):
            return f"# {key} (required): {expected}"
        return f"# {key}: {expected}" + ("" if default is None else f"; default {json.dumps(default)}")

    c, s = COORDINATOR_KEYS, SITE_KEYS
    lines = ["# mmdomain consortium: the coordinator and the sites. `mmdomain fed provision THIS.toml -o kits/`",
             "# writes one startup kit per participant (kits/<name>/) and kits/ca-private/ (the CA's key: no kit).",
             "# These addresses are loopback ones, so the whole consortium runs on one machine; use real ones.",
             "", "[coordinator]"]
    values = {"name": '"coordinator"', "address": '"127.0.0.10"', "fleet-port": "9092",
              "control-address": '"127.0.0.1"', "control-port": "9093", "health-port": "9098",
              "extra-sans": "[]  # e.g. [\"fl.example.org\"] when sites dial a DNS name", "certificate-days": "365"}
    for key in c:
        lines += [doc(c, key), f"{key} = {values[key]}"]
    for i, name in enumerate(("hospital-a", "hospital-b", "hospital-c")):
        lines += ["", "[[site]]"]
        if i == 0:
            lines += [doc(s, k) for k in s]
            lines.append("# (the keys above may be set in every [[site]]; unset ones take their defaults)")
        lines += [f'name = "{name}"', f'address = "127.0.0.{11 + i}"']
        if i == 2:
            lines += ['key = "site-provided"  # this site makes its own key pair; the kit has a slot for it',
                      '# public-key = "hospital-c.pub"  # once it sent the .pub (or: mmdomain fed provision --add-key)']
    return "\n".join(lines) + "\n"


def write_template(path: str | Path, force: bool = False) -> Path:
    return write_new(path, template(), force)


def main(argv: list[str] | None = None) -> None:
    """``python -m mmdomain_federated.provision register KIT`` (what register-sites.sh runs)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 2 or argv[0] != "register":
        sys.exit("usage: python -m mmdomain_federated.provision register COORDINATOR_KIT")
    try:
        register_sites(Path(argv[1]))
    except ConfigError as exc:
        sys.exit(str(exc))


if __name__ == "__main__":
    main()
