import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def synth_sites(tmp_path_factory):
    """Three quick synthetic sites (one per vendor profile), shared by the read-only tests."""
    from mmdomain_medical.synthetic import generate

    return generate(tmp_path_factory.mktemp("synth"), num_sites=3, seed=3, studies_per_site=24)
