"""Spec dataclasses plugins register, and the registry that collects them.

A plugin contributes through ``register`` callbacks the core owns (see ``hookspecs``).
The registry records which plugin registered each name and rejects a duplicate,
naming both plugins. ``lazy("pkg.module:Name")`` is a spec callable imported on its first call,
so registering does not import the library behind it. (Nearly 400 lines: each spec's fields and its
validation sit next to the registry that checks them, so a plugin author reads what ``register``
accepts in one file.)
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Mapping, Protocol, Sequence

from torch import Tensor, nn

from .data.augment import check_view_limits
from .errors import ConfigError, DuplicateNameError, InvalidSpecError, UnknownComponentError

ModalityKind = Literal["image", "volume", "raster", "text"]
MODALITY_KINDS: tuple[str, ...] = ("image", "volume", "raster", "text")
TASK_KINDS: tuple[str, ...] = ("classification", "segmentation", "contrastive")


@dataclass(frozen=True)
class ModalitySpec:
    """One kind of signal. ``channels`` is None for text.

    ``loader(path) -> Tensor | str`` reads one file of this modality (optional);
    ``extensions`` lets the core's fallback ``detect_modality`` guess by suffix; ``views`` bounds
    the view augmentation of its data to what keeps its meaning (``mmdomain.data.augment``):
    ``{"flip": False, "rotate90": False, "crop_scale": 0.8}`` for a chest film, where the heart's
    side and the effusion's place matter, ``{"word_dropout": 0.0}`` for text a dropped "no" would
    invert.
    """

    name: str
    kind: ModalityKind
    channels: int | None = None
    description: str = ""
    loader: Callable[[Path], Any] | None = None
    extensions: tuple[str, ...] = ()
    views: Mapping[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        _check_name(self.name)
        try:
            check_view_limits(self.name, self.views)
        except ValueError as exc:
            raise InvalidSpecError(str(exc)) from None
        if self.kind not in MODALITY_KINDS:
            raise InvalidSpecError(f"modality {self.name!r}: kind {self.kind!r} is not one of {MODALITY_KINDS}")
        if self.kind != "text" and (not isinstance(self.channels, int) or self.channels < 1):
            raise InvalidSpecError(f"modality {self.name!r}: a {self.kind} modality needs channels >= 1")


@dataclass(frozen=True)
class EncoderSpec:
    """``build(modality: ModalitySpec, **options) -> nn.Module``.

    The module maps ``[B, C, *spatial]`` (or token ids ``[B, L]`` for text) to
    ``[B, out_dim]``; built with ``dense=True`` (when ``supports_dense``) it returns a
    feature map ``[B, out_dim, h, w]``. The module exposes ``out_dim``; ``out_dim`` here
    is the default options' value, checked by the contract tests. With ``supports_tokens``
    the module also has ``tokens(x) -> (seq [B, T, out_dim], valid bool[B, T])``: its token
    sequence (feature-map cells, text tokens) before pooling, ``valid`` False on padding,
    for the token-level fusion head (``fusion = "token_attention"``).
    """

    name: str
    kinds: tuple[str, ...]
    build: Callable[..., nn.Module]
    out_dim: int
    description: str = ""
    supports_dense: bool = False
    supports_tokens: bool = False

    def validate(self) -> None:
        _check_name(self.name)
        _check_callable(self, "build")
        bad = [k for k in self.kinds if k not in MODALITY_KINDS]
        if not self.kinds or bad:
            raise InvalidSpecError(f"encoder {self.name!r}: kinds must be a non-empty subset of {MODALITY_KINDS}")
        if not isinstance(self.out_dim, int) or self.out_dim < 1:
            raise InvalidSpecError(f"encoder {self.name!r}: out_dim must be a positive int")


class Tokenizer(Protocol):
    """Turns raw strings into token ids. ``config()`` rebuilds it via its spec's ``build``."""

    pad_id: int
    vocab_size: int

    def __call__(self, texts: Sequence[str], max_length: int) -> Tensor: ...

    def config(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class TokenizerSpec:
    """``build(**options) -> Tokenizer``; optional ``fit(texts, **options) -> options``
    learns a vocabulary from a site's own texts and returns the options that rebuild it. ``texts``
    holds plain strings, or ``(text, group)`` pairs when the dataset names a group per text
    (``text_group(i)``: the medical dataset's keyed patient pseudonym); a fitter must keep only
    tokens of ``min_groups`` groups (``mmdomain.tokenizers.grouped`` / ``tokens_in_groups``), so
    nothing unique to one patient enters a checkpoint."""

    name: str
    build: Callable[..., Tokenizer]
    fit: Callable[..., dict[str, Any]] | None = None
    description: str = ""

    def validate(self) -> None:
        _check_name(self.name)
        _check_callable(self, "build")


@dataclass(frozen=True)
class FusionSpec:
    """``build(dims: dict[str, int], **options) -> nn.Module`` with ``out_dim`` and
    ``forward(embeddings, present) -> Tensor``; see ``mmdomain.fusion``."""

    name: str
    build: Callable[..., nn.Module]
    description: str = ""

    def validate(self) -> None:
        _check_name(self.name)
        _check_callable(self, "build")


@dataclass(frozen=True)
class TaskSpec:
    """``build(in_dim, modality_dims, **options) -> Task`` (see ``mmdomain.tasks.base``).

    ``kind`` is classification, segmentation (dense encoders) or contrastive.
    """

    name: str
    kind: str
    build: Callable[..., nn.Module]
    description: str = ""

    def validate(self) -> None:
        _check_name(self.name)
        _check_callable(self, "build")
        if self.kind not in TASK_KINDS:
            raise InvalidSpecError(f"task {self.name!r}: kind {self.kind!r} is not one of {TASK_KINDS}")


@dataclass(frozen=True)
class DatasetSpec:
    """A paired multimodal dataset. ``build(root, split, **options)`` returns a
    ``torch.utils.data.Dataset`` of ``Sample``; splits are "train", "val", "test".

    ``default_model`` is a ModelConfig-shaped dict (encoders, fusion, task) that suits
    the dataset, used by the demo and as defaults in configs. ``describe(dataset) -> dict``
    (optional) returns domain statistics of one built dataset (counts, vendor mix, cloud
    fraction...): aggregate, JSON-able and free of anything identifying.

    ``task_option`` names the values of the builder's own ``task=`` option (e.g. a scene folder
    that reads labels as multilabel, segmentation, or not at all for ``contrastive``): a run
    whose model task is one of them builds the dataset with it (``build_for``), unless the data
    options set ``task`` themselves.
    """

    name: str
    modalities: tuple[str, ...]
    build: Callable[..., Any]
    description: str = ""
    default_model: dict[str, Any] = field(default_factory=dict)
    describe: Callable[[Any], dict[str, Any]] | None = None
    task_option: tuple[str, ...] = ()

    def validate(self) -> None:
        _check_name(self.name)
        _check_callable(self, "build")
        if not self.modalities:
            raise InvalidSpecError(f"dataset {self.name!r}: modalities must not be empty")
        if isinstance(self.task_option, str) or not all(isinstance(t, str) for t in self.task_option):
            raise InvalidSpecError(f"dataset {self.name!r}: task_option must be a tuple of task names")

    def build_for(self, root: Any, split: str, task: str | None = None, options: dict[str, Any] | None = None) -> Any:
        """``build(root, split, **options)``, with ``task=task`` when the builder takes that value."""
        options = dict(options or {})
        if task in self.task_option:
            options.setdefault("task", task)
        return self.build(root, split=split, **options)


@dataclass(frozen=True)
class SyntheticSpec:
    """A seeded generator writing realistic files for ``dataset``.

    ``generate(root, *, num_sites, seed, **options) -> list[Path]`` writes one folder
    per site under ``root`` and returns them; ``dataset.build(site_folder, split)``
    must read each. Same seed, same bytes. A generator that sets ``demo_options`` takes
    part in ``mmdomain demo`` by default, with those site sizes.
    """

    name: str
    dataset: str
    generate: Callable[..., list[Path]]
    description: str = ""
    quick_options: dict[str, Any] = field(default_factory=dict)  # a small dataset, for tests and --quick
    #: Options of the full demo's sites; None keeps this generator out of ``mmdomain demo``'s defaults.
    demo_options: dict[str, Any] | None = None
    #: Options of ``mmdomain demo --quick`` (default: ``quick_options``).
    demo_quick_options: dict[str, Any] | None = None
    #: Options of the full demo's public pretraining site, over ``demo_options`` (public corpora
    #: outsize one hospital's or region's: e.g. a few times a site's samples); None: as a demo site.
    demo_public_options: dict[str, Any] | None = None
    #: Sites large enough to measure privacy and label efficiency (2,000+ samples each at a small
    #: image / patch size, written and trained within minutes on a laptop); used by the quality benchmarks.
    large_options: dict[str, Any] | None = None

    def validate(self) -> None:
        _check_name(self.name)
        _check_callable(self, "generate")


SPEC_TYPES: dict[str, type] = {
    "modality": ModalitySpec,
    "encoder": EncoderSpec,
    "tokenizer": TokenizerSpec,
    "fusion": FusionSpec,
    "task": TaskSpec,
    "dataset": DatasetSpec,
    "synthetic": SyntheticSpec,
}


class _TargetSignature:
    """``inspect.signature`` of a ``LazyCallable`` is its target's (the class itself keeps its own)."""

    def __get__(self, obj: Any, owner: type | None = None) -> inspect.Signature:
        if obj is None:
            raise AttributeError("__signature__")
        return inspect.signature(obj.resolve())


class LazyCallable:
    """A spec's callable named ``"package.module:attribute"``, imported when first called.

    Registration (``plugins list``, ``--help``) then does not import the library behind it.
    ``inspect.signature`` sees the target's own signature (importing it then), so a caller that
    looks for an option (``"task" in signature(spec.build).parameters``) gets the same answer.
    """

    __slots__ = ("target", "_resolved")
    __signature__ = _TargetSignature()

    def __init__(self, target: str) -> None:
        if ":" not in target:
            raise InvalidSpecError(f"lazy({target!r}): expected 'package.module:attribute'")
        self.target = target
        self._resolved: Any = None

    def resolve(self) -> Callable[..., Any]:
        if self._resolved is None:
            module, _, attr = self.target.partition(":")
            obj: Any = importlib.import_module(module)
            for part in attr.split("."):
                obj = getattr(obj, part)
            self._resolved = obj
        return self._resolved

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.resolve()(*args, **kwargs)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LazyCallable) and other.target == self.target

    def __hash__(self) -> int:
        return hash(self.target)

    def __reduce__(self) -> tuple[Any, ...]:
        return LazyCallable, (self.target,)

    def __repr__(self) -> str:
        return f"lazy({self.target!r})"


