import os
import socket
import urllib.request

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture
def no_network(monkeypatch):
    """Every way out to the network fails the test (weights must load from local files only)."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[1:] if args else kwargs}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def synth_sites(tmp_path_factory):
    """Three quick synthetic sites (one per vendor profile), shared by the read-only tests."""
    from mmdomain_medical.synthetic import generate

    return generate(tmp_path_factory.mktemp("synth"), num_sites=3, seed=3, studies_per_site=24)
