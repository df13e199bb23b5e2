"""The server's event log: each line goes to ``events.log`` in the run folder (time-stamped,
appended across restarts), to an optional callback and, with ``echo``, to stdout; registered sites
are named (``site_names``)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from mmdomain.jsonout import dumps

from .site_names import SiteNames


class ServerLog:
    """Call it with a line. A context manager: the file is closed on exit."""

    def __init__(self, out_dir: Path, *, echo: bool = True, callback: Callable[[str], None] | None = None,
                 names: SiteNames | None = None):
        out_dir.mkdir(parents=True, exist_ok=True)
        self.echo, self.callback = echo, callback
        self.names = names or SiteNames()
        self.events = (out_dir / "events.log").open("a")

    def __call__(self, line: str) -> None:
        line = self.names.text(line)  # site 4711 -> site hospital-a (node 4711), when registered by name
        stamp = time.strftime("%H:%M:%S")
        if self.echo:
            print(f"[mmdomain-fed {stamp}] {line}", flush=True)
        self.events.write(f"{stamp} {line}\n")
        self.events.flush()
        if self.callback:
            self.callback(line)

    def round(self, record: dict[str, Any]) -> None:
        """A finished round's record (strict JSON after ``round N: ``), floats shortened."""
        self(f"round {record['round']}: " + dumps({k: (round(v, 4) if isinstance(v, float) else v)
                                                   for k, v in self.names.record(record).items()}))

    def readiness(self, report: dict[str, Any]) -> None:
        from .readiness import train_entry

        self("readiness report (counts noised, cells < 5 suppressed):")
        for site, rep in report.items():
            train = train_entry(rep)
            self(f"  site {site}: train n={train.get('n')} modalities={train.get('modalities')} "
                 f"patterns={train.get('patterns')}")

    def close(self) -> None:
        self.events.close()

    def __enter__(self) -> "ServerLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
