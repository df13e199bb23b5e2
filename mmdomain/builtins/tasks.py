"""Built-in tasks."""

from __future__ import annotations

from ..hookspecs import hookimpl
from ..registry import TaskSpec
from ..tasks import ContrastiveTask, MulticlassTask, MultilabelTask, SegmentationTask


@hookimpl
def register_tasks(register):
    register(TaskSpec("multiclass", "classification", MulticlassTask, "one label per sample; accuracy, F1, AUROC"))
    register(TaskSpec("multilabel", "classification", MultilabelTask,
                      "several labels per sample, -1 = not scored; macro AUROC, AP, F1"))
    register(TaskSpec("segmentation", "segmentation", SegmentationTask, "per-pixel classes; mIoU, pixel accuracy"))
    register(TaskSpec("contrastive", "contrastive", ContrastiveTask,
                      "symmetric InfoNCE between two modalities; retrieval Recall@1/5/10"))
