"""The Flower environment for every federated test (set here only, before flwr is imported):
no telemetry, no update check, no runtime dependency installation. Subprocesses the tests start
(``mmdomain demo``, ``flwr run``) inherit it from ``os.environ``."""

import os

FLOWER_TEST_ENV = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
                   "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}
os.environ.update(FLOWER_TEST_ENV)

import pytest  # noqa: E402

from mmdomain_federated.settings import Settings  # noqa: E402

FAST = {"max-steps": 3, "readiness": False, "batch-size": 16, "local-batch-size": 0}  # DP tests: batch-size batches


@pytest.fixture(scope="session")
def registry():
    from mmdomain.plugins import get_registry
    return get_registry()


@pytest.fixture(scope="session")
def fast_config() -> dict:
    """The quick run config (a copy): test modules take it from this fixture, never by importing
    ``conftest``, which names another file when the whole suite is collected."""
    return dict(FAST)


@pytest.fixture
def settings_for():
    def make(**kw) -> Settings:
        cfg = {**FAST, **{k.replace("_", "-"): v for k, v in kw.items()}}
        return Settings.from_run_config(cfg)
    return make
