"""Tasks: classification (multi-class, multi-label), segmentation, contrastive alignment."""

from .base import Task, take
from .classification import MulticlassTask, MultilabelTask
from .contrastive import ContrastiveTask, RetrievalRecall
from .segmentation import SegmentationTask

__all__ = ["ContrastiveTask", "MulticlassTask", "MultilabelTask", "RetrievalRecall", "SegmentationTask", "Task", "take"]