def lazy(target: str) -> LazyCallable:
    """``build=lazy("my_plugin.encoders:BigEncoder")``: imported on the first call (see ``LazyCallable``)."""
    return LazyCallable(target)


def _check_name(name: object) -> None:
    if not isinstance(name, str) or not name or not name.replace("_", "").replace("-", "").isalnum():
        raise InvalidSpecError(f"spec name {name!r} must be a non-empty string of letters, digits, '_' or '-'")


def _check_callable(spec: object, attr: str) -> None:
    if not callable(getattr(spec, attr)):
        raise InvalidSpecError(f"{type(spec).__name__} {getattr(spec, 'name', '?')!r}: {attr} must be callable")


@dataclass
class Entry:
    spec: Any
    plugin: str


class Registry:
    """Every spec that plugins registered, by kind and name, with who registered it.

    It is also the front door to the firstresult hooks (``detect_modality``, ``partition``):
    callers ask the registry, never pluggy, so they get typed answers and clear errors.
    """

    def __init__(self, hook: Any = None) -> None:
        self._entries: dict[str, dict[str, Entry]] = {kind: {} for kind in SPEC_TYPES}
        self._hook = hook  # pluggy's hook relay of the manager that filled this registry

    def add(self, kind: str, spec: Any, plugin: str) -> None:
        expected = SPEC_TYPES[kind]
        if not isinstance(spec, expected):
            raise InvalidSpecError(
                f"plugin {plugin!r} registered {type(spec).__name__} where a {expected.__name__} is expected"
            )
        spec.validate()
        table = self._entries[kind]
        if spec.name in table:
            other = table[spec.name].plugin
            raise DuplicateNameError(
                f"{kind} {spec.name!r} is registered by both plugin {other!r} and plugin {plugin!r}; "
                f"uninstall one, or block it with MMDOMAIN_BLOCK_PLUGINS={plugin}"
            )
        table[spec.name] = Entry(spec, plugin)

    def discard_plugin(self, plugin: str) -> None:
        """Forget everything ``plugin`` registered (used when it fails part-way)."""
        for table in self._entries.values():
            for name in [n for n, e in table.items() if e.plugin == plugin]:
                del table[name]

    def get(self, kind: str, name: str) -> Any:
        table = self._entries[kind]
        if name not in table:
            raise UnknownComponentError(kind, name, list(table))
        return table[name].spec

    def names(self, kind: str) -> list[str]:
        return sorted(self._entries[kind])

    def specs(self, kind: str) -> list[Any]:
        return [self._entries[kind][n].spec for n in self.names(kind)]

    def owner(self, kind: str, name: str) -> str:
        self.get(kind, name)
        return self._entries[kind][name].plugin

    def by_plugin(self, plugin: str) -> dict[str, list[str]]:
        return {
            kind: sorted(n for n, e in table.items() if e.plugin == plugin)
            for kind, table in self._entries.items()
            if any(e.plugin == plugin for e in table.values())
        }

    def iter_entries(self) -> Iterable[tuple[str, str, str]]:
        for kind, table in self._entries.items():
            for name in sorted(table):
                yield kind, name, table[name].plugin

    # convenience accessors, typed for readers
    def modality(self, name: str) -> ModalitySpec:
        return self.get("modality", name)

    def encoder(self, name: str) -> EncoderSpec:
        return self.get("encoder", name)

    def tokenizer(self, name: str) -> TokenizerSpec:
        return self.get("tokenizer", name)

    def fusion(self, name: str) -> FusionSpec:
        return self.get("fusion", name)

    def task(self, name: str) -> TaskSpec:
        return self.get("task", name)

    def dataset(self, name: str) -> DatasetSpec:
        return self.get("dataset", name)

    def synthetic(self, name: str) -> SyntheticSpec:
        return self.get("synthetic", name)

    def synthetic_for(self, dataset: str) -> SyntheticSpec:
        for spec in self.specs("synthetic"):
            if spec.dataset == dataset:
                return spec
        raise UnknownComponentError(
            "synthetic generator for dataset", dataset, [s.dataset for s in self.specs("synthetic")]
        )

    # front doors to the firstresult hooks
    def detect_modality(self, path: str | Path) -> str | None:
        """The modality that reads ``path``: the first plugin that claims it, else the first
        ``ModalitySpec`` whose ``extensions`` match the file's suffix, else None."""
        path = Path(path)
        if self._hook is not None:
            name = self._hook.detect_modality(path=path)
            if name is not None:
                return name
        suffix = "".join(path.suffixes[-2:]).lower()
        for spec in self.specs("modality"):
            if any(suffix.endswith(ext.lower()) for ext in spec.extensions):
                return spec.name
        return None

    def partition(self, dataset: Any, num_sites: int, site: int, scheme: str) -> list[int]:
        """Indices of ``dataset`` held by ``site`` of ``num_sites`` under ``scheme`` (a plugin's, or
        the core's ``iid`` / ``by-meta:KEY``); an unknown scheme is a ``ConfigError``."""
        if self._hook is None:
            raise ConfigError("this registry was built without a plugin manager; partition schemes need one")
        idx = self._hook.partition(dataset=dataset, num_sites=num_sites, site=site, scheme=scheme)
        if idx is None:
            raise ConfigError(f"partition scheme {scheme!r} is not known to any installed plugin "
                              "(the core knows 'iid' and 'by-meta:KEY')")
        return [int(i) for i in idx]
