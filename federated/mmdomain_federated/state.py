"""Server checkpoints: global model + strategy state + accountant, written atomically each round.

The weights go to ``global-<round>.npz`` first; ``state.json`` (renamed into place) names them
and is the commit point, so a crash at any moment leaves a consistent last checkpoint.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from mmdomain.fusion.base import upgrade_token_names

from mmdomain.jsonout import dumps


def save_state(out_dir: Path, round_: int, weights: dict[str, np.ndarray], state: dict[str, Any]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    name = f"global-{round_}.npz"
    tmp = out_dir / (name + ".tmp")
    with tmp.open("wb") as f:
        np.savez(f, **weights)
    os.replace(tmp, out_dir / name)
    payload = {"round": round_, "weights": name, **state}
    tmp = out_dir / "state.json.tmp"
    tmp.write_text(dumps(payload, indent=1))
    os.replace(tmp, out_dir / "state.json")
    for old in out_dir.glob("global-*.npz"):
        if old.name != name:
            old.unlink(missing_ok=True)


def load_state(out_dir: Path) -> tuple[int, dict[str, np.ndarray], dict[str, Any]] | None:
    path = out_dir / "state.json"
    if not path.exists():
        return None
    state = json.loads(path.read_text())
    with np.load(out_dir / state["weights"]) as z:
        weights = upgrade_token_names({k: z[k] for k in z.files})  # checkpoints of older versions
    return int(state["round"]), weights, state
