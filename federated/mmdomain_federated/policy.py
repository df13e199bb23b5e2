"""Site policy: a TOML file on each SuperNode (``--node-config 'policy-file=...'``) that the
run config cannot weaken. A job asking for less is refused by the site with a clear message.

    min-noise-multiplier = 0.8   # DP noise the site requires (central or local, whichever is on)
    max-clip-norm = 2.0
    require-dp = true            # refuse jobs without central or local DP
    require-local-dp = false     # refuse jobs without DP-SGD on this site
    secagg-required = false      # refuse jobs without SecAgg+
    allowed-plugins = ["example", "medical"]   # plugins whose components the job may use
    max-rounds = 100
    approved-apps = ["e995a48c..."]          # FAB sha256 of the app versions this site runs
    share-data-profile = false   # refuse jobs asking for label counts / input statistics (readiness-rows > 0)

``approved-apps`` and the rest of the policy are enforced by code the site installed: the site's
warm SuperExec (``warm_exec``) runs ``site_guard`` in each ClientApp process after Flower pulled the
task and before any code of the job's app is imported, so a job cannot bypass the policy by
shipping an app whose own check passes (``mmdomain fed app-hash`` prints an app folder's hash).

``mmdomain fed policy init FILE`` writes a documented template (``template()``), ``mmdomain fed
policy check FILE`` validates one (``check_file``). ``load_policy`` applies the same validation
(one rule, here): every problem of a file, each named without the file's path, in one
``PolicyFileError``. The warm SuperExec (``warm_exec --policy-file``) and ``deploy`` check the file
when the site starts, so a misspelt key stops the site at start, not at the first job.

What is impossible (an error, the file is refused): an unknown key (the nearest known one is
suggested), a value of the wrong type (a string for a number or a boolean, a float for
``max-rounds``), a negative or non-finite number (``nan`` would let every job through: comparisons
with it are false), ``allowed-plugins = []`` (every dataset comes from a plugin: every job would be
refused), ``require-dp = false`` written beside ``require-local-dp = true`` or
``min-noise-multiplier > 0`` (those require DP: the file would say the opposite of what it
enforces). Legal but weak (a warning): ``max-clip-norm`` without DP required (a job without DP is
accepted, its updates unclipped), DP required without ``min-noise-multiplier`` (any noise above 0
passes), ``allowed-plugins`` naming a plugin not installed here, an empty file.
"""

from __future__ import annotations

import difflib
import math
import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from mmdomain.errors import ConfigError


@dataclass(frozen=True)
class SitePolicy:
    min_noise_multiplier: float = 0.0
    max_clip_norm: float = 0.0  # 0 = no limit
    require_dp: bool = False
    require_local_dp: bool = False
    secagg_required: bool = False
    allowed_plugins: tuple[str, ...] | None = None
    max_rounds: int = 0  # 0 = no limit
    approved_apps: tuple[str, ...] | None = None  # FAB sha256 hex digests; None = any app
    share_data_profile: bool = True  # label counts and input statistics in the readiness report

    @property
    def dp_required(self) -> bool:
        """DP is required by ``require-dp``, and implied by ``require-local-dp`` or a noise minimum."""
        return self.require_dp or self.require_local_dp or self.min_noise_multiplier > 0


class PolicyFileError(ConfigError):
    """The site's policy file is invalid. ``problems`` name no path (they may leave the site);
    the message (the site's log, the start-up error) names the file."""

    def __init__(self, path: str | Path, problems: list[str]):
        self.path, self.problems = str(path), list(problems)
        super().__init__(f"site policy file {path} invalid: " + "; ".join(self.problems))


@dataclass(frozen=True)
class Key:
    """One policy key, documented: what ``template()`` writes and ``check_file`` knows."""

    name: str  # kebab-case, as written in the file
    kind: str  # "number" (>= 0, finite), "bool", "count" (integer >= 0), "plugins" (list of names)
    meaning: str
    example: str  # a TOML value
    template: str | None  # the template's value (None: the key is left commented out)

    @property
    def attr(self) -> str:
        return self.name.replace("-", "_")


