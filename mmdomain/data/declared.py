"""``dataset.json`` in a site folder: defaults the folder declares for its dataset's options
(e.g. the patch or image size a synthetic generator chose), below any option given explicitly."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mmdomain.errors import DataError

DECLARED_OPTIONS_FILE = "dataset.json"


def declared_options(root: str | Path) -> dict[str, Any]:
    """The options ``root/dataset.json`` declares ({} without one); a clear error when it is not a JSON object."""
    f = Path(root) / DECLARED_OPTIONS_FILE
    if not f.is_file():
        return {}
    try:
        data = json.loads(f.read_text())
    except ValueError as exc:
        raise DataError(f"{f}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise DataError(f"{f}: expected a JSON object of dataset options, got {type(data).__name__}")
    return data


def write_declared_options(root: str | Path, options: dict[str, Any]) -> Path:
    f = Path(root) / DECLARED_OPTIONS_FILE
    f.write_text(json.dumps(options, sort_keys=True) + "\n")
    return f
