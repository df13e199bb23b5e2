"""Compose ``encoders -> fusion -> task`` from registry names and a ModelConfig.

Encoders run only on the rows where their modality is present (absent rows get a zero
embedding that the fusion heads mask out), so a missing modality costs nothing and its
fill values cannot reach the output. ``encode_absent=True`` runs every encoder on every row
instead (frozen ones without gradients), with no indexing that depends on which rows are
present: what per-sample-gradient DP needs (Opacus' hooks see the whole batch; torch.func's
vmap cannot trace data-dependent shapes).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterable

import torch
from torch import Tensor, nn

from .. import limits
from ..config import Component, ModelConfig
from ..data.sample import Batch
from ..errors import ConfigError, MMDomainError
from ..fusion.base import modality_dropout
from ..registry import Registry, Tokenizer
from . import balance, missing
from .norms import batch_to_group_norm
from .trainable import apply_policy, is_frozen
from .weights import load_encoder_weights, started_from


@dataclass
class ModelOutput:
    output: Any  # the task's output (tensor or dict of tensors)
    embeddings: dict[str, Tensor]
    present: dict[str, Tensor]  # after modality dropout
    fused: Tensor
    aux: dict[str, Tensor] | None = None  # unimodal auxiliary heads' outputs (training only; balance.aux_weight)
    # training only: each row's weighted imputation + distillation loss (``missing``), [B]
    missing_losses: Tensor | None = None


def _build(kind: str, component: Component, builder, *args, where: str = "", **extra) -> Any:
    """``builder(*args, **options, **extra)``, with every size option checked against
    ``mmdomain.limits`` first and the tensors it creates kept under the ceilings there.
    ``where`` names the config entry (``encoders.s2``) in errors."""
    where = f"{where} ({kind} {component.name!r})" if where else f"{kind} {component.name!r}"
    try:
        limits.check_options({**component.options, **extra}, where)
        with limits.allocation_guard(where):
            return builder(*args, **component.options, **extra)
    except limits.LimitError as exc:
        raise ConfigError(str(exc)) from None
    except TypeError as exc:  # an option the builder does not take
        raise ConfigError(f"{where}: {exc}") from None


def build_tokenizer(registry: Registry, component: Component, where: str = "") -> Tokenizer:
    return _build("tokenizer", component, registry.tokenizer(component.name).build, where=where)


def needs_fitting(config: ModelConfig, registry: Registry) -> bool:
    return any(registry.tokenizer(c.name).fit is not None and not c.fitted for c in config.tokenizers.values())


def fit_tokenizers(config: ModelConfig, registry: Registry, texts: dict[str, Iterable[str]]) -> ModelConfig:
    """Fit every tokenizer that has a ``fit`` and is not fitted yet; return the new config."""
    config = config.model_copy(deep=True)
    for m, comp in config.tokenizers.items():
        spec = registry.tokenizer(comp.name)
        if spec.fit is None or comp.fitted:
            continue
        if m not in texts:
            raise ConfigError(f"tokenizers.{m}: tokenizer {comp.name!r} must be fitted, but no texts were given")
        try:
            limits.check_options(comp.options, f"tokenizers.{m} ({comp.name!r})")
        except limits.LimitError as exc:
            raise ConfigError(str(exc)) from None
        comp.options = spec.fit(texts[m], **comp.options)
        comp.fitted = True
    return config


class FusionModel(nn.Module):
    """``encoders -> fusion -> task`` of one ``ModelConfig``.

    Encoders with weights load them from their local file when ``load_weights`` (not when a
    checkpoint is rebuilt: its state dict follows); each encoder's ``train`` policy then decides
    what trains. A fully frozen encoder runs without gradients and stays in eval mode.
    """

    def __init__(self, config: ModelConfig, registry: Registry, *, load_weights: bool = True):
        super().__init__()
        config = config.model_copy(deep=True)  # weights_sha256 is filled in below
        self.config = config
        self.modalities = list(config.modalities)
        self.modality_kinds = {m: registry.modality(m).kind for m in self.modalities}  # image, raster, text...
        self.modality_views = {m: dict(registry.modality(m).views) for m in self.modalities}  # augmentation bounds
        task_spec = registry.task(config.task.name)
        self.dense = task_spec.kind == "segmentation"
        self.tokenizers: dict[str, Tokenizer] = {}
        encoders: dict[str, nn.Module] = {}
        for m in self.modalities:
            mspec = registry.modality(m)
            comp = config.encoders[m]
            espec = registry.encoder(comp.name)
            if mspec.kind not in espec.kinds:
                raise ConfigError(
                    f"encoders.{m}: encoder {comp.name!r} takes {list(espec.kinds)} modalities, "
                    f"but {m!r} is {mspec.kind!r}; encoders for {mspec.kind}: "
                    f"{[s.name for s in registry.specs('encoder') if mspec.kind in s.kinds]}"
                )
            extra: dict[str, Any] = {}
            if mspec.kind == "text":
                tcomp = config.tokenizers.get(m)
                if tcomp is None:
                    raise ConfigError(f"tokenizers.{m}: text modality {m!r} needs a tokenizer; "
                                      f"available: {registry.names('tokenizer')}")
                spec = registry.tokenizer(tcomp.name)
                if spec.fit is not None and not tcomp.fitted:
                    raise ConfigError(f"tokenizers.{m}: {tcomp.name!r} must be fitted first (fit_tokenizers)")
                tok = build_tokenizer(registry, tcomp, where=f"tokenizers.{m}")
                self.tokenizers[m] = tok
                extra = {"vocab_size": tok.vocab_size, "pad_id": tok.pad_id}
            if self.dense and mspec.kind != "text":
                if not espec.supports_dense:
                    raise ConfigError(f"encoders.{m}: segmentation needs a dense encoder; {comp.name!r} is not")
                extra["dense"] = True
            encoders[m] = _build("encoder", comp, espec.build, mspec, where=f"encoders.{m}", **extra)
            if not isinstance(getattr(encoders[m], "out_dim", None), int):
                raise MMDomainError(f"encoder {comp.name!r} built a module without an int out_dim")
            if comp.weights and load_weights:
                comp.weights_sha256 = load_encoder_weights(encoders[m], comp.weights, where=f"encoders.{m}",
                                                           expected_sha256=comp.weights_sha256)
            elif load_weights:
                comp.weights_sha256 = started_from(encoders[m], comp.weights_sha256, where=f"encoders.{m}")
            try:
                with limits.allocation_guard(f"encoders.{m}.train ({comp.train})"):  # e.g. lora:R adapters
                    apply_policy(encoders[m], comp.train, where=f"encoders.{m}.train")
            except limits.LimitError as exc:
                raise ConfigError(str(exc)) from None
        self.encoders = nn.ModuleDict(encoders)
        self.dims = {m: e.out_dim for m, e in encoders.items()}
        self.fusion = _build("fusion", config.fusion, registry.fusion(config.fusion.name).build, dict(self.dims))
        self.uses_tokens = bool(getattr(self.fusion, "uses_tokens", False))
        if self.uses_tokens:
            self._check_token_head(config, registry)
        self.task = _build("task", config.task, task_spec.build, self.fusion.out_dim, dict(self.dims))
        self.aux_heads = balance.build_heads(config.balance, self.task, self.dims, config.task.name)
        missing.check_task(config.missing, self.task, config.task.name)
        self.translators = missing.build_translators(config.missing, self.dims)
        if config.batch_norm == "group":
            batch_to_group_norm([e for m, e in self.encoders.items() if m not in self.frozen]
                                + [self.fusion, self.task, self.aux_heads])

    def _check_token_head(self, config: ModelConfig, registry: Registry) -> None:
        """A token-level fusion head needs every encoder to return tokens, pooled (not dense) tasks and
        no imputation (the translators fill pooled embeddings, which this head does not read)."""
        where = f"fusion: {config.fusion.name!r} attends over the encoders' tokens"
        lacking = {m: c.name for m, c in config.encoders.items() if not registry.encoder(c.name).supports_tokens}
        if lacking:
            able = [s.name for s in registry.specs("encoder") if s.supports_tokens]
            raise ConfigError(f"{where}, but {', '.join(f'encoders.{m} ({n!r})' for m, n in lacking.items())} "
                              f"cannot return tokens; encoders that can: {able}")
        if self.dense:
            raise ConfigError(f"{where} and serves pooled tasks; segmentation needs a dense head "
                              "(concat, late, gated, cross_attention, hemis)")
        if config.missing.impute:
            raise ConfigError(f"{where}; missing.impute_weight fills pooled embeddings, which it does not read "
                              "(leave impute_weight = 0: absent tokens are masked out)")

    # -- inputs -----------------------------------------------------------------------
    def tokenize(self, batch: Batch) -> Batch:
        """Text lists -> token id tensors, using the model's own tokenizers."""
        inputs = dict(batch.inputs)
        for m, tok in self.tokenizers.items():
            value = inputs.get(m)
            if value is not None and not isinstance(value, Tensor):
                inputs[m] = tok(list(value), self.config.max_text_length)
        return Batch(inputs, batch.present, batch.target, batch.meta)

    def encode(self, batch: Batch) -> dict[str, Tensor]:
        return self.encode_tokens(batch)[0]

    def encode_tokens(self, batch: Batch) -> tuple[dict[str, Tensor], dict[str, tuple[Tensor, Tensor]] | None]:
        """Each modality's embedding and, for a token-level fusion head (``uses_tokens``), its token
        sequence ``(seq [B, T, D], valid [B, T])`` (the encoder's ``tokens``; absent rows all invalid),
        whose mean over the valid tokens is then the embedding; None for other heads."""
        embeddings: dict[str, Tensor | None] = {}
        tokens: dict[str, tuple[Tensor, Tensor]] | None = {} if self.uses_tokens else None
        device = next(self.parameters()).device
        for m in self.modalities:
            x, present = batch.inputs.get(m), batch.present[m]
            run = self.encoders[m].tokens if tokens is not None else self.encoders[m]
            every = self.config.encode_absent and x is not None  # every row, with no data-dependent indexing
            idx = None if every else present.nonzero().squeeze(1)
            if x is None or (idx is not None and idx.numel() == 0):
                embeddings[m] = None
                if tokens is not None:
                    tokens[m] = (torch.zeros((len(present), 1, self.dims[m]), device=device),
                                 torch.zeros((len(present), 1), dtype=torch.bool, device=device))
                continue
            whole = idx is None or idx.numel() == len(present)
            with torch.no_grad() if m in self.frozen else contextlib.nullcontext():
                h = run(x if whole else x[idx])
            if tokens is not None:
                seq, valid = h
                if not whole:
                    seq = seq.new_zeros((len(present), *seq.shape[1:])).index_copy(0, idx, seq)
                    valid = valid.new_zeros((len(present), *valid.shape[1:])).index_copy(0, idx, valid)
                tokens[m] = (seq, valid)
                keep = valid[..., None]
                h = torch.where(keep, seq, torch.zeros((), dtype=seq.dtype, device=seq.device)).sum(1) \
                    / keep.sum(1).clamp(min=1).to(seq.dtype)
                embeddings[m] = h
            elif whole:
                embeddings[m] = h
            else:
                full = h.new_zeros((len(present), *h.shape[1:]))
                embeddings[m] = full.index_copy(0, idx, h)
        return self._fill_empty(embeddings, batch, device), tokens

    def _fill_empty(self, embeddings: dict[str, Tensor | None], batch: Batch, device) -> dict[str, Tensor]:
        ref = next((e for e in embeddings.values() if e is not None), None)
        n = len(batch)
        for m, e in embeddings.items():
            if e is None:  # no row has it: a zero embedding, broadcast below when dense
                embeddings[m] = torch.zeros((n, self.dims[m]), device=device, dtype=ref.dtype if ref is not None else None)
        if self.dense:  # text (or pooled) embeddings broadcast over the largest feature map
            maps = [e for e in embeddings.values() if e.dim() > 2]
            if maps:
                size = max((e.shape[2:] for e in maps), key=lambda s: torch.Size(s).numel())
                for m, e in embeddings.items():
                    if e.dim() == 2:
                        embeddings[m] = e[(...,) + (None,) * len(size)].expand(*e.shape, *size)
                    elif e.shape[2:] != size:
                        embeddings[m] = nn.functional.interpolate(e, size=size, mode="bilinear", align_corners=False)
        return embeddings

    @property
    def frozen(self) -> set[str]:
        """Modalities whose encoder has no trainable parameter."""
        return {m for m, e in self.encoders.items() if is_frozen(e)}

    def train(self, mode: bool = True) -> "FusionModel":
        """Train mode, except what is frozen: a frozen encoder stays in eval mode, and so does every
        BatchNorm whose parameters are all frozen (``last:N``, ``norms``-less blocks, ``lora``), so
        training never drifts the (pretrained) statistics of a part that does not learn."""
        super().train(mode)
        if mode:
            for m in self.frozen:
                self.encoders[m].eval()
            for module in self.encoders.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm) and is_frozen(module) \
                        and any(True for _ in module.parameters()):
                    module.eval()
        return self

    def _head(self, embeddings: dict[str, Tensor], present: dict[str, Tensor],
              tokens: dict[str, tuple[Tensor, Tensor]] | None = None) -> tuple[Any, Tensor]:
        """Fusion and task on ``embeddings`` (absent ones imputed first when ``missing.impute_weight``;
        a token-level head reads ``tokens``)."""
        if self.translators is not None:
            embeddings, present = missing.impute(self.translators, embeddings, present)
        if self.uses_tokens:
            fused = self.fusion(embeddings, present, tokens=tokens)
        else:
            fused = self.fusion(embeddings, present)
        return self.task(fused, embeddings, present), fused

    def forward(self, batch: Batch) -> ModelOutput:
        batch = self.tokenize(batch)
        observed = present = batch.present
        if self.training and self.config.modality_dropout > 0:
            present = modality_dropout(present, self.config.modality_dropout)
        # imputation and distillation learn from what dropout hides: the encoders see the rows as they came
        whole = self.training and self.config.missing.active
        embeddings, tokens = self.encode_tokens(Batch(batch.inputs, observed if whole else present, batch.target,
                                                      batch.meta))
        output, fused = self._head(embeddings, present, tokens)
        aux = balance.aux_outputs(self.aux_heads, embeddings, present) \
            if self.training and self.aux_heads is not None else None
        if not self.training and self.config.missing.unimodal_fallback:
            output = balance.unimodal_fallback(output, balance.aux_outputs(self.aux_heads, embeddings, present),
                                               present)
        extra = self._missing_losses(embeddings, observed, present, output, tokens) if whole else None
        return ModelOutput(output, embeddings, present, fused, aux, extra)

    def _missing_losses(self, embeddings: dict[str, Tensor], observed: dict[str, Tensor],
                        present: dict[str, Tensor], output: Any,
                        tokens: dict[str, tuple[Tensor, Tensor]] | None = None) -> Tensor:
        """``[B]``: ``impute_weight`` x the translators' error on the pairs each row holds (before
        dropout) + ``distill_weight`` x the teacher's (the model on the rows as they came) pull."""
        cfg, total = self.config.missing, None
        if self.translators is not None:
            total = cfg.impute_weight * missing.impute_sample_losses(self.translators, embeddings, observed)
        if cfg.distill:
            with torch.no_grad():
                teacher, _ = self._head(embeddings, observed, tokens)
            term = cfg.distill_weight * missing.distill_sample_losses(
                self.task, output, teacher, missing.thinned_rows(observed, present), cfg.distill_temperature)
            total = term if total is None else total + term
        return total

    def loss(self, out: ModelOutput, batch: Batch) -> Tensor:
        """The task's loss, plus in training ``balance.aux_weight`` x the unimodal heads' (``balance``)
        and the imputation and distillation terms (``missing``)."""
        loss = self.task.loss(out.output, batch.target, out.present)
        if out.missing_losses is not None:
            loss = loss + out.missing_losses.mean()
        if out.aux is None:
            return loss
        aux = balance.aux_sample_losses(self.task, out.aux, batch.target, out.present)
        return loss + self.config.balance.aux_weight * aux.mean()

    def sample_losses(self, out: ModelOutput, batch: Batch) -> Tensor:
        """Each sample's loss on its own, ``[B]`` (the task's ``sample_losses``, plus its unimodal
        heads' term in training); what per-sample-gradient DP calls, so gradient modulation,
        which couples the samples, is refused here."""
        balance.check_per_sample(self.config.balance)
        losses = self.task.sample_losses(out.output, batch.target, out.present)
        if out.missing_losses is not None:
            losses = losses + out.missing_losses
        if out.aux is None:
            return losses
        aux = balance.aux_sample_losses(self.task, out.aux, batch.target, out.present)
        return losses + self.config.balance.aux_weight * aux

    def modulate_gradients(self, out: ModelOutput, batch: Batch) -> dict[str, Tensor]:
        """Between backward and the optimiser step: ``balance.modulation``'s scaling (and noise) of
        the dominant modality's encoder gradients; the coefficients (empty when off)."""
        return balance.modulate(self, out, batch)


def build_model(config: ModelConfig, registry: Registry, *, load_weights: bool = True) -> FusionModel:
    return FusionModel(config, registry, load_weights=load_weights)