KEYS = (
    Key("min-noise-multiplier", "number",
        "the smallest DP noise multiplier (noise std / clip norm) a job may use, checked for each DP mechanism it "
        "turns on (central-dp: noise-multiplier; local-dp: local-noise-multiplier). Above 0 it also requires DP.",
        "1.0", "0.8"),
    Key("max-clip-norm", "number",
        "the largest clip norm a DP job may use, for each DP mechanism it turns on (central-dp: clip-norm; "
        "local-dp: local-clip-norm); 0 = no limit. It limits DP jobs only: the epsilon depends on the noise "
        "multiplier, not on the clip; the clip bounds how far one update may move the model.",
        "2.0", "0.0"),
    Key("require-dp", "bool",
        "refuse jobs with neither central-dp nor local-dp, and DP jobs whose noise is 0.",
        "true", "true"),
    Key("require-local-dp", "bool",
        "refuse jobs without DP-SGD at this site (local-dp = true). Implies require-dp. Central-DP noise is added "
        "by the server, which this site cannot verify; local DP is noise this site adds itself.",
        "true", "true"),
    Key("secagg-required", "bool",
        "refuse jobs without SecAgg+ (secagg = true): the server then sees only the sum of the sites' updates.",
        "true", "false"),
    Key("allowed-plugins", "plugins",
        "the plugins whose components (dataset, encoders, fusion, task, tokenizers) a job may use; mmdomain's "
        "built-ins are always allowed. Absent = any installed plugin. Every dataset comes from a plugin, so an "
        "empty list would refuse every job (an error).",
        '["example", "medical"]', None),
    Key("max-rounds", "count",
        "the most rounds (num-server-rounds) a job may run; 0 = no limit. Each round spends privacy: under local "
        "DP the epsilon grows with rounds x local-epochs, which a noise minimum alone does not bound.",
        "50", "100"),
    Key("approved-apps", "apps",
        "the app versions this site runs, each as the sha256 of its Flower app bundle (FAB): `mmdomain fed app-hash "
        "APP_FOLDER` prints it for the copy the site reviewed, `flwr run` ships the same bytes from an identical "
        "folder. Any other app is refused by this site's executor before its code is imported. Absent = any app "
        "(the rest of this policy is still checked by the site's executor).",
        '["e995a48c37a81047e87bdcb14f6aa5c4a2eb9aa3b101ac76adc92a07440e5bb3"]', None),
    Key("share-data-profile", "bool",
        "false: refuse jobs whose readiness report would carry this site's noised label counts and input "
        "statistics (readiness-rows > 0; the server measures how different the sites are from them); such a job "
        "runs here with readiness-rows = 0. Absent = true.",
        "false", None),
)
KNOWN = {k.name: k for k in KEYS}
assert {k.attr for k in KEYS} == {f.name for f in fields(SitePolicy)}, "every SitePolicy field has a Key"

#: Run-config keys (what a job asks) written into a policy: the policy key that limits them.
RUN_CONFIG_KEYS = {"noise-multiplier": "min-noise-multiplier", "local-noise-multiplier": "min-noise-multiplier",
                   "clip-norm": "max-clip-norm", "local-clip-norm": "max-clip-norm", "central-dp": "require-dp",
                   "local-dp": "require-local-dp", "secagg": "secagg-required", "num-server-rounds": "max-rounds",
                   "dp": "require-dp", "readiness-rows": "share-data-profile"}

_TYPE_DOC = {"number": "number >= 0 (float or integer)", "bool": "true or false", "count": "integer >= 0",
             "plugins": "list of plugin names (strings)",
             "apps": "list of FAB sha256 digests (64 hex digits, optionally 'sha256:' before them)"}


@dataclass
class PolicyCheck:
    """What ``check_file`` found: ``policy`` (None when ``problems``), errors, warnings."""

    policy: SitePolicy | None
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


