"""The plugin manager: entry points (group ``mmdomain``), built-ins, isolation.

A plugin that fails to import, raises while registering, or registers something
invalid is reported (distribution, version, error) and skipped; the others keep
working. ``MMDOMAIN_STRICT_PLUGINS=1`` makes any such failure fatal.

Environment:
    MMDOMAIN_PLUGINS        comma-separated entry-point names: load only these
    MMDOMAIN_BLOCK_PLUGINS  comma-separated entry-point names: never load these
    MMDOMAIN_STRICT_PLUGINS 1 = a failing plugin raises PluginLoadError
"""

from __future__ import annotations

import importlib
import os
import threading
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Callable

import click
import pluggy

from . import hookspecs
from .errors import MMDomainError, PluginLoadError
from .registry import SPEC_TYPES, Registry

ENTRY_POINT_GROUP = "mmdomain"
BUILTIN_MODULES = (
    "mmdomain.builtins.encoders",
    "mmdomain.builtins.tokenizers",
    "mmdomain.builtins.fusions",
    "mmdomain.builtins.tasks",
    "mmdomain.builtins.fallbacks",
    "mmdomain.builtins.commands",
)
REGISTER_HOOKS = {
    "modality": "register_modalities",
    "encoder": "register_encoders",
    "tokenizer": "register_tokenizers",
    "fusion": "register_fusions",
    "task": "register_tasks",
    "dataset": "register_datasets",
    "synthetic": "register_synthetic",
}


@dataclass
class PluginInfo:
    name: str
    distribution: str
    version: str
    status: str = "ok"  # ok | failed | blocked
    error: str = ""
    registered: dict[str, list[str]] = field(default_factory=dict)
    commands: list[str] = field(default_factory=list)  # CLI sub-commands it added (register_commands)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "status": self.status,
            "error": self.error,
            "registered": self.registered,
        }


def _env_names(var: str) -> set[str] | None:
    raw = os.environ.get(var, "").strip()
    return {n.strip() for n in raw.split(",") if n.strip()} if raw else None


def strict_mode() -> bool:
    return os.environ.get("MMDOMAIN_STRICT_PLUGINS", "").strip().lower() in {"1", "true", "yes"}


