"""The core's last-resort answer to the ``partition`` hook (``trylast``).

(``detect_modality``'s fallback, matching ``ModalitySpec.extensions``, lives in
``Registry.detect_modality``: it needs the registry of the manager that asks.)"""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Any

from ..errors import DataError
from ..hookspecs import hookimpl


def sample_meta(dataset: Any, i: int) -> dict[str, Any]:
    """A sample's metadata, cheaply where the dataset offers ``sample_meta(i)``."""
    if hasattr(dataset, "sample_meta"):
        return dataset.sample_meta(i)
    return dataset[i].meta


@hookimpl(trylast=True)
def partition(dataset: Any, num_sites: int, site: int, scheme: str):
    if num_sites < 1 or not 0 <= site < num_sites:
        raise DataError(f"site must be in [0, {num_sites}), got {site}")
    n = len(dataset)
    if scheme == "iid":
        order = list(range(n))
        random.Random(1234 + num_sites).shuffle(order)
        return sorted(order[site::num_sites])
    if scheme.startswith("by-meta:"):
        key = scheme.split(":", 1)[1]
        groups: dict[Any, list[int]] = defaultdict(list)
        for i in range(n):
            groups[sample_meta(dataset, i).get(key)].append(i)
        keys = sorted(groups, key=str)
        if len(keys) != num_sites:
            raise DataError(f"partition {scheme!r}: the dataset has {len(keys)} distinct {key!r} values "
                            f"({keys[:10]}), not {num_sites} sites")
        return groups[keys[site]]
    return None
