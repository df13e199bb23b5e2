import os

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")

import pytest  # noqa: E402

from mmdomain_federated import task  # noqa: E402

FAST = {"max-steps": 3, "readiness": False, "batch-size": 16}


@pytest.fixture(scope="session")
def registry():
    from mmdomain.plugins import get_registry
    return get_registry()


@pytest.fixture
def settings_for():
    def make(**kw) -> task.Settings:
        cfg = {**FAST, **{k.replace("_", "-"): v for k, v in kw.items()}}
        return task.Settings.from_run_config(cfg)
    return make
