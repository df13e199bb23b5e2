"""Sample, Batch, collate, availability and the group split."""

from .availability import AvailabilityAware, availability_counts, availability_pattern, present_modalities
from .collate import Collate
from .declared import declared_options, write_declared_options
from .sample import Batch, Sample
from .split import split_of

__all__ = ["AvailabilityAware", "Batch", "Collate", "Sample", "availability_counts", "availability_pattern",
           "declared_options", "present_modalities", "split_of", "write_declared_options"]
