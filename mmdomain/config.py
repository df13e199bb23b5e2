"""Typed run configuration, loadable from TOML or YAML.

A bad value is reported as ``ConfigError`` naming the field (``train.lr: ...``); an
unknown key is an error too, so a misspelling is never silently ignored.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

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

    @field_validator("train")
    @classmethod
    def _policy(cls, v: str) -> str:
        from .models.trainable import TrainPolicy

        try:
            TrainPolicy.parse(v)
        except MMDomainError as exc:
            raise ValueError(str(exc)) from None
        return v


class ModelConfig(_Strict):
    modalities: list[str] = Field(min_length=1)
    encoders: dict[str, Component]
    tokenizers: dict[str, Component] = Field(default_factory=dict)
    fusion: Component = Field(default_factory=lambda: Component(name="concat"))
    task: Component
    modality_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    encode_absent: bool = False  # run encoders on zero-filled rows too (needed by per-sample-gradient DP)
    max_text_length: int = Field(128, ge=1)

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


class DataConfig(_Strict):
    dataset: str
    root: Path
    options: dict[str, Any] = Field(default_factory=dict)
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"
    num_workers: int = Field(0, ge=0)


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


class RunConfig(_Strict):
    data: DataConfig
    model: ModelConfig | None = None  # None: the dataset's default model
    train: TrainConfig = Field(default_factory=TrainConfig)


def _format(exc: ValidationError, prefix: str = "") -> str:
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        got = f" (got {err['input']!r})" if "input" in err and not isinstance(err["input"], dict) else ""
        lines.append(f"{prefix}{where}: {err['msg']}{got}")
    return "; ".join(lines)


def parse(model: type[BaseModel], data: Any, source: str = "config") -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_format(exc)}") from None


def load_config(path: str | Path) -> RunConfig:
    """Read a RunConfig from ``.toml``, ``.yaml``/``.yml`` or ``.json``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    text = path.read_text()
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(text)
        elif path.suffix in {".yaml", ".yml", ".json"}:
            data = yaml.safe_load(text)
        else:
            raise ConfigError(f"{path}: config must be .toml, .yaml, .yml or .json")
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: not valid {path.suffix[1:].upper()}: {exc}") from None
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


def single_modality(config: ModelConfig, keep: str) -> ModelConfig:
    """The same model restricted to one modality (its encoder, tokenizer and task)."""
    data = config.model_dump()
    data["modalities"] = [keep]
    data["encoders"] = {keep: data["encoders"][keep]}
    data["tokenizers"] = {k: v for k, v in data["tokenizers"].items() if k == keep}
    data["modality_dropout"] = 0.0
    return parse(ModelConfig, data, f"single-modality model ({keep})")
