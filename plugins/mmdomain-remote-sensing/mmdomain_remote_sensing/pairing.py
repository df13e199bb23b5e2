"""Pair each S2 acquisition with the nearest S1 acquisition in time that covers it."""

from __future__ import annotations

from dataclasses import dataclass

from .grid import intersect, to_crs
from .s1 import S1Acquisition
from .s2 import S2Product


@dataclass
class Pair:
    s2: S2Product
    s1: S1Acquisition | None
    days_apart: float | None
    reason: str  # why s1 is None ("" when paired)


def days_between(a, b) -> float | None:
    if a is None or b is None:
        return None
    return abs((a - b).total_seconds()) / 86400.0


def pair_acquisitions(s2_products: list[S2Product], s1_acquisitions: list[S1Acquisition],
                      tolerance_days: float = 6.0) -> list[Pair]:
    """For each S2 product: the S1 acquisition overlapping it that is closest in time, if within
    ``tolerance_days``; otherwise no S1, with the reason (none overlaps / nearest is N days away /
    missing acquisition time)."""
    pairs = []
    for s2 in s2_products:
        overlapping = [a for a in s1_acquisitions if intersect(to_crs(a.bounds, a.crs, s2.crs), s2.bounds)]
        if not overlapping:
            pairs.append(Pair(s2, None, None, "no S1 acquisition overlaps this S2 scene"))
            continue
        timed = [(days_between(a.time, s2.time), a) for a in overlapping]
        known = sorted(((d, a.key, a) for d, a in timed if d is not None), key=lambda t: (t[0], t[1]))
        if not known:
            pairs.append(Pair(s2, None, None, "S1 or S2 acquisition time unknown (no tag, no YYYYMMDDTHHMMSS in "
                                              "the file name); cannot pair in time"))
            continue
        days, _, best = known[0]
        if days > tolerance_days:
            pairs.append(Pair(s2, None, days, f"nearest overlapping S1 is {days:.1f} days from S2 "
                                              f"(tolerance {tolerance_days:g} days)"))
            continue
        pairs.append(Pair(s2, best, days, ""))
    return pairs
