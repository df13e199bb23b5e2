"""Acquisition times from metadata tags or file names (Sentinel naming: ``YYYYMMDDTHHMMSS``)."""

from __future__ import annotations

import re
from datetime import datetime, timezone

_STAMP = re.compile(r"(20\d{6})T(\d{6})")
_ISO = re.compile(r"(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2}):(\d{2})")
TIME_TAGS = ("ACQUISITION_TIME", "acquisition_time", "DATETIME", "TIFFTAG_DATETIME", "SENSING_TIME", "datetime")


def parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    m = _ISO.search(text)
    if m:
        return datetime(*map(int, m.groups()), tzinfo=timezone.utc)
    m = _STAMP.search(text)
    if m:
        return datetime.strptime("".join(m.groups()), "%Y%m%d%H%M%S").replace(tzinfo=timezone.utc)
    m = re.search(r"(\d{4}):(\d{2}):(\d{2}) (\d{2}):(\d{2}):(\d{2})", text)  # TIFF DateTime
    if m:
        return datetime(*map(int, m.groups()), tzinfo=timezone.utc)
    return None


def time_from(tags: dict[str, str], name: str) -> datetime | None:
    for key in TIME_TAGS:
        t = parse_time(tags.get(key))
        if t is not None:
            return t
    return parse_time(name)
