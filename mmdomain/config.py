"""Typed run configuration, loadable from TOML or YAML.

A bad value is reported as ``ConfigError`` naming the field (``train.lr: ...``); an
unknown key is an error too, so a misspelling is never silently ignored. A file that is not
UTF-8, too large, nested too deeply or a YAML alias bomb is refused before it is parsed in
full, and size options beyond ``mmdomain.limits`` before anything is allocated.
"""

from __future__ import annotations

import copy
import re
import reprlib
import tomllib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from . import limits
from .errors import ConfigError, MMDomainError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Component(_Strict):
    """A registered component by name, with its options (passed to its ``build``).

    Encoders also take ``weights`` (a local weights file, see ``mmdomain.models.weights``; its
    SHA-256 is recorded in ``weights_sha256`` when the model is built) and ``train`` (which
    parameters train: all, none, norms, last:N, lora:R; see ``mmdomain.models.trainable``).
    """

    name: str
    options: dict[str, Any] = Field(default_factory=dict)
    fitted: bool = False  # tokenizers: options already hold the fitted vocabulary
    weights: str | None = None
    weights_sha256: str | None = None
    train: str = "all"

    @field_validator("options")
    @classmethod
    def _sizes_in_range(cls, v: dict[str, Any]) -> dict[str, Any]:
        try:
            limits.check_options(v)
        except limits.LimitError as exc:
            raise ValueError(str(exc)) from None
        return v

    @field_validator("train")
    @classmethod
    def _policy(cls, v: str) -> str:
        from .models.trainable import TrainPolicy

        try:
            policy = TrainPolicy.parse(v)
        except MMDomainError as exc:
            raise ValueError(str(exc)) from None
        if policy.n > limits.DIM:  # blocks (last:N) or adapter rank (lora:R)
            raise ValueError(f"{v[:40]!r}: N is at most {limits.DIM:,}")
        return v


class BalanceConfig(_Strict):
    """Remedies for modality imbalance (``mmdomain.models.balance``), off by default.

    ``aux_weight``: each modality's embedding also predicts the target through a unimodal head of
    its own (training only), adding ``aux_weight`` x the mean of their losses, each over the rows
    that have the modality. ``modulation``: OGM(-GE) gradient modulation (Peng et al., CVPR 2022):
    each step, the encoder of the modality whose unimodal score dominates gets its gradient scaled
    by ``1 - tanh(alpha * (ratio - 1))``; ``ogm-ge`` adds the Gaussian noise of the paper's
    generalisation enhancement, ``ogm`` does not."""

    aux_weight: float = Field(0.0, ge=0.0, le=100.0, allow_inf_nan=False)
    modulation: Literal["none", "ogm", "ogm-ge"] = "none"
    alpha: float = Field(0.5, gt=0.0, le=100.0, allow_inf_nan=False)

    @property
    def active(self) -> bool:
        return self.aux_weight > 0 or self.modulation != "none"


class MissingConfig(_Strict):
    """Missing-modality methods beyond modality dropout and the heads' own missing tokens
    (``mmdomain.models.missing``), off by default.

    ``impute_weight``: a small translator per ordered modality pair maps one modality's embedding
    to another's; an absent modality's embedding is then the mean of the translations from the
    present ones (training and inference), and training adds ``impute_weight`` x their mean
    squared error on the rows holding both. ``distill_weight``: the model on the rows as they came
    (the teacher, no gradient) is distilled into the same model on the rows modality dropout
    thinned (the student), at temperature ``distill_temperature``; needs ``modality_dropout``.
    ``unimodal_fallback``: at evaluation, a row holding a single modality is predicted by that
    modality's unimodal auxiliary head instead of the fusion head (needs ``balance.aux_weight``),
    so a fused model is, on one modality, the single-modality model it trains alongside."""

    impute_weight: float = Field(0.0, ge=0.0, le=100.0, allow_inf_nan=False)
    impute_hidden: int = Field(0, ge=0, le=limits.DIM)  # 0: a linear translator, else one hidden layer
    distill_weight: float = Field(0.0, ge=0.0, le=100.0, allow_inf_nan=False)
    distill_temperature: float = Field(2.0, gt=0.0, le=100.0, allow_inf_nan=False)
    unimodal_fallback: bool = False

    @property
    def impute(self) -> bool:
        return self.impute_weight > 0

    @property
    def distill(self) -> bool:
        return self.distill_weight > 0

    @property
    def active(self) -> bool:
        return self.impute or self.distill


