"""Sample, Batch, collate and dataset helpers."""

from .collate import Collate
from .sample import Batch, Sample, availability_pattern

__all__ = ["Batch", "Collate", "Sample", "availability_pattern"]
