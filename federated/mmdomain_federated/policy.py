"""Site policy: a TOML file on each SuperNode (``--node-config 'policy-file=...'``) that the
run config cannot weaken. A job asking for less is refused by the site with a clear message.

    min-noise-multiplier = 0.8   # DP noise the site requires (central or local, whichever is on)
    max-clip-norm = 2.0
    require-dp = true            # refuse jobs without central or local DP
    require-local-dp = false     # refuse jobs without DP-SGD on this site
    secagg-required = false      # refuse jobs without SecAgg+
    allowed-plugins = ["example", "mmdomain"]   # plugins whose components the job may use
    max-rounds = 100
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from mmdomain.errors import ConfigError
from mmdomain.registry import Registry


@dataclass(frozen=True)
class SitePolicy:
    min_noise_multiplier: float = 0.0
    max_clip_norm: float = 0.0  # 0 = no limit
    require_dp: bool = False
    require_local_dp: bool = False
    secagg_required: bool = False
    allowed_plugins: tuple[str, ...] | None = None
    max_rounds: int = 0  # 0 = no limit


def load_policy(path: str | Path | None) -> SitePolicy:
    if not path:
        return SitePolicy()
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"site policy {path}: {exc}") from None
    known = {f.name for f in fields(SitePolicy)}
    values: dict[str, Any] = {}
    for k, v in data.items():
        name = k.replace("-", "_")
        if name not in known:
            raise ConfigError(f"site policy {path}: unknown key {k!r}")
        values[name] = tuple(v) if name == "allowed_plugins" else v
    return SitePolicy(**values)


def violations(policy: SitePolicy, settings, registry: Registry) -> list[str]:
    """What in the job (``settings.Settings``) falls short of the site's policy; empty = acceptable."""
    out = []
    dp_on = settings.central_dp or settings.local_dp
    if (policy.require_dp or policy.min_noise_multiplier > 0) and not dp_on:
        out.append("the site requires differential privacy, the job has neither central-dp nor local-dp")
    if policy.require_local_dp and not settings.local_dp:
        out.append("the site requires local DP-SGD (local-dp=true)")
    for label, on, noise, clip in (("central", settings.central_dp, settings.noise_multiplier, settings.clip_norm),
                                   ("local", settings.local_dp, settings.local_noise_multiplier,
                                    settings.local_clip_norm)):
        if not on:
            continue
        if noise < policy.min_noise_multiplier:
            out.append(f"{label} noise-multiplier {noise:g} < the site's minimum {policy.min_noise_multiplier:g}")
        if policy.max_clip_norm and clip > policy.max_clip_norm:
            out.append(f"{label} clip-norm {clip:g} > the site's maximum {policy.max_clip_norm:g}")
    if policy.secagg_required and not settings.secagg:
        out.append("the site requires secure aggregation (secagg=true)")
    if policy.max_rounds and settings.num_server_rounds > policy.max_rounds:
        out.append(f"num-server-rounds {settings.num_server_rounds} > the site's maximum {policy.max_rounds}")
    if policy.allowed_plugins is not None:
        from .task import model_config
        cfg = model_config(settings, registry)
        used = {("dataset", settings.dataset), ("fusion", cfg.fusion.name), ("task", cfg.task.name)}
        used |= {("encoder", c.name) for c in cfg.encoders.values()} | {("modality", m) for m in cfg.modalities}
        used |= {("tokenizer", c.name) for c in cfg.tokenizers.values()}
        for kind, name in sorted(used):
            owner = registry.owner(kind, name)
            if owner not in policy.allowed_plugins and not owner.startswith("mmdomain"):
                out.append(f"{kind} {name!r} comes from plugin {owner!r}, not in the site's allowed-plugins "
                           f"{list(policy.allowed_plugins)}")
    return out
