"""Tasks: classification (multi-class, multi-label), segmentation, contrastive alignment."""

from typing import TYPE_CHECKING, Any

from .base import Task, take
from .classification import MulticlassTask, MultilabelTask
from .contrastive import ContrastiveTask
from .segmentation import SegmentationTask

if TYPE_CHECKING:  # pragma: no cover - typing only
    from .metrics import RetrievalRecall


def __getattr__(name: str) -> Any:
    """``RetrievalRecall`` is a torchmetrics ``Metric``: imported on first use, like torchmetrics."""
    if name == "RetrievalRecall":
        from .metrics import RetrievalRecall

        return RetrievalRecall
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ContrastiveTask", "MulticlassTask", "MultilabelTask", "RetrievalRecall", "SegmentationTask", "Task", "take"]
