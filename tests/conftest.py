import os

import pytest

from mmdomain import ModalitySpec, hookimpl

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def registry():
    """The installed plugins' registry (entry points + built-ins), built once."""
    from mmdomain.plugins import PluginManager

    return PluginManager().registry


@pytest.fixture(scope="session")
def toy_site(tmp_path_factory, registry):
    root = tmp_path_factory.mktemp("toy")
    return registry.synthetic("toy").generate(root, num_sites=1, seed=3, samples_per_site=200)[0]


@pytest.fixture(scope="session")
def trained(tmp_path_factory, registry, toy_site):
    """A toy model trained for 6 epochs: shared by the training and checkpoint tests."""
    from mmdomain.config import DataConfig, RunConfig, TrainConfig
    from mmdomain.training import fit

    out = tmp_path_factory.mktemp("run")
    config = RunConfig(data=DataConfig(dataset="toy", root=toy_site),
                       train=TrainConfig(epochs=6, batch_size=16, lr=3e-3, out_dir=out, progress=False))
    return fit(config, registry, log=lambda *_: None)


@pytest.fixture
def one_thread():
    """Tiny tensors: one thread is faster, and a busy machine does not stall on thread hand-offs."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class _ImageAndText:
    """Two bare modalities for model tests: ``image`` (1 channel) and ``text``."""

    @hookimpl
    def register_modalities(self, register):
        register(ModalitySpec("image", "image", channels=1))
        register(ModalitySpec("text", "text"))


@pytest.fixture
def image_text(register_plugin):
    """A bare registry (the core's built-ins) plus the ``image`` and ``text`` modalities."""
    return register_plugin(_ImageAndText())
