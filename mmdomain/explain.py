"""Explanations: how much each modality moved a prediction, and where an image pathway looked.

**Modality contributions** are exact Shapley values over a row's present modalities, computed
with the presence masks (marking a modality absent is what the model sees when it is missing, so
no baseline image or text has to be invented). With ``v(S)`` the task's probabilities when only
the modalities in ``S`` are marked present,

    phi_m = sum over S of P \\ {m} of |S|! (|P| - |S| - 1)! / |P|!  (v(S + m) - v(S))

for the row's present set ``P``; an absent modality contributes 0, and the contributions of a row
sum exactly to ``v(P) - v({})``: the prediction minus the model's prediction with nothing
present (its learned missing tokens). The cost is ``2^M`` forward passes for ``M`` modalities.

**Saliency**: Grad-CAM (``monai.visualize.GradCAM``) of an image / raster encoder's last
convolution for one row, the other modalities held as they are.

**Attention maps** (token-level fusion head, ``fusion = "token_attention"``): for one row, how
much the tokens of another modality (a report's tokens, the S1 cells) attend, on average over
their valid tokens, to each cell of an image or raster's feature map, at the input's size.
"""

from __future__ import annotations

import itertools
import math
from typing import TYPE_CHECKING, Any, Iterable

import torch
from torch import Tensor, nn

from .data.availability import NO_MODALITY, row_patterns
from .data.sample import Batch
from .errors import MMDomainError

if TYPE_CHECKING:  # pragma: no cover
    from .models.compose import FusionModel

MAX_MODALITIES = 6  # 64 forward passes a batch


def _probabilities(model: FusionModel, batch: Batch, present: dict[str, Tensor]) -> Tensor:
    out = model(Batch(batch.inputs, present, batch.target, batch.meta))
    args = model.task.metric_inputs(out.output, batch.target, present)
    if args is None or not isinstance(args[0], Tensor) or args[0].dim() != 2:
        raise MMDomainError(f"explain: task {type(model.task).__name__} has no per-row probabilities to explain")
    return args[0].float()


@torch.no_grad()
def modality_contributions(model: FusionModel, batch: Batch) -> dict[str, Any]:
    """``{"contributions": {m: [B, K]}, "prediction": [B, K], "nothing_present": [B, K]}``: each
    row's Shapley contribution of every modality to each output probability (class or label)."""
    model.eval()
    names = list(model.modalities)
    if len(names) > MAX_MODALITIES:
        raise MMDomainError(f"explain: {len(names)} modalities need 2^{len(names)} passes; at most {MAX_MODALITIES}")
    present = {m: batch.present[m].bool() for m in names}
    value: dict[frozenset, Tensor] = {}
    for r in range(len(names) + 1):
        for subset in itertools.combinations(names, r):
            mask = {m: present[m] & (m in subset) for m in names}
            value[frozenset(subset)] = _probabilities(model, batch, mask)
    full = value[frozenset(names)]
    contributions = {m: torch.zeros_like(full) for m in names}
    n_present = torch.stack([present[m] for m in names]).sum(0)  # |P| per row
    for m in names:
        others = [o for o in names if o != m]
        for r in range(len(others) + 1):
            for subset in itertools.combinations(others, r):
                s = frozenset(subset)
                # rows where m and every modality of S are present: S is a subset of P \ {m}
                rows = present[m].clone()
                for o in subset:
                    rows &= present[o]
                size = len(subset)
                weight = torch.tensor([math.factorial(size) * math.factorial(int(p) - size - 1) / math.factorial(int(p))
                                       if p > size else 0.0 for p in n_present.tolist()])
                gain = value[s | {m}] - value[s]
                contributions[m] += (rows.float() * weight).unsqueeze(1).to(gain) * gain
    return {"contributions": contributions, "prediction": full, "nothing_present": value[frozenset()],
            "patterns": row_patterns(present)}


