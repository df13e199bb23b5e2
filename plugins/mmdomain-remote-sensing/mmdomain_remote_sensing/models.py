"""Model configs for the plugin's datasets, and the one place where a dataset's options and a
site's band statistics reach the encoders.

- ``DEFAULT_MODEL`` (``s2s1_scenes``' default): S2 CNN + SAR CNN, concat fusion, multilabel over
  ``bands.SCENE_CLASSES`` (a scene folder's declared default classes, which the synthetic
  regions also use).
- ``BIGEARTHNET_MODEL`` / ``SEN12MS_MODEL``: the same encoders with those datasets' tasks
  (suggested, not declared as ``DatasetSpec.default_model``: the contract then requires a
  synthetic generator for the layout, which these two do not have yet).
- ``model_for(options, task=..., stats=...)``: a model config that fits a dataset's options. The
  S2 encoder's input follows ``s2_bands`` (``bands`` of ``s2_cnn``; ``in_channels`` of another
  encoder, e.g. the core's ``conv``), and per-band ``mean``/``std`` of a site's own data
  (``stats.band_stats``, ``SceneFolderDataset.band_stats``, ``mmdomain rs stats``) replace the
  declared defaults of the plugin's encoders::

      opts = {"s2_bands": ["B02", "B03", "B04", "B08"], "patch_size": 32}
      model = model_for(opts, stats=SceneFolderDataset(root, "train", **opts).band_stats())
      fit(parse(RunConfig, {"data": {"dataset": "s2s1_scenes", "root": root, "options": opts},
                            "model": model, ...}), registry)
"""

from __future__ import annotations

import copy
from typing import Any

from .bands import BIGEARTHNET19, SCENE_CLASSES, SEN12MS_CLASSES, s2_band_subset

#: Encoders of the plugin that normalise with ``mean``/``std`` options.
STATS_ENCODERS = ("s2_cnn", "sar_cnn")
#: the values of each dataset's own ``task=`` option (how it reads its labels; contrastive reads none)
SCENE_TASKS = ("multilabel", "segmentation", "contrastive")
SEN12MS_TASKS = ("multiclass", "segmentation", "contrastive")


def _model(task: dict[str, Any]) -> dict[str, Any]:
    return {"modalities": ["s1", "s2"],
            "encoders": {"s2": {"name": "s2_cnn", "options": {"out_dim": 64, "width": 16}},
                         "s1": {"name": "sar_cnn", "options": {"out_dim": 64, "width": 16}}},
            "fusion": {"name": "concat", "options": {"out_dim": 64}}, "task": task, "modality_dropout": 0.2}


DEFAULT_MODEL = _model({"name": "multilabel", "options": {"num_labels": len(SCENE_CLASSES),
                                                          "labels": list(SCENE_CLASSES)}})
BIGEARTHNET_MODEL = _model({"name": "multilabel", "options": {"num_labels": len(BIGEARTHNET19),
                                                              "labels": list(BIGEARTHNET19)}})
SEN12MS_MODEL = _model({"name": "multiclass", "options": {"num_classes": len(SEN12MS_CLASSES)}})


def model_for(options: dict[str, Any] | None = None, *, base: dict[str, Any] | None = None,
              task: dict[str, Any] | None = None, stats: dict[str, dict[str, list[float]]] | None = None
              ) -> dict[str, Any]:
    """A copy of ``base`` (default ``DEFAULT_MODEL``) fitted to the dataset ``options`` (its
    ``data.options``), with ``task`` instead of base's and each plugin encoder's ``mean``/``std``
    from ``stats`` (``{modality: {"mean": [...], "std": [...]}}``)."""
    cfg = copy.deepcopy(base if base is not None else DEFAULT_MODEL)
    if task is not None:
        cfg["task"] = copy.deepcopy(task)
    encoders = cfg["encoders"]
    bands = (options or {}).get("s2_bands")
    if bands is not None and "s2" in encoders:
        names = list(s2_band_subset(bands))
        enc = encoders["s2"].setdefault("options", {})
        if encoders["s2"]["name"] == "s2_cnn":
            enc.pop("in_channels", None)
            enc["bands"] = names
        else:
            enc["in_channels"] = len(names)
    for m, st in (stats or {}).items():
        if m in encoders and encoders[m]["name"] in STATS_ENCODERS:
            encoders[m].setdefault("options", {}).update(mean=list(st["mean"]), std=list(st["std"]))
    return cfg