class ModelConfig(_Strict):
    modalities: list[str] = Field(min_length=1)
    encoders: dict[str, Component]
    tokenizers: dict[str, Component] = Field(default_factory=dict)
    fusion: Component = Field(default_factory=lambda: Component(name="concat"))
    task: Component
    modality_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    encode_absent: bool = False  # run encoders on zero-filled rows too (needed by per-sample-gradient DP)
    # "group": each BatchNorm outside a frozen encoder becomes a GroupNorm (per-sample-gradient DP:
    # batch statistics mix samples); recorded here so that a checkpoint rebuilds the same layers
    batch_norm: Literal["batch", "group"] = "batch"
    max_text_length: int = Field(128, ge=1, le=limits.TOKENS)
    balance: BalanceConfig = Field(default_factory=BalanceConfig)  # modality-imbalance remedies (off)
    missing: MissingConfig = Field(default_factory=MissingConfig)  # imputation, distillation (off)

    @field_validator("modalities")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"modalities repeat a name: {v}")
        return sorted(v)

    @model_validator(mode="after")
    def _weights_and_policies_only_on_encoders(self) -> "ModelConfig":
        others = {"fusion": self.fusion, "task": self.task, **{f"tokenizers.{m}": c for m, c in self.tokenizers.items()}}
        for where, c in others.items():
            if c.weights or c.train != "all":
                raise ValueError(f"{where}: weights and train apply to encoders only")
        return self

    @model_validator(mode="after")
    def _every_modality_has_an_encoder(self) -> "ModelConfig":
        missing = [m for m in self.modalities if m not in self.encoders]
        if missing:
            raise ValueError(f"encoders: no encoder given for modalities {missing}")
        extra = [m for m in self.encoders if m not in self.modalities]
        if extra:
            raise ValueError(f"encoders: given for {extra}, which are not in modalities {self.modalities}")
        return self

    @model_validator(mode="after")
    def _balance_needs_two_modalities(self) -> "ModelConfig":
        if self.balance.active and len(self.modalities) < 2:
            raise ValueError(f"balance: remedies for modality imbalance need two or more modalities; this model "
                             f"has {self.modalities} (leave aux_weight = 0 and modulation = 'none')")
        return self

    @model_validator(mode="after")
    def _missing_methods_need_what_they_use(self) -> "ModelConfig":
        if self.missing.active and len(self.modalities) < 2:
            raise ValueError(f"missing: imputation and distillation need two or more modalities; this model has "
                             f"{self.modalities} (leave impute_weight = 0 and distill_weight = 0)")
        if self.missing.distill and self.modality_dropout <= 0:
            raise ValueError("missing.distill_weight: distillation teaches the rows modality dropout thinned what "
                             "the model predicts on the rows as they came, so it needs modality_dropout > 0 "
                             f"(it is {self.modality_dropout})")
        if self.missing.unimodal_fallback and self.balance.aux_weight <= 0:
            raise ValueError("missing.unimodal_fallback: a row holding one modality is predicted by that modality's "
                             "unimodal auxiliary head, so it needs balance.aux_weight > 0 (the heads); it is "
                             f"{self.balance.aux_weight}")
        return self


