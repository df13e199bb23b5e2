"""What MLflow tracking adds to a federated run: the same federation untracked (anchor) and tracked
(the run, then ``log_fed_run`` of its folder into a local file store, as ``mmdomain fed run`` does),
alternated in one process; the ratio of their wall times, and the logging alone per round.

Target (issue #16): tracking adds <= 5% to a round. ``fed run`` logs once, after the last round,
so its cost per round is the logging time over the rounds; the first ``import mlflow`` of a process
is timed apart (a fresh interpreter), since every ``mmdomain fed run`` pays it once.

    ./dev bench tracking_overhead                     # medical, 3 sites, 5 rounds, 3 repeats (~5 min)
    ./dev bench tracking_overhead --dataset s2s1_scenes --rounds 3
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
os.environ.update({"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
                   "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"})
from harness import Bench  # noqa: E402

from mmdomain_federated import analysis  # noqa: E402
from mmdomain_federated.tracking import log_fed_run  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="medical")
    ap.add_argument("--sites", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    bench = Bench("tracking_overhead", "s")
    work = Path(tempfile.mkdtemp(prefix="track-bench-"))
    config = {"dataset": args.dataset, "num-server-rounds": args.rounds, "readiness": False}
    count = {"n": 0}
    log_seconds: list[float] = []

    def run(track: bool) -> None:
        count["n"] += 1
        folder = work / f"run-{count['n']}"
        analysis.federate(config, sites=args.sites, out_dir=folder, progress=None)
        if track:
            t0 = time.perf_counter()
            log_fed_run(folder, uri=(work / "mlruns").as_uri())
            log_seconds.append(time.perf_counter() - t0)
        shutil.rmtree(folder)

    try:
        row = bench.compare(f"{args.dataset}, {args.sites} sites, {args.rounds} rounds",
                            anchor=("untracked", lambda: run(False)), ours=("tracked", lambda: run(True)),
                            items=args.rounds, repeats=args.repeats, warmup=1, higher_is_better=False,
                            target="<= 1.05")
        per_round = statistics.median(row["anchor_times"]) / args.rounds
        logging_s = statistics.median(log_seconds[1:] or log_seconds)  # the warm-up's first log imports mlflow
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import mlflow"], check=True)
        cold_import = time.perf_counter() - t0
        bench.record("logging per run (warm)", seconds=round(logging_s, 2),
                     share_of_a_round=round(logging_s / args.rounds / per_round, 4),
                     round_seconds=round(per_round, 2))
        bench.record("fresh interpreter + import mlflow", seconds=round(cold_import, 2),
                     share_of_a_round_once_per_run=round(cold_import / args.rounds / per_round, 4))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    bench.finish()


if __name__ == "__main__":
    main()
