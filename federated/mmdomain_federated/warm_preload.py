"""Imported once by the warm SuperExec's fork server (``warm_exec``): everything a ClientApp
process needs, so each forked ClientApp starts with torch, flwr, the plugins and the app loaded."""

import torch  # noqa: F401
from flwr.supernode.cli import flwr_clientapp  # noqa: F401

from mmdomain.plugins import get_registry

from . import client_app, site_guard  # noqa: F401

get_registry()  # plugins discovered and imported (monai, pydicom, rasterio...) once
