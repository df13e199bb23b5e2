"""mmdomain: multi-modal learning with missing modalities, across sites that cannot pool data.

The core knows no domain; plugins (entry-point group ``mmdomain``) register modalities,
encoders, tokenizers, fusion heads, tasks, datasets and synthetic-data generators.
"""

from importlib.metadata import PackageNotFoundError, version

from .data import Batch, Collate, Sample
from .errors import (
    CheckpointError,
    ConfigError,
    DataError,
    DuplicateNameError,
    InvalidSpecError,
    MMDomainError,
    PluginLoadError,
    UnknownComponentError,
)
from .hookspecs import hookimpl
from .plugins import PluginManager, get_plugin_manager, get_registry
from .registry import (
    DatasetSpec,
    EncoderSpec,
    FusionSpec,
    ModalitySpec,
    SyntheticSpec,
    TaskSpec,
    TokenizerSpec,
)

try:
    __version__ = version("mmdomain")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0+unknown"

__all__ = [
    "Batch", "CheckpointError", "Collate", "ConfigError", "DataError", "DatasetSpec", "DuplicateNameError",
    "EncoderSpec", "FusionSpec", "InvalidSpecError", "MMDomainError", "ModalitySpec", "PluginLoadError",
    "PluginManager", "Sample", "SyntheticSpec", "TaskSpec", "TokenizerSpec", "UnknownComponentError",
    "get_plugin_manager", "get_registry", "hookimpl",
]