class DataConfig(_Strict):
    dataset: str
    root: Path
    options: dict[str, Any] = Field(default_factory=dict)
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"
    num_workers: int = Field(0, ge=0, le=limits.COUNT)

    @field_validator("options")
    @classmethod
    def _sizes_in_range(cls, v: dict[str, Any]) -> dict[str, Any]:
        try:
            limits.check_options(v, names=limits.DATA_SIZE_KEYS)
        except limits.LimitError as exc:
            raise ValueError(str(exc)) from None
        return v


class AugmentConfig(_Strict):
    """View augmentation of training batches (``mmdomain.data.augment``): a random crop, flip and
    quarter turn per image/raster row, word dropout per report, drawn for each modality on its own.
    ``auto`` turns it on for self-supervised tasks (contrastive), whose features it keeps from
    matching the two views by where edges lie, and off for supervised ones."""

    mode: Literal["auto", "on", "off"] = "auto"
    crop_scale: float = Field(0.5, gt=0, le=1)  # smallest crop, as a share of the area
    flip: bool = True
    rotate90: bool = True
    word_dropout: float = Field(0.1, ge=0, lt=1)


class TrainConfig(_Strict):
    epochs: int = Field(5, ge=1)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    grad_clip: float | None = Field(1.0, gt=0)
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    bf16: bool = True  # autocast to bf16 on CUDA; ignored on CPU
    out_dir: Path = Path("runs/latest")
    progress: bool = True
    max_steps_per_epoch: int | None = Field(None, ge=1)
    init_from: Path | None = None  # a checkpoint: its modules that fit this model are loaded first
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    calibrate: bool = False  # fit temperatures per availability pattern on the val split after training


class RunConfig(_Strict):
    data: DataConfig
    model: ModelConfig | None = None  # None: the dataset's default model
    train: TrainConfig = Field(default_factory=TrainConfig)


_SHORT = reprlib.Repr(maxlevel=2, maxlist=4, maxtuple=4, maxdict=4, maxstring=60, maxother=60, maxlong=40)
_MAX_ERRORS = 8


def _format(exc: ValidationError, prefix: str = "") -> str:
    """One line per error (at most ``_MAX_ERRORS``), inputs shortened: a huge or alias-expanded
    value never reaches the message in full."""
    lines = []
    errors = exc.errors(include_url=False, include_context=False)
    for err in errors[:_MAX_ERRORS]:
        where = ".".join(_SHORT.repr(p) if not isinstance(p, (str, int)) else str(p)[:80] for p in err["loc"])
        got = f" (got {_SHORT.repr(err['input'])})" if "input" in err and not isinstance(err["input"], dict) else ""
        lines.append(f"{prefix}{where or '(top level)'}: {err['msg'][:300]}{got}")
    if len(errors) > _MAX_ERRORS:
        lines.append(f"and {len(errors) - _MAX_ERRORS} more")
    return "; ".join(lines)


def parse(model: type[BaseModel], data: Any, source: str = "config") -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_format(exc)}") from None


def _read_text(path: Path) -> str:
    """The file's text: at most ``limits.CONFIG_BYTES``, UTF-8 (a leading BOM is dropped)."""
    if path.stat().st_size > limits.CONFIG_BYTES:
        raise ConfigError(f"{path}: {path.stat().st_size:,} bytes; a config file may have at most "
                          f"{limits.CONFIG_BYTES:,}")
    with path.open("rb") as f:
        raw = f.read(limits.CONFIG_BYTES + 1)
    if len(raw) > limits.CONFIG_BYTES:
        raise ConfigError(f"{path}: more than {limits.CONFIG_BYTES:,} bytes; a config file may have at most that")
    try:
        return raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}: {raw[exc.start:exc.start + 4]!r})") from None


def _yaml_children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


_QUOTED_OR_COMMENT = re.compile(r'"(?:[^"\\\n]|\\.)*"|\'[^\'\n]*\'|(?:^|(?<=\s))#[^\n]*', re.M)
_BRACKETS = re.compile(r"[\[\]{}]")


