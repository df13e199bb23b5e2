"""The server's event log: each line goes to ``events.log`` in the run folder (time-stamped,
appended across restarts), to an optional callback and, with ``echo``, to stdout; registered sites
are named (``site_names``). A finished round is a full JSON record in ``events.log`` and one short
progress line on the screen and to the callback (``progress_line``: round, sites answered, train
loss, validation metric, epsilon, seconds)."""

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

    def __call__(self, line: str, screen: str | None = None) -> None:
        """``line`` to ``events.log``; ``screen`` (default: ``line``) to stdout and the callback."""
        line = self.names.text(line)  # site 4711 -> site hospital-a (node 4711), when registered by name
        screen = line if screen is None else self.names.text(screen)
        stamp = time.strftime("%H:%M:%S")
        if self.echo:
            print(f"[mmdomain-fed {stamp}] {screen}", flush=True)
        self.events.write(f"{stamp} {line}\n")
        self.events.flush()
        if self.callback:
            self.callback(screen)

    def round(self, record: dict[str, Any], total: int | None = None) -> None:
        """A finished round: its record (strict JSON after ``round N: ``, floats shortened) in
        ``events.log``, its ``progress_line`` on the screen."""
        self(f"round {record['round']}: " + dumps({k: (round(v, 4) if isinstance(v, float) else v)
                                                   for k, v in self.names.record(record).items()}),
             progress_line(record, total))

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


def progress_line(record: dict[str, Any], total: int | None = None) -> str:
    """One short line for a finished round, e.g. ``round 2/5: 3 sites (1 dropped), train loss 1.451,
    val macro AUROC 0.567, epsilon 7.08, 17.6 s``: what is in the record, nothing else."""
    parts = [f"{record.get('sites', 0)} site{'s' if record.get('sites') != 1 else ''}"
             + (f" ({record['dropped']} dropped)" if record.get("dropped") else "")
             + (f" ({record['rejected']} rejected)" if record.get("rejected") else "")]
    if isinstance(record.get("train-loss"), (int, float)):
        parts.append(f"train loss {record['train-loss']:.3f}")
    for key, label in (("eval-macro_auroc", "val macro AUROC"), ("eval-loss", "val loss")):
        if isinstance(record.get(key), (int, float)):
            parts.append(f"{label} {record[key]:.3f}")
            break
    if isinstance(record.get("epsilon"), (int, float)):
        parts.append(f"epsilon {record['epsilon']:.2f}")
    local = [v for v in (record.get("local-epsilon") or {}).values() if isinstance(v, (int, float))]
    if local:
        parts.append(f"local epsilon <= {max(local):.2f}")
    if isinstance(record.get("seconds"), (int, float)):
        parts.append(f"{record['seconds']:.1f} s")
    rnd = f"{record.get('round')}/{total}" if total else str(record.get("round"))
    return f"round {rnd}: " + ", ".join(parts)


def metrics_brief(metrics: dict[str, Any]) -> str:
    """``macro AUROC 0.557, accuracy 0.306, loss 2.518 (n 72)`` from an overall metrics dict."""
    parts = [f"{label} {metrics[key]:.3f}" for key, label in (("macro_auroc", "macro AUROC"), ("accuracy", "accuracy"),
                                                                ("loss", "loss"))
             if isinstance(metrics.get(key), (int, float))]
    n = metrics.get("n")
    return (", ".join(parts) or "no metrics") + (f" (n {int(n)})" if isinstance(n, (int, float)) else "")