class PluginManager:
    """pluggy's manager plus the registry and a report of every plugin's fate."""

    def __init__(self, *, load_entry_points: bool = True, builtins: bool = True) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.infos: dict[str, PluginInfo] = {}
        self._registry: Registry | None = None
        self._command_groups: list[Any] = []  # the click groups add_commands already filled
        if builtins:
            for modname in BUILTIN_MODULES:
                module = importlib.import_module(modname)
                self.pm.register(module, name=modname)
                self.infos[modname] = PluginInfo(modname, "mmdomain", _version("mmdomain"))
        if load_entry_points:
            self._load_entry_points()

    # -- loading -----------------------------------------------------------------
    def _load_entry_points(self) -> None:
        only = _env_names("MMDOMAIN_PLUGINS")
        blocked = _env_names("MMDOMAIN_BLOCK_PLUGINS") or set()
        seen: set[str] = set()
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            if ep.name in seen:  # the same distribution found twice on sys.path
                continue
            seen.add(ep.name)
            dist = ep.dist.name if ep.dist else "?"
            version = ep.dist.version if ep.dist else "?"
            info = PluginInfo(ep.name, dist, version)
            self.infos[ep.name] = info
            if ep.name in blocked or (only is not None and ep.name not in only):
                info.status = "blocked"
                continue
            try:
                plugin = ep.load()
                self.pm.register(plugin, name=ep.name)
            except Exception as exc:  # noqa: BLE001 - any import failure is the plugin's, not ours
                self._fail(info, f"import failed: {type(exc).__name__}: {exc}", exc)

    def register(self, plugin: object, name: str, *, distribution: str = "(in-process)", version: str = "") -> None:
        """Register a plugin object directly (tests, notebooks). Resets the registry."""
        self.pm.register(plugin, name=name)
        self.infos[name] = PluginInfo(name, distribution, version)
        self._registry = None

    def unregister(self, name: str) -> None:
        self.pm.unregister(name=name)
        self.infos.pop(name, None)
        self._registry = None

    def _fail(self, info: PluginInfo, message: str, exc: BaseException | None = None) -> None:
        info.status, info.error = "failed", message
        if self.pm.has_plugin(info.name):
            self.pm.unregister(name=info.name)
        if strict_mode():
            raise PluginLoadError(
                f"plugin {info.name!r} ({info.distribution} {info.version}) {message} "
                "[MMDOMAIN_STRICT_PLUGINS=1 makes this fatal]"
            ) from exc

    # -- registry ------------------------------------------------------------------
    @property
    def registry(self) -> Registry:
        if self._registry is None:
            self._registry = self._collect()
        return self._registry

    def _collect(self) -> Registry:
        self.check_pending()
        registry = Registry(self.pm.hook)
        impls = {
            kind: getattr(self.pm.hook, hook_name).get_hookimpls() for kind, hook_name in REGISTER_HOOKS.items()
        }
        for plugin_name in [n for n, _ in self.pm.list_name_plugin()]:
            info = self.infos.setdefault(plugin_name, PluginInfo(plugin_name, "?", "?"))
            try:
                for kind, kind_impls in impls.items():
                    for impl in kind_impls:
                        if impl.plugin_name == plugin_name:
                            impl.function(register=lambda spec, _k=kind: registry.add(_k, spec, plugin_name))
            except Exception as exc:  # noqa: BLE001 - report and isolate the plugin
                registry.discard_plugin(plugin_name)
                reason = str(exc) if isinstance(exc, MMDomainError) else f"{type(exc).__name__}: {exc}"
                self._fail(info, f"registration failed: {reason}", exc)
                continue
            info.registered = registry.by_plugin(plugin_name) | ({"command": info.commands} if info.commands else {})
        return registry

    # -- commands ------------------------------------------------------------------
    def add_commands(self, group: Any) -> None:
        """Let each plugin add its sub-commands to ``group`` (a click group), built-ins first.

        A command name already taken is refused like a duplicate spec: the plugin that
        asked second fails (reported by ``plugins list``, fatal in strict mode) and
        none of its commands are added. What each plugin added is in ``PluginInfo.commands``.
        The same group given again is left as it is (its commands are this manager's already).
        """
        if any(g is group for g in self._command_groups):
            return
        self._command_groups.append(group)
        for impl in self.pm.hook.register_commands.get_hookimpls():  # trylast (built-ins) first
            info = self.infos.setdefault(impl.plugin_name, PluginInfo(impl.plugin_name, "?", "?"))
            proxy = _CommandRecorder(group)
            try:
                impl.function(cli=proxy)
                clash = {n: group.commands[n] for n in proxy.added if n in group.commands}
                if clash:
                    owners = {n: self._command_owner(n) for n in clash}
                    raise MMDomainError("; ".join(f"command {n!r} is already added by plugin {o!r}"
                                                  for n, o in owners.items()))
            except Exception as exc:  # noqa: BLE001 - report and isolate the plugin
                reason = str(exc) if isinstance(exc, MMDomainError) else f"{type(exc).__name__}: {exc}"
                self._fail(info, f"adding commands failed: {reason}", exc)
                continue
            for name, command in proxy.added.items():
                group.add_command(command, name=name)
            info.commands = sorted(proxy.added)
            info.registered["command"] = info.commands

    def _command_owner(self, name: str) -> str:
        return next((i.name for i in self.infos.values() if name in i.commands), "(the core)")

    def check_pending(self) -> None:
        """Fail loudly on a hook implementation whose name matches no hook (a typo)."""
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            raise PluginLoadError(f"{exc}; hooks are listed in mmdomain/hookspecs.py") from exc

    @property
    def hook(self) -> Any:
        return self.pm.hook

    def plugins(self) -> list[PluginInfo]:
        self.registry  # noqa: B018 - fill `registered`
        return sorted(self.infos.values(), key=lambda i: (i.distribution != "mmdomain", i.name))

    def failures(self) -> list[PluginInfo]:
        return [i for i in self.plugins() if i.status == "failed"]


class _CommandRecorder:
    """Stands in for the click group a plugin's ``register_commands`` receives: records
    what it adds, so the manager can check names before anything reaches the real group."""

    def __init__(self, group: Any) -> None:
        self._group = group
        self.added: dict[str, Any] = {}

    @property
    def commands(self) -> dict[str, Any]:
        return {**self._group.commands, **self.added}

    def add_command(self, command: Any, name: str | None = None) -> None:
        name = name or command.name
        if name in self.added:
            raise MMDomainError(f"command {name!r} is added twice by the same plugin")
        self.added[name] = command

    def command(self, *args: Any, **kwargs: Any) -> Callable:
        return self._adding(click.command, *args, **kwargs)

    def group(self, *args: Any, **kwargs: Any) -> Callable:
        return self._adding(click.group, *args, **kwargs)

    def _adding(self, make: Callable, *args: Any, **kwargs: Any) -> Callable:
        def decorator(f: Callable) -> Any:
            cmd = make(*args, **kwargs)(f)
            self.add_command(cmd)
            return cmd
        return decorator


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "0+unknown"


_lock = threading.Lock()
_default: PluginManager | None = None


def get_plugin_manager() -> PluginManager:
    """The process-wide manager (entry points + built-ins), created on first use."""
    global _default
    with _lock:
        if _default is None:
            _default = PluginManager()
        return _default


def get_registry() -> Registry:
    return get_plugin_manager().registry


def reset_plugin_manager() -> None:
    """Forget the process-wide manager (tests; after installing a plugin at run time)."""
    global _default
    with _lock:
        _default = None


__all__ = [
    "PluginManager",
    "PluginInfo",
    "get_plugin_manager",
    "get_registry",
    "reset_plugin_manager",
    "SPEC_TYPES",
]