def summarise(model: FusionModel, loader: Iterable[Batch], *, device: torch.device | None = None) -> dict[str, Any]:
    """Mean absolute contribution of each modality per availability pattern (averaged over the
    outputs), and the share of the rows' total it makes, over every row of ``loader``."""
    device = device or next(model.parameters()).device
    sums: dict[str, dict[str, float]] = {}
    counts: dict[str, int] = {}
    for batch in loader:
        batch = batch.to(device)
        result = modality_contributions(model, batch)
        for i, pattern in enumerate(result["patterns"]):
            if pattern == NO_MODALITY:  # nothing to attribute
                continue
            counts[pattern] = counts.get(pattern, 0) + 1
            row = sums.setdefault(pattern, {m: 0.0 for m in model.modalities})
            for m, c in result["contributions"].items():
                row[m] += float(c[i].abs().mean())
    out = {}
    for pattern, row in sorted(sums.items()):
        total = sum(row.values()) or 1.0
        out[pattern] = {"n": counts[pattern],
                        "mean_abs_contribution": {m: v / counts[pattern] for m, v in row.items()},
                        "share": {m: v / total for m, v in row.items()}}
    return out


def _last_conv(module: nn.Module, prefix: str) -> str:
    name = None
    for sub_name, sub in module.named_modules():
        if isinstance(sub, (nn.Conv2d, nn.Conv3d)):
            name = sub_name
    if name is None:
        raise MMDomainError(f"explain: encoder {prefix!r} has no convolution for Grad-CAM")
    return f"{prefix}.{name}"


class _OneModality(nn.Module):
    """``x -> logits`` of one row, the other modalities of ``batch`` held fixed (for Grad-CAM)."""

    def __init__(self, model: FusionModel, batch: Batch, modality: str):
        super().__init__()
        self.model, self.batch, self.modality = model, batch, modality

    def forward(self, x: Tensor) -> Tensor:
        inputs = dict(self.batch.inputs)
        inputs[self.modality] = x
        out = self.model(Batch(inputs, self.batch.present, self.batch.target, self.batch.meta))
        return out.output.float()


def gradcam(model: FusionModel, batch: Batch, modality: str, class_index: int) -> Tensor:
    """Grad-CAM of ``modality``'s encoder for row 0 of ``batch`` and output ``class_index``:
    ``[H, W]`` in [0, 1] at the input's size."""
    from monai.visualize import GradCAM

    x = batch.inputs[modality]
    if not isinstance(x, Tensor) or x.dim() != 4:
        raise MMDomainError(f"explain: Grad-CAM needs an image or raster modality, {modality!r} is not one")
    model.eval()
    layer = _last_conv(model.encoders[modality], f"model.encoders.{modality}")
    cam = GradCAM(nn_module=_OneModality(model, batch, modality), target_layers=layer)
    with torch.enable_grad():
        heat = cam(x[:1].clone().requires_grad_(True), class_idx=class_index)
    return heat[0, 0].detach().float().clamp(0, 1)


@torch.no_grad()
def attention_maps(model: FusionModel, batch: Batch) -> dict[str, Tensor]:
    """``{"<source>-><image modality>": [H, W]}`` for row 0 of ``batch`` under a token-level
    fusion head (empty for other heads): the last layer's attention of the source modality's valid
    tokens to the image's feature-map cells, averaged over those tokens, upsampled to the image and
    scaled to [0, 1] (a relative map: what the tokens attended to most is 1)."""
    if not getattr(model, "uses_tokens", False):
        return {}
    model.eval()
    row = Batch({m: (None if v is None else v[:1]) for m, v in batch.inputs.items()},
                {m: p[:1] for m, p in batch.present.items()},
                None if batch.target is None else batch.target[:1], batch.meta[:1])
    model.fusion.record_attention = True
    try:
        model(row)
        weights, valids = model.fusion.last_attention or {}, model.fusion.last_valid or {}
    finally:
        model.fusion.record_attention = False
        model.fusion.last_attention = model.fusion.last_valid = None
    maps = {}
    for key, w in weights.items():
        src, dst = key.split("->")
        x = row.inputs.get(dst)
        if model.modality_kinds[dst] not in ("image", "raster") or not isinstance(x, Tensor) or x.dim() != 4:
            continue
        valid = valids[src][0]  # the source's real tokens: present, not padding
        if not bool(row.present[dst][0]) or not bool(valid.any()):
            continue
        cells = w[0][valid].mean(0)  # [T_dst]
        height, width = x.shape[-2:]
        h = max(1, round(math.sqrt(cells.numel() * height / width)))
        if cells.numel() % h:
            continue  # not a grid of the image's aspect: nothing to overlay
        grid = cells.view(1, 1, h, cells.numel() // h).float()
        up = torch.nn.functional.interpolate(grid, size=(height, width), mode="bilinear", align_corners=False)[0, 0]
        maps[key] = (up - up.min()) / (up.max() - up.min()).clamp(min=1e-12)
    return maps