def _flow_depth(text: str) -> int:
    """How deep ``[`` / ``{`` nest outside quotes and comments: a quick upper bound that refuses
    50,000 nested brackets before the (pure-Python, recursive) YAML parser meets them."""
    depth = deepest = 0
    for ch in _BRACKETS.findall(_QUOTED_OR_COMMENT.sub("", text)):
        depth = depth + 1 if ch in "[{" else max(depth - 1, 0)
        deepest = max(deepest, depth)
    return deepest


def _load_yaml(text: str) -> Any:
    """``yaml.safe_load``, but the composed node graph is measured first (each shared node once):
    aliases and merge keys that would expand past ``limits.CONFIG_NODES`` values, nest deeper
    than ``limits.CONFIG_DEPTH`` or refer to themselves are refused before anything is built."""
    if _flow_depth(text) > limits.CONFIG_DEPTH:
        raise limits.LimitError(f"nests deeper than {limits.CONFIG_DEPTH} levels")
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        limits.extent(node, _yaml_children)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def load_config(path: str | Path) -> RunConfig:
    """Read a RunConfig from ``.toml``, ``.yaml``/``.yml`` or ``.json``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if path.suffix not in {".toml", ".yaml", ".yml", ".json"}:
        raise ConfigError(f"{path}: config must be .toml, .yaml, .yml or .json")
    text = _read_text(path)
    kind = path.suffix[1:].upper().replace("YML", "YAML")
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(text)
            limits.extent(data, limits.data_children)
        else:
            data = _load_yaml(text)
    except limits.LimitError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{path}: nests deeper than {limits.CONFIG_DEPTH} levels") from None
    except (tomllib.TOMLDecodeError, yaml.YAMLError, ValueError) as exc:  # ValueError: e.g. a 5,000-digit integer
        raise ConfigError(f"{path}: not valid {kind}: {str(exc)[:500]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a table of settings at the top level")
    config = parse(RunConfig, data, str(path))
    if not config.data.root.is_absolute():  # relative paths are relative to the config file
        config.data.root = (path.parent / config.data.root).resolve()
    if not config.train.out_dir.is_absolute():
        config.train.out_dir = (path.parent / config.train.out_dir).resolve()
    if config.train.init_from is not None and not config.train.init_from.is_absolute():
        config.train.init_from = (path.parent / config.train.init_from).resolve()
    for comp in (config.model.encoders.values() if config.model else ()):
        if comp.weights and not Path(comp.weights).is_absolute():
            comp.weights = str((path.parent / comp.weights).resolve())
    return config


def contrastive_variant(data: dict[str, Any], **options: Any) -> dict[str, Any]:
    """A model-config dict (``ModelConfig``-shaped) with its task swapped for cross-modal
    contrastive pretraining (``options``: its proj_dim, temperature): no modality dropout (it would
    only remove pairs), no modality-balance remedies (no target for a modality to predict alone) and no
    missing-modality methods (nothing to distil).
    Encoders, fusion and tokenizers stay, so a supervised run's init-from loads them."""
    out = copy.deepcopy(data)
    out["task"] = {"name": "contrastive", "options": dict(options)}
    out["modality_dropout"] = 0.0
    out.pop("balance", None)
    out.pop("missing", None)
    return out


def single_modality(config: ModelConfig, keep: str) -> ModelConfig:
    """The same model restricted to one modality (its encoder, tokenizer and task)."""
    data = config.model_dump()
    data["modalities"] = [keep]
    data["encoders"] = {keep: data["encoders"][keep]}
    data["tokenizers"] = {k: v for k, v in data["tokenizers"].items() if k == keep}
    data["modality_dropout"] = 0.0
    data["balance"] = BalanceConfig().model_dump()  # one modality: nothing to balance
    data["missing"] = MissingConfig().model_dump()  # ... nor to impute or distil
    return parse(ModelConfig, data, f"single-modality model ({keep})")