# -- reading and validating --------------------------------------------------------------------------
def check_file(path: str | Path, warn: bool = True) -> PolicyCheck:
    """Read and validate a policy file; never raises for what is in (or missing from) the file.
    Messages name no path. ``warn=False``: errors only (``load_policy``, at every message)."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        return PolicyCheck(None, [f"the file cannot be read ({type(exc).__name__}: {exc.strerror or exc})"])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        return PolicyCheck(None, [f"not UTF-8 text (line {line}: byte 0x{raw[exc.start]:02x} at offset "
                                  f"{exc.start}): save it as UTF-8"])
    return check_text(text, warn)


def check_text(text: str, warn: bool = True) -> PolicyCheck:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        return PolicyCheck(None, [f"not TOML: {exc}"])
    check = check_data(data, lines=_key_lines(text), warn=warn)
    if not data and warn:
        check.warnings.append("the file sets nothing: the default policy, which enforces nothing")
    return check


def check_data(data: dict[str, Any], lines: dict[str, int] | None = None, warn: bool = True) -> PolicyCheck:
    """Validate the parsed TOML table: every problem and warning, and the policy when valid."""
    lines = lines or {}
    problems: list[str] = []
    warnings: list[str] = []
    values: dict[str, Any] = {}
    written: dict[str, Any] = {}  # kebab-case name -> value as written
    for key, value in data.items():
        where = f" (line {lines[key]})" if key in lines else ""
        name = key.replace("_", "-")  # snake_case is accepted, as the first version of this reader did
        spec = KNOWN.get(name)
        if spec is None and isinstance(value, dict):
            problems.append(f"unknown table [{key}]{where}: a policy has no tables; write its keys at the top of "
                            "the file, before any [table] line")
            continue
        if spec is None:
            problems.append(f"unknown key {key!r}{where}: {_suggest(key)}")
            continue
        if name in written:
            problems.append(f"{name!r} is set twice{where} (as {name!r} and {name.replace('-', '_')!r})")
            continue
        error, parsed = _value(spec, value)
        if error:
            problems.append(f"{name}{where}: {error}")
            continue
        written[name], values[spec.attr] = value, parsed
    policy = SitePolicy(**values)
    problems += _contradictions(policy, written)  # among the values that parsed: every problem at once
    if problems:
        return PolicyCheck(None, problems, warnings)
    return PolicyCheck(policy, [], _weak_points(policy) if warn else [])


def _value(spec: Key, value: Any) -> tuple[str, Any]:
    """(error, parsed value) for one key; error is "" when the value is acceptable."""
    got = describe_value(value)
    if spec.kind == "bool":
        if isinstance(value, bool):
            return "", value
        hint = " (write it without quotes)" if isinstance(value, str) and value.lower() in ("true", "false") else ""
        return f"must be true or false, got {got}{hint}", None
    if spec.kind in ("number", "count"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            hint = " (write it without quotes)" if isinstance(value, str) and _is_number(value) else ""
            return f"must be a {'number' if spec.kind == 'number' else 'whole number'}, got {got}{hint}", None
        if spec.kind == "count" and isinstance(value, float):
            return f"must be a whole number (a count of rounds), got {got}", None
        if not math.isfinite(value):
            return f"must be a finite number, got {got}", None
        if value < 0:
            limit = "0 = no minimum" if spec.name == "min-noise-multiplier" else "0 = no limit"
            return f"must be >= 0 ({limit}), got {got}", None
        return "", float(value) if spec.kind == "number" else int(value)
    if spec.kind == "apps":
        return _app_hashes(value, got)
    # plugins
    if not isinstance(value, list):
        example = f'[{value!r}]'.replace("'", '"') if isinstance(value, str) else spec.example
        return f"must be a list of plugin names such as {example}, got {got}", None
    bad = [v for v in value if not isinstance(v, str) or not v.strip()]
    if bad:
        return f"must hold plugin names (non-empty strings), got {', '.join(describe_value(v) for v in bad)}", None
    if not value:
        return ("is empty: every dataset comes from a plugin, so every job would be refused (leave the key out to "
                "allow any installed plugin, or name the plugins jobs may use)"), None
    return "", tuple(dict.fromkeys(v.strip() for v in value))


_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def _app_hashes(value: Any, got: str) -> tuple[str, Any]:
    if not isinstance(value, list):
        return (f"must be a list of app hashes such as [\"{'0' * 64}\"] (mmdomain fed app-hash APP_FOLDER prints "
                f"one), got {got}"), None
    digests, bad = [], []
    for v in value:
        text = v.strip().lower().removeprefix("sha256:") if isinstance(v, str) else None
        if text is None or not _HEX64.match(text):
            bad.append(describe_value(v))
        else:
            digests.append(text)
    if bad:
        return (f"must hold sha256 digests of 64 hex digits (mmdomain fed app-hash APP_FOLDER prints one), got "
                f"{', '.join(bad)}"), None
    if not digests:
        return ("is empty: every app would be refused (leave the key out to run any app, or list the hashes of the "
                "app versions this site approved)"), None
    return "", tuple(dict.fromkeys(digests))


def _contradictions(policy: SitePolicy, written: dict[str, Any]) -> list[str]:
    out = []
    if written.get("require-dp") is False:
        if policy.require_local_dp:
            out.append("require-dp = false contradicts require-local-dp = true (local DP is DP, so DP is required): "
                       "set require-dp = true or leave it out")
        if policy.min_noise_multiplier > 0:
            out.append(f"require-dp = false contradicts min-noise-multiplier = {policy.min_noise_multiplier:g} "
                       "(a noise minimum refuses jobs without DP): set require-dp = true or leave it out")
    return out


def _weak_points(policy: SitePolicy) -> list[str]:
    out = []
    if policy.max_clip_norm > 0 and not policy.dp_required:
        out.append(f"max-clip-norm = {policy.max_clip_norm:g} limits DP jobs only: a job without DP is accepted and "
                   "its updates are not clipped (set require-dp = true to refuse it)")
    if policy.dp_required and policy.min_noise_multiplier <= 0:
        out.append("DP is required but min-noise-multiplier is 0: any noise above 0 passes")
    if policy.allowed_plugins is not None:
        from mmdomain.plugins import BUILTIN_MODULES

        installed = installed_plugins()
        for name in policy.allowed_plugins:  # "mmdomain" / a built-in module: allowed anyway
            if installed and name not in installed and name != "mmdomain" and name not in BUILTIN_MODULES:
                near = difflib.get_close_matches(name, sorted(installed), n=1, cutoff=0.6)
                hint = f"; did you mean {near[0]!r}?" if near else ""
                out.append(f"allowed-plugins: {name!r} is not a plugin installed here (installed: "
                           f"{', '.join(sorted(installed))}){hint}")
    return out


def _suggest(key: str) -> str:
    name = key.lower().replace("_", "-")
    if name in RUN_CONFIG_KEYS:
        return (f"{key!r} is a run-config key (what a job asks for); the site's limit on it is "
                f"{RUN_CONFIG_KEYS[name]!r}")

    return closest_key(name, KNOWN)


def closest_key(name: str, known) -> str:
    """"did you mean ...?" for the known key nearest ``name`` (word order ignored too:
    require-secagg ~ secagg-required), else the list of known keys."""
    known = list(known)

    def score(candidate: str) -> float:
        plain = difflib.SequenceMatcher(None, name, candidate).ratio()
        bag = difflib.SequenceMatcher(None, " ".join(sorted(name.split("-"))),
                                      " ".join(sorted(candidate.split("-")))).ratio()
        return max(plain, bag)

    best = max(known, key=score) if known else None
    if best is not None and score(best) >= 0.6:
        return f"did you mean {best!r}?"
    return "known keys: " + ", ".join(known)


def describe_value(value: Any) -> str:
    """A TOML value as an error message names it ("the string 'x'", "a table", "int 3")."""
    if value is None:
        return "nothing"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return f"a list {value!r}"
    return f"{type(value).__name__} {value!r}"


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _key_lines(text: str) -> dict[str, int]:
    """The line each top-level key is written on (for messages; tomllib gives none)."""
    out: dict[str, int] = {}
    for i, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("["):
            break  # a table: its keys are not top-level (the table itself is reported by name)
        m = re.match(r"""\s*(?:"([^"]+)"|'([^']+)'|([A-Za-z0-9_-]+))\s*=""", line)
        if m:
            out.setdefault(next(g for g in m.groups() if g), i)
    for i, line in enumerate(text.splitlines(), 1):
        m = re.match(r"\s*\[+\s*([A-Za-z0-9_-]+)", line)
        if m:
            out.setdefault(m.group(1), i)
    return out


