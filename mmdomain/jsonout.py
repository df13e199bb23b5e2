"""JSON as every file of a run is written (training's ``metrics.jsonl`` and ``init-report.json``,
the local demo's ``summary.json``; the federated layer's ``summary.json``, ``state.json``,
``readiness.json``, privacy ledger, the round lines of ``events.log``, the demo's and
``fed compare``'s reports): strict JSON that any parser reads. Python's ``json`` would write a
non-finite float as a bare ``NaN`` / ``Infinity``, which is not JSON; here it is ``null``
(``finite``). Numpy scalars and arrays become plain numbers and lists; anything else ``json``
cannot write (a path) is written as its ``str``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np


def finite(value: Any) -> Any:
    """``value`` with every NaN / +-inf float as None, numpy values as Python ones, tuples as lists."""
    if isinstance(value, (np.generic, np.ndarray)):
        value = value.tolist()  # numpy scalar -> Python scalar, array -> (nested) list
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {(k.item() if isinstance(k, np.generic) else k): finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def dumps(value: Any, **kw) -> str:
    """``json.dumps`` of ``finite(value)``; never writes NaN or Infinity (``allow_nan=False``)."""
    return json.dumps(finite(value), allow_nan=False, default=str, **kw)


def write(path: Path, value: Any, *, indent: int = 1) -> Path:
    """``value`` as strict JSON in ``path``."""
    path.write_text(dumps(value, indent=indent))
    return path
