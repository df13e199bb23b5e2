"""mmdomain.testing: the plugin contract, run in-process and through `mmdomain plugins check`."""

import subprocess
import sys
from pathlib import Path

from mmdomain.testing import PluginContract

ROOT = Path(__file__).resolve().parents[1]


class TestExampleContract(PluginContract):
    plugin_name = "example"


def test_plugins_check_command_passes_for_the_example():
    proc = subprocess.run([sys.executable, "-m", "mmdomain.cli", "plugins", "check", "example"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 of 1 plugins pass" in proc.stdout
    assert proc.stdout.count("PASS") == 5


def test_contract_fails_an_encoder_that_lies_about_out_dim(register_plugin):
    import torch

    from mmdomain import EncoderSpec, ModalitySpec, hookimpl
    from mmdomain.testing import run_contract

    class Liar(torch.nn.Module):
        out_dim = 32

        def __init__(self, modality, **_):
            super().__init__()
            self.lin = torch.nn.Linear(modality.channels, 7)

        def forward(self, x):
            return self.lin(x.flatten(2).mean(-1))

    class LyingPlugin:
        @hookimpl
        def register_modalities(self, register):
            register(ModalitySpec("thermal", "image", channels=2))

        @hookimpl
        def register_encoders(self, register):
            register(EncoderSpec("liar", ("image",), Liar, out_dim=32))

    manager = register_plugin(LyingPlugin(), name="liar")
    results = {r.check: r for r in run_contract(manager, "liar")}
    assert results["loaded"].ok
    assert not results["encoders_out_dim"].ok and "(2, 32)" in results["encoders_out_dim"].detail