def installed_plugins() -> set[str]:
    """Names of the mmdomain plugins installed here (entry points only: nothing is imported)."""
    from importlib import metadata

    from mmdomain.plugins import ENTRY_POINT_GROUP
    return {ep.name for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def load_policy(path: str | Path | None) -> SitePolicy:
    """The site's policy (the default, permissive one without a file); ``PolicyFileError`` with
    every problem of an invalid file."""
    if not path:
        return SitePolicy()
    check = check_file(path, warn=False)
    if check.problems:
        raise PolicyFileError(path, check.problems)
    return check.policy


# -- what a policy enforces, the template ------------------------------------------------------------
def describe(policy: SitePolicy) -> list[str]:
    """What the policy enforces, one line per rule, for people."""
    p = policy
    if p.require_local_dp:
        dp = "required: DP-SGD at this site (local-dp = true)"
    elif p.dp_required:
        dp = "required: central-dp or local-dp"
    else:
        dp = "not required"
    if p.min_noise_multiplier > 0:
        noise = f">= {p.min_noise_multiplier:g} for each DP mechanism a job turns on"
    else:
        noise = "above 0 (no minimum)" if p.dp_required else "no minimum"
    lines = [f"differential privacy: {dp}", f"noise multiplier: {noise}",
             f"clip norm: {f'<= {p.max_clip_norm:g} for each DP mechanism' if p.max_clip_norm else 'no limit'}",
             f"secure aggregation (SecAgg+): {'required' if p.secagg_required else 'not required'}",
             "plugins: " + (f"{', '.join(p.allowed_plugins)} (and mmdomain's built-ins)" if p.allowed_plugins
                            else "any installed plugin"),
             f"rounds: {f'at most {p.max_rounds}' if p.max_rounds else 'no limit'}",
             "apps: " + (f"only {', '.join(h[:12] + '...' for h in p.approved_apps)} (FAB sha256, checked by this "
                         "site's executor before the app's code runs)" if p.approved_apps
                         else "any app the coordinator ships (this policy is still checked by this site's executor)")]
    if p.dp_required and not p.require_local_dp:
        lines.append("note: central-DP noise is added by the server; this site checks the job's declared noise and "
                     "clip but cannot verify them (require-local-dp = true for noise this site adds itself)")
    return lines


def report(check: PolicyCheck, path: str | Path) -> str:
    """``check``'s verdict as text: the problems, or what the policy enforces, then any warnings."""
    if check.problems:
        n = len(check.problems)
        out = [f"{path}: invalid site policy ({n} problem{'s' if n > 1 else ''}):"]
        out += [f"  - {p}" for p in check.problems]
    else:
        out = [f"{path}: valid site policy; it enforces:"] + [f"  - {line}" for line in describe(check.policy)]
    out += [f"warning: {w}" for w in check.warnings]
    return "\n".join(out) + "\n"


def _default_doc(spec: Key) -> str:
    value = getattr(SitePolicy(), spec.attr)
    if value is None:
        return "absent (any app)" if spec.kind == "apps" else "absent (any installed plugin)"
    if isinstance(value, bool):
        return str(value).lower()
    if spec.kind in ("number", "count") and not value:
        return f"{value} ({'no minimum' if spec.name == 'min-noise-multiplier' else 'no limit'})"
    return str(value)


def template(approved_apps: list[str] | tuple[str, ...] | None = None) -> str:
    """A documented policy file: every key with its meaning, type, default and an example. As
    written it is a strict policy for a hospital (``TEMPLATE_POLICY``); ``approved_apps`` (the
    provisioning kits: the app the consortium was provisioned with) is written as set."""
    plugins = sorted(installed_plugins() - {"federated"})
    out = [
        "# mmdomain site policy (TOML). The run config of a job cannot weaken it: a job asking for less is",
        "# refused by this site, and the coordinator is told what the policy requires and what the job asked.",
        "# Give the same path to the SuperNode and to the warm SuperExec beside it:",
        "#   flower-supernode ... --node-config 'data-root=\"/data/site\" policy-file=\"/etc/mmdomain/policy.toml\"'"
        " --isolation process",
        "#   python -m mmdomain_federated.warm_exec ... --policy-file /etc/mmdomain/policy.toml",
        "# The SuperExec refuses to start with an invalid file. Check it any time: mmdomain fed policy check FILE",
        "#",
        "# As written this is a strict policy for a hospital: DP-SGD at this site (require-local-dp) with a noise",
        "# multiplier of at least 0.8, at most 100 rounds. Central-DP noise is added by the server, which the site",
        "# cannot verify; local DP is the privacy this site enforces by itself. The permissive default (enforce",
        "# nothing) is an empty file; deleting a line restores that key's default.",
    ]
    for spec in KEYS:
        out.append("")
        words, line = spec.meaning.split(), "#"
        for word in [f"{spec.name}:", *words]:  # wrapped at 110 columns
            if len(line) + 1 + len(word) > 110:
                out.append(line)
                line = "#  "
            line += " " + word
        out.append(line)
        out.append(f"#   type: {_TYPE_DOC[spec.kind]}; default: {_default_doc(spec)}; example: {spec.name} = "
                   f"{spec.example}")
        if spec.kind == "apps" and approved_apps:
            out.append("#   set by mmdomain fed provision to the app the consortium was provisioned with; compare it with "
                       "your reviewed copy")
            out.append(f"{spec.name} = [{', '.join(chr(34) + h + chr(34) for h in approved_apps)}]")
        elif spec.template is None:
            if spec.kind == "plugins" and plugins:
                out.append(f"#   installed here: {', '.join(plugins)}")
            if spec.kind == "apps" and (here := _installed_app_hash()):
                out.append(f"#   the federated app installed here: {here}")
            out.append(f"# {spec.name} = {spec.example}")
        else:
            out.append(f"{spec.name} = {spec.template}")
    return "\n".join(out) + "\n"


def _installed_app_hash() -> str | None:
    try:
        from .simulate import APP_DIR
        from .site_guard import app_hash

        return app_hash(APP_DIR)
    except Exception:  # noqa: BLE001 - a hint in a comment only
        return None


#: The policy the template sets (a test checks the template loads as this).
TEMPLATE_POLICY = SitePolicy(min_noise_multiplier=0.8, require_dp=True, require_local_dp=True, max_rounds=100)


def write_template(path: str | Path, force: bool = False) -> Path:
    return write_new(path, template(), force)


def write_new(path: str | Path, text: str, force: bool = False) -> Path:
    """``text`` to ``path``, which must not exist unless ``force`` (the template commands)."""
    path = Path(path)
    if path.exists() and not force:
        raise FileExistsError(f"{path} exists; use --force to overwrite it")
    path.write_text(text, encoding="utf-8")
    return path


# -- a job against the policy ----------------------------------------------------------------------------
def planned_noise_violations(policy: SitePolicy, noise: float, target_epsilon: float) -> list[str]:
    """A local DP-SGD job that plans its noise from ``target-epsilon`` has it only once the site
    knows its own data (``local_dp.site_noise``): the noise planned here against the minimum."""
    if noise < policy.min_noise_multiplier:
        return [f"local noise-multiplier {noise:.3g} (planned for target-epsilon {target_epsilon:g} on this site's "
                f"data) < the site's minimum {policy.min_noise_multiplier:g}"]
    return []


def violations(policy: SitePolicy, settings, registry) -> list[str]:
    """What in the job (``settings.Settings``) falls short of the site's policy, each as what the
    site requires and what the job asked; empty = acceptable."""
    out = []
    dp_on = settings.central_dp or settings.local_dp
    if policy.require_local_dp and not settings.local_dp:
        out.append("the site requires local DP-SGD (local-dp=true), the job has local-dp=false"
                   + (" (central-dp=true does not replace it)" if settings.central_dp else ""))
    elif policy.dp_required and not dp_on:
        out.append("the site requires differential privacy, the job has neither central-dp nor local-dp")
    for label, on, noise, clip in (("central", settings.central_dp, settings.noise_multiplier, settings.clip_norm),
                                   ("local", settings.local_dp, settings.local_noise_multiplier,
                                    settings.local_clip_norm)):
        if not on:
            continue
        if noise < policy.min_noise_multiplier:
            out.append(f"{label} noise-multiplier {noise:g} < the site's minimum {policy.min_noise_multiplier:g}")
        elif policy.dp_required and noise <= 0 and settings.target_epsilon <= 0:
            out.append(f"{label} noise-multiplier {noise:g} adds no noise, the site requires differential privacy")
        if policy.max_clip_norm and clip > policy.max_clip_norm:
            out.append(f"{label} clip-norm {clip:g} > the site's maximum {policy.max_clip_norm:g}")
    if policy.secagg_required and not settings.secagg:
        out.append("the site requires secure aggregation (secagg=true), the job has secagg=false")
    if policy.max_rounds and settings.num_server_rounds > policy.max_rounds:
        out.append(f"num-server-rounds {settings.num_server_rounds} > the site's maximum {policy.max_rounds}")
    if not policy.share_data_profile and settings.readiness and settings.readiness_rows > 0:
        out.append(f"the site shares no label counts or input statistics (share-data-profile=false), the job has "
                   f"readiness-rows={settings.readiness_rows} (set readiness-rows=0)")
    if policy.allowed_plugins is not None:
        from mmdomain.plugins import BUILTIN_MODULES

        from .task import model_config
        cfg = model_config(settings, registry)
        used = {("dataset", settings.dataset), ("fusion", cfg.fusion.name), ("task", cfg.task.name)}
        used |= {("encoder", c.name) for c in cfg.encoders.values()} | {("modality", m) for m in cfg.modalities}
        used |= {("tokenizer", c.name) for c in cfg.tokenizers.values()}
        for kind, name in sorted(used):
            owner = registry.owner(kind, name)
            # the core's own modules only: a plugin merely *named* mmdomain-something is a plugin like any other
            if owner not in policy.allowed_plugins and owner not in BUILTIN_MODULES:
                out.append(f"{kind} {name!r} comes from plugin {owner!r}, not in the site's allowed-plugins "
                           f"{list(policy.allowed_plugins)}")
    return out
