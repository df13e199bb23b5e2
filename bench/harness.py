"""Shared benchmark harness: run an anchor and mmdomain side by side in one process,
repeat, report medians and the ratio (mmdomain / anchor), write JSON.

These machines are noisy, so a figure is only ever compared with the anchor measured
in the same run, alternating the two so drift hits both alike.

    from harness import Bench
    bench = Bench("dicom_read", "items/s")
    bench.compare("uncompressed", anchor=("pydicom", fn_a), ours=("mmdomain", fn_b), items=n, repeats=5)
    bench.finish()
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

RESULTS = Path(__file__).parent / "results"


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MB. Linux's VmHWM (``ru_maxrss`` survives
    ``execve``: a benchmark subprocess would report its parent's peak, e.g. test-data generation)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine() -> dict[str, Any]:
    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "platform": platform.platform(),
    }


def dataset_names(registry, text: str) -> list[str]:
    """The datasets of a ``--datasets`` comma list, each checked to have a synthetic generator before the
    first site is generated (else exit with the names available)."""
    from mmdomain.errors import UnknownComponentError

    datasets = [d for d in text.split(",") if d]
    for dataset in datasets:
        try:
            registry.synthetic_for(dataset)
        except UnknownComponentError as error:
            raise SystemExit(f"--datasets: {error}") from None
    return datasets


def each_dataset_and_seed(one_seed: Callable[..., dict[str, Any]], registry, args,
                          prefix: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(seeds, rows)``: ``one_seed(registry, dataset, seed, args, work, log)`` for every dataset of
    ``args.datasets`` and seed of ``args.seeds`` (comma lists), in one temporary work folder, each
    result's ``rows`` gathered into one list and the rest of it kept per seed."""
    import tempfile

    datasets = dataset_names(registry, args.datasets)
    seeds, rows = [], []
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        for dataset in datasets:
            for seed in (int(s) for s in args.seeds.split(",")):
                result = one_seed(registry, dataset, seed, args, Path(tmp), lambda line: print(line, flush=True))
                rows += result.pop("rows")
                seeds.append(result)
    return seeds, rows


def write_quality(name: str, args: Any, started: _dt.datetime, load: list[float], **fields: Any) -> Path | None:
    """A quality benchmark's results file (``args.out``, else ``results/<name>.json``; none for a
    ``--quick`` run without ``--out``): when, how, on what machine and under what load, and ``fields``."""
    if getattr(args, "quick", False) and args.out is None:
        return None
    out = Path(args.out or RESULTS / f"{name}.json")
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"benchmark": name, "date": started.isoformat(), "argv": sys.argv[1:],
                               "settings": {k: v for k, v in vars(args).items() if k != "out"}, "machine": machine(),
                               "load_average_1min_start_end": load,
                               "minutes": round((time.time() - started.timestamp()) / 60, 1), **fields}, indent=2))
    print(f"results: {out}", flush=True)
    return out


def json_options(ap: argparse.ArgumentParser, flag: str, text: str, *, per_dataset: bool = False) -> dict[str, Any]:
    """Generator options given as JSON on the command line (``per_dataset``: an object of such objects,
    keyed by dataset), checked at start-up, before any site is generated; bad input exits through ``ap.error``."""
    try:
        options = json.loads(text)
    except json.JSONDecodeError as error:
        ap.error(f"{flag} is not valid JSON ({error.msg} at character {error.pos}): {text!r}")
    what = "a JSON object of generator options per dataset, e.g. '{\"medical\": {...}}'" if per_dataset \
        else "a JSON object of generator options (name: value)"
    if not isinstance(options, dict) or (per_dataset and not all(isinstance(v, dict) for v in options.values())):
        ap.error(f"{flag} must be {what}; got {text!r}")
    return options


def timed(fn: Callable[[], Any]) -> float:
    gc.collect()
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


class Bench:
    def __init__(self, name: str, unit: str = "items/s"):
        self.name, self.unit = name, unit
        self.rows: list[dict[str, Any]] = []
        self.started = _dt.datetime.now(_dt.timezone.utc)
        print(f"# {name}  ({self.started:%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs)", flush=True)

    def compare(self, case: str, *, anchor: tuple[str, Callable[[], Any]], ours: tuple[str, Callable[[], Any]],
                items: int, repeats: int = 5, warmup: int = 1, target: str = "", higher_is_better: bool = True,
                extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Time ``anchor`` and ``ours`` alternately; each call processes ``items`` items."""
        (a_name, a_fn), (o_name, o_fn) = anchor, ours
        for _ in range(warmup):
            a_fn()
            o_fn()
        a_times, o_times = [], []
        for _ in range(repeats):
            a_times.append(timed(a_fn))
            o_times.append(timed(o_fn))
        a_med, o_med = statistics.median(a_times), statistics.median(o_times)
        if higher_is_better:
            a_val, o_val = items / a_med, items / o_med
        else:
            a_val, o_val = a_med, o_med
        ratio = o_val / a_val
        row = {"case": case, "anchor": a_name, "ours": o_name, "unit": self.unit if higher_is_better else "s",
               "anchor_value": round(a_val, 3), "ours_value": round(o_val, 3), "ratio": round(ratio, 3),
               "target": target, "repeats": repeats, "anchor_times": a_times, "ours_times": o_times,
               **(extra or {})}
        self.rows.append(row)
        print(f"{case:<40} {a_name:>14} {a_val:10.2f}  {o_name:>10} {o_val:10.2f}  ratio {ratio:6.2f}x"
              f"{'  (target ' + target + ')' if target else ''}", flush=True)
        return row

    def record(self, case: str, **values: Any) -> None:
        """A figure that is not an anchor comparison (memory, bytes per round...)."""
        self.rows.append({"case": case, **values})
        print(f"{case:<40} " + "  ".join(f"{k}={v}" for k, v in values.items()), flush=True)

    def finish(self) -> Path:
        RESULTS.mkdir(exist_ok=True)
        out = RESULTS / f"{self.name}.json"
        out.write_text(json.dumps({"benchmark": self.name, "date": self.started.isoformat(), "machine": machine(),
                                   "argv": sys.argv[1:], "peak_rss_mb": round(peak_rss_mb(), 1),
                                   "rows": self.rows}, indent=2))
        print(f"results: {out}", flush=True)
        return out
