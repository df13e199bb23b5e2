"""Contract tests every domain plugin must pass.

Each check is a plain function ``check(manager, plugin, workdir) -> str`` that raises
``AssertionError`` (or any error) on failure and returns a short detail on success.
``run_contract`` runs them all for ``mmdomain plugins check``; ``PluginContract`` turns
them into pytest tests for a plugin's own suite.
"""

from __future__ import annotations

import hashlib
import math
import tempfile
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from ..config import ModelConfig, parse
from ..data.availability import AvailabilityAware
from ..data.collate import Collate
from ..models.compose import build_model, fit_tokenizers
from ..plugins import PluginManager
from ..registry import Registry
from ..training import texts_for_fitting

Check = Callable[[PluginManager, str, Path], str]


@dataclass
class CheckResult:
    plugin: str
    check: str
    ok: bool
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {"plugin": self.plugin, "check": self.check, "ok": self.ok, "detail": self.detail}


def _owned(registry: Registry, kind: str, plugin: str) -> list[Any]:
    return [registry.get(kind, n) for k, n, p in registry.iter_entries() if k == kind and p == plugin]


def check_loaded(manager: PluginManager, plugin: str, workdir: Path) -> str:
    info = next((i for i in manager.plugins() if i.name == plugin), None)
    assert info is not None, f"plugin {plugin!r} is not installed"
    assert info.status == "ok", f"plugin {plugin!r} did not load: {info.error}"
    if not info.commands and any(i.plugin_name == plugin for i in manager.hook.register_commands.get_hookimpls()):
        import click

        manager.add_commands(click.Group("contract-probe"))  # a plugin may contribute only commands
        assert info.status == "ok", f"plugin {plugin!r} failed to add its commands: {info.error}"
    assert info.registered, f"plugin {plugin!r} loaded but registered nothing (no spec, no command)"
    return ", ".join(f"{len(v)} {k}" for k, v in info.registered.items())


def _generate(registry: Registry, spec, root: Path) -> list[Path]:
    sites = spec.generate(root, num_sites=1, seed=0, **spec.quick_options)
    assert sites and all(Path(s).is_dir() for s in sites), f"generator {spec.name!r} returned no site folders"
    return [Path(s) for s in sites]


def check_synthetic_loads(manager: PluginManager, plugin: str, workdir: Path) -> str:
    """Each generator's site reads back: declared modalities, the spec's channels, finite values,
    and (for a dataset with ``available(i)``) the same modalities its index claims."""
    registry = manager.registry
    done = []
    for spec in _owned(registry, "synthetic", plugin):
        dspec = registry.dataset(spec.dataset)
        site = _generate(registry, spec, workdir / f"synth-{spec.name}")[0]
        ds = dspec.build(site, split="train")
        assert len(ds) > 0, f"dataset {dspec.name!r} read no training sample from generator {spec.name!r}"
        seen: set[str] = set()
        for i in range(min(len(ds), 8)):
            sample = ds[i]
            assert sample.inputs, f"sample {i} of {dspec.name!r} has no modality at all"
            if isinstance(ds, AvailabilityAware):
                assert set(ds.available(i)) == set(sample.inputs), (
                    f"dataset {dspec.name!r}: available({i}) says {sorted(ds.available(i))}, "
                    f"the sample has {sorted(sample.inputs)}")
            for m, value in sample.inputs.items():
                assert m in dspec.modalities, f"sample has modality {m!r}, not declared by dataset {dspec.name!r}"
                mspec = registry.modality(m)
                if mspec.kind == "text":
                    assert isinstance(value, str), f"text modality {m!r} must stay str until tokenized"
                else:
                    assert isinstance(value, torch.Tensor), f"{m!r} must load as a tensor"
                    assert value.shape[0] == mspec.channels, (
                        f"{m!r} loaded with {value.shape[0]} channels, spec says {mspec.channels}")
                    assert torch.isfinite(value).all(), f"{m!r} has non-finite values"
                seen.add(m)
        done.append(f"{spec.name}: {len(ds)} samples, modalities {sorted(seen)}")
    return "; ".join(done) or "no generators"


def check_synthetic_deterministic(manager: PluginManager, plugin: str, workdir: Path) -> str:
    registry = manager.registry
    done = []
    for spec in _owned(registry, "synthetic", plugin):
        digests = []
        for run in ("a", "b"):
            root = workdir / f"det-{spec.name}-{run}"
            _generate(registry, spec, root)
            h = hashlib.sha256()
            for f in sorted(p for p in root.rglob("*") if p.is_file()):
                h.update(str(f.relative_to(root)).encode())
                h.update(f.read_bytes())
            digests.append(h.hexdigest())
        assert digests[0] == digests[1], f"generator {spec.name!r} wrote different files for the same seed"
        done.append(spec.name)
    return f"same seed, same bytes: {done}" if done else "no generators"


def _example_input(registry: Registry, modality: str, workdir: Path) -> Any:
    """A real tensor of ``modality`` from any synthetic generator that provides it, else None."""
    for spec in registry.specs("synthetic"):
        dspec = registry.dataset(spec.dataset)
        if modality not in dspec.modalities:
            continue
        root = workdir / f"synth-{spec.name}"
        sites = sorted(p for p in root.glob("*") if p.is_dir()) if root.exists() else _generate(registry, spec, root)
        ds = dspec.build(sites[0], split="train")
        for i in range(min(len(ds), 32)):
            value = ds[i].inputs.get(modality)
            if value is not None:
                return value
    return None


