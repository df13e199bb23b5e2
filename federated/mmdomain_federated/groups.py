"""Parameter groups and the one modality-aware weighting rule (no flwr, no torch).

Each state_dict key belongs to a group (``param_group``): ``encoder:<m>`` (the encoder of
modality ``m``, and its unimodal auxiliary head), ``fusion`` or ``task``. A site trains and sends the groups of what it holds
(``trained_groups``): an encoder per modality it has samples of, fusion and task when it has
samples at all.

``weight(group, counts, n, ...)`` is how much a site's parameters of ``group`` count in the
average, 0 when they do not enter it. Plain and modality-aware aggregation in clear
(``aggregation.contributors``) and the weights a site encodes under SecAgg+
(``secure.group_weights``) all use it; ``fusion_from`` decides, from what the sites hold,
whether the fusion head comes from the multi-modal sites (from the round's updates in clear,
from the readiness report under SecAgg+, where the server sees no single update):

- ``encoder:<m>``: the site's count of samples holding ``m``;
- ``fusion``: its sample count if it holds >= 2 modalities, or if no site does
  (``fusion_from = "all"``, see ``fusion_from``);
- ``task``: its sample count;
- with ``plain`` (stock FedAvg weighting): its sample count for every group it sent.
"""

from __future__ import annotations

from typing import Iterable, Mapping

GROUP_FUSION, GROUP_TASK = "fusion", "task"
ENCODER_PREFIX = "encoder:"
#: ``fusion_from``: the fusion head is averaged over the sites holding >= 2 modalities ...
FUSION_FROM_MULTI = "multi"
#: ... or, when no site does, over every site that trained.
FUSION_FROM_ALL = "all"


def encoder_group(modality: str) -> str:
    return f"{ENCODER_PREFIX}{modality}"


def param_group(name: str) -> str:
    """``encoder:<modality>``, ``fusion`` or ``task`` for a state_dict key. A modality's unimodal
    auxiliary head (``aux_heads.<modality>``, ``balance.aux_weight``) goes with its encoder: only
    the sites holding the modality train it. The cross-modal translators (``translators``,
    ``missing.impute_weight``) go with the fusion head: they learn from rows holding two modalities."""
    head = name.split(".", 2)
    if head[0] in ("encoders", "aux_heads") and len(head) > 1:
        return encoder_group(head[1])
    if head[0] in ("fusion", "translators"):
        return GROUP_FUSION
    return GROUP_TASK


def held(counts: Mapping[str, int]) -> set[str]:
    """The modalities a site holds: those it has samples of."""
    return {m for m, c in counts.items() if c > 0}


def trained_groups(counts: Mapping[str, int], n: int) -> set[str]:
    """The groups a site with per-modality ``counts`` and ``n`` samples trains and sends."""
    groups = {encoder_group(m) for m in held(counts)}
    return groups | ({GROUP_FUSION, GROUP_TASK} if n > 0 else set())


def weight(group: str, counts: Mapping[str, int], n: int, *, plain: bool = False,
           fusion_from: str = FUSION_FROM_MULTI) -> float:
    """The weight of the ``group`` parameters of a site with per-modality ``counts`` and ``n``
    samples in the average; 0 = they do not enter it."""
    if plain:  # stock FedAvg: every site that sent the group, by sample count
        return float(n) if n > 0 else 0.0
    if group.startswith(ENCODER_PREFIX):  # the sites holding the modality, by their samples of it
        return float(max(counts.get(group.removeprefix(ENCODER_PREFIX), 0), 0))
    if n <= 0:
        return 0.0
    if group == GROUP_FUSION and fusion_from != FUSION_FROM_ALL and len(held(counts)) < 2:
        return 0.0  # a site with one modality does not learn how to combine them
    return float(n)


def fusion_from(held_per_site: Iterable[set[str]]) -> str:
    """``multi`` when some site holds >= 2 modalities (they learn how to combine them), else ``all``."""
    return FUSION_FROM_MULTI if any(len(h) >= 2 for h in held_per_site) else FUSION_FROM_ALL
