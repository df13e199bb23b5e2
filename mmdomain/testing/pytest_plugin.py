"""pytest fixtures for mmdomain and its plugins (loaded through the ``pytest11`` entry point).

- ``mm_manager``: a fresh PluginManager (built-ins + installed plugins), isolated per test.
- ``mm_bare_manager``: built-ins only, no installed plugins.
- ``register_plugin``: ``register_plugin(obj, name=...)`` adds an in-test plugin to a fresh
  built-ins-only manager and returns that manager.
- ``fake_batch``: a Batch of 6 with an image and a text modality, some samples lacking each.
"""

from __future__ import annotations

import pytest
import torch

from ..data.sample import Batch
from ..plugins import PluginManager


@pytest.fixture
def mm_manager() -> PluginManager:
    return PluginManager()


@pytest.fixture
def mm_bare_manager() -> PluginManager:
    return PluginManager(load_entry_points=False)


@pytest.fixture
def register_plugin(mm_bare_manager):
    def _register(plugin: object, name: str = "in-test") -> PluginManager:
        mm_bare_manager.register(plugin, name=name)
        return mm_bare_manager

    return _register


@pytest.fixture
def fake_batch() -> Batch:
    g = torch.Generator().manual_seed(0)
    image_present = torch.tensor([True, True, False, True, False, True])
    text_present = torch.tensor([True, False, True, True, True, False])
    image = torch.randn(6, 1, 16, 16, generator=g) * image_present[:, None, None, None]
    text = [f"note {i} urgent" if p else "" for i, p in enumerate(text_present.tolist())]
    return Batch({"image": image, "text": text}, {"image": image_present, "text": text_present},
                 torch.randint(0, 3, (6,), generator=g), [{"id": i} for i in range(6)])