def check_encoders(manager: PluginManager, plugin: str, workdir: Path) -> str:
    registry = manager.registry
    done = []
    for espec in _owned(registry, "encoder", plugin):
        mods = [m for m in registry.specs("modality") if m.kind in espec.kinds]
        assert mods, f"encoder {espec.name!r} takes {espec.kinds}, but no installed modality is of those kinds"
        mspec = sorted(mods, key=lambda m: registry.owner("modality", m.name) != plugin)[0]
        example = _example_input(registry, mspec.name, workdir)
        extra: dict[str, Any] = {}
        if mspec.kind == "text":
            tok = registry.tokenizer("hashing").build()
            x = tok([example or "a short example text", "another one"], 32)
            extra = {"vocab_size": tok.vocab_size, "pad_id": tok.pad_id}
        elif example is not None:
            x = torch.stack([example, example])
        else:
            x = torch.randn(2, mspec.channels, *((32, 32, 32) if mspec.kind == "volume" else (64, 64)))
        module = espec.build(mspec, **extra).eval()
        with torch.no_grad():
            y = module(x)
        assert module.out_dim == espec.out_dim, f"encoder {espec.name!r}: module.out_dim {module.out_dim} != spec {espec.out_dim}"
        assert tuple(y.shape) == (2, espec.out_dim), (
            f"encoder {espec.name!r} on {mspec.name!r} {tuple(x.shape)} gave {tuple(y.shape)}, expected (2, {espec.out_dim})")
        if espec.supports_tokens:  # the token sequence the token-level fusion head reads
            assert callable(getattr(module, "tokens", None)), (
                f"encoder {espec.name!r} says supports_tokens but its module has no tokens(x)")
            with torch.no_grad():
                seq, valid = module.tokens(x)
            assert seq.dim() == 3 and seq.shape[0] == 2 and seq.shape[2] == espec.out_dim, (
                f"encoder {espec.name!r}: tokens(x) gave {tuple(seq.shape)}, expected (2, T, {espec.out_dim})")
            assert valid.dtype == torch.bool and tuple(valid.shape) == tuple(seq.shape[:2]), (
                f"encoder {espec.name!r}: tokens(x) validity {tuple(valid.shape)} {valid.dtype}, expected bool (2, T)")
            assert bool(valid.any(1).all()), f"encoder {espec.name!r}: tokens(x) marked every token of a row invalid"
        done.append(f"{espec.name}({mspec.name}) -> {espec.out_dim}" + (" +tokens" if espec.supports_tokens else ""))
    return "; ".join(done) or "no encoders"


def check_training_step(manager: PluginManager, plugin: str, workdir: Path) -> str:
    registry = manager.registry
    done = []
    for dspec in _owned(registry, "dataset", plugin):
        if not dspec.default_model:
            continue
        gen = registry.synthetic_for(dspec.name)
        root = workdir / f"synth-{gen.name}"
        sites = sorted(p for p in root.glob("*") if p.is_dir()) if root.exists() else _generate(registry, gen, root)
        ds = dspec.build(sites[0], split="train")
        config = parse(ModelConfig, dspec.default_model, f"default model of {dspec.name!r}")
        config = fit_tokenizers(config, registry, texts_for_fitting(ds, config.modalities, registry))
        torch.manual_seed(0)
        model = build_model(config, registry)
        batch = Collate(model.modalities)([ds[i] for i in range(min(len(ds), 8))])
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        before = [p.detach().clone() for p in model.parameters()]
        model.train()
        out = model(batch)
        loss = model.loss(out, batch)
        assert math.isfinite(loss.item()), f"dataset {dspec.name!r}: training loss is {loss.item()}"
        loss.backward()
        opt.step()
        changed = sum(not torch.equal(a, b.detach()) for a, b in zip(before, model.parameters()))
        assert changed > 0, f"dataset {dspec.name!r}: a training step changed no parameter"
        done.append(f"{dspec.name}: loss {loss.item():.3f}, {changed} tensors updated")
    return "; ".join(done) or "no dataset with a default model"


CHECKS: dict[str, Check] = {
    "loaded": check_loaded,
    "synthetic_loads": check_synthetic_loads,
    "synthetic_deterministic": check_synthetic_deterministic,
    "encoders_out_dim": check_encoders,
    "training_step": check_training_step,
}


def run_contract(manager: PluginManager, plugin: str, workdir: Path | None = None) -> list[CheckResult]:
    results = []
    with tempfile.TemporaryDirectory(prefix="mmdomain-contract-") as tmp:
        base = Path(workdir or tmp)
        for name, check in CHECKS.items():
            try:
                results.append(CheckResult(plugin, name, True, check(manager, plugin, base)))
            except Exception as exc:  # noqa: BLE001 - a failed check is a result, not a crash
                detail = str(exc) if isinstance(exc, AssertionError) else (
                    f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}")
                results.append(CheckResult(plugin, name, False, detail))
                if name == "loaded":
                    break
    return results


class PluginContract:
    """Subclass in a plugin's tests and set ``plugin_name``; pytest runs each check."""

    plugin_name: str = ""

    @staticmethod
    def _manager() -> PluginManager:
        return PluginManager()

    def _run(self, check: str, tmp_path: Path) -> None:
        assert self.plugin_name, "set plugin_name on your PluginContract subclass"
        manager = self._manager()
        CHECKS["loaded"](manager, self.plugin_name, tmp_path)
        CHECKS[check](manager, self.plugin_name, tmp_path)

    def test_loaded(self, tmp_path):
        self._run("loaded", tmp_path)

    def test_synthetic_loads(self, tmp_path):
        self._run("synthetic_loads", tmp_path)

    def test_synthetic_deterministic(self, tmp_path):
        self._run("synthetic_deterministic", tmp_path)

    def test_encoders_out_dim(self, tmp_path):
        self._run("encoders_out_dim", tmp_path)

    def test_training_step(self, tmp_path):
        self._run("training_step", tmp_path)
