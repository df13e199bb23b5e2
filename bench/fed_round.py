"""Federated round overhead (issue #7): 3 sites, toy model.

Overhead per round = round wall time - the slowest site's own compute (reported by each site).
- simulation (Ray, `flwr run` on the local simulation connection): ours (evaluation fused into the
  train message) vs the stock shape (separate train + evaluate messages per round);
- deployment on loopback: ours (TLS + SuperNode auth + fused evaluation) vs Flower stock deployment
  settings (insecure, no auth, train + evaluate messages);
- bytes per round (down + up), and bf16 update compression with its accuracy cost (in-process).

    ./dev bench fed_round [--rounds 2] [--skip-deploy] [--skip-sim] [--sim-dataset medical] [--sim-full-sites]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from harness import Bench  # noqa: E402

from mmdomain_federated import task  # noqa: E402
from mmdomain_federated.deploy import LocalDeployment, make_site_keys  # noqa: E402
from mmdomain_federated.inprocess import LocalGrid  # noqa: E402
from mmdomain_federated.server_app import run_server  # noqa: E402
from mmdomain_federated.settings import Settings  # noqa: E402
from mmdomain_federated.simulate import run_simulation  # noqa: E402

SITES = 3


def overhead(history: list[dict]) -> float:
    later = history[1:] or history  # round 1 carries start-up (Ray workers, first imports)
    return statistics.median(h["seconds"] - h["slowest-site-seconds"] for h in later)


def makespan(times: list[float], slots: int) -> float:
    """Shortest time the sites' own compute can take on ``slots`` parallel CPUs (LPT; exact for 3 on 2)."""
    loads = [0.0] * max(1, slots)
    for t in sorted(times, reverse=True):
        loads[loads.index(min(loads))] += t
    return max(loads)


def scheduled_overhead(history: list[dict], slots: int) -> tuple[float, float]:
    """(overhead, compute): round wall time minus the makespan of the sites' compute on ``slots``
    CPUs. With 3 one-CPU sites on a 2-CPU machine one site must wait; that wait is not Flower's."""
    later = history[1:] or history
    spans = [makespan([float(m["site-seconds"]) for m in h["per-site"].values()], slots) for h in later]
    return (statistics.median(h["seconds"] - s for h, s in zip(later, spans)), statistics.median(spans))


def per_round(history: list[dict]) -> float:
    later = history[1:] or history
    return statistics.median(h["seconds"] for h in later)


def sim(rounds: int, fused: bool, dataset: str = "toy", quick: bool = True) -> list[dict]:
    out = Path(tempfile.mkdtemp(prefix="fedbench-sim-"))
    r = run_simulation(SITES, {"num-server-rounds": rounds, "out-dir": str(out), "fused-eval": fused,
                               "readiness": False, "dataset": dataset, "synthetic-quick": quick}, timeout=900)
    if r.returncode:
        raise RuntimeError(r.stdout[-2000:] + r.stderr[-2000:])
    return json.loads((out / "summary.json").read_text())["history"]


def deploy(rounds: int, secure: bool, fused: bool) -> list[dict]:
    from mmdomain.plugins import get_registry

    work = Path(tempfile.mkdtemp(prefix="fedbench-dep-"))
    sites = task.site_folders(task.synthetic_root(get_registry(), "toy", SITES, 0, True))[:SITES]
    dep = LocalDeployment(work)
    try:
        dep.start_superlink(secure=secure)
        for i, site in enumerate(sites):
            key = None
            if secure:
                key, pub = make_site_keys(work / "keys", f"site-{i}")
                dep.register(pub)
            dep.start_supernode(f"site-{i}", key, {"data-root": str(site)}, insecure=not secure, warm=secure)
        out = work / "run"
        r = dep.run_app({"num-server-rounds": rounds, "out-dir": str(out), "fused-eval": fused, "readiness": False,
                         "min-sites": SITES, "expected-sites": SITES}, timeout=900)
        if r.returncode or not (out / "summary.json").exists():
            raise RuntimeError(r.stdout[-2000:] + r.stderr[-2000:])
        return json.loads((out / "summary.json").read_text())["history"]
    finally:
        dep.close()


def compression(rounds: int) -> dict:
    res = {}
    for mode in ("none", "bf16"):
        s = Settings.from_run_config({"num-server-rounds": rounds, "compress": mode, "readiness": False})
        summary = run_server(LocalGrid(SITES, s.as_run_config()), s, Path(tempfile.mkdtemp(prefix="fedbench-c-")))
        res[mode] = {"bytes_up_per_round": summary["history"][-1]["bytes-up"],
                     "test_accuracy": round(summary["final"]["overall"]["accuracy"], 4)}
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--skip-sim", action="store_true")
    ap.add_argument("--skip-deploy", action="store_true")
    ap.add_argument("--sim-dataset", default="toy",
                    help="dataset of the simulation case (toy; medical = the default medical model)")
    ap.add_argument("--sim-full-sites", action="store_true",
                    help="the generator's full-size sites instead of its quick ones (more local compute per round)")
    args = ap.parse_args()
    bench = Bench("fed_round", "s/round")
    if not args.skip_sim:
        quick = not args.sim_full_sites
        stock, ours = sim(args.rounds, False, args.sim_dataset, quick), sim(args.rounds, True, args.sim_dataset, quick)
        local = statistics.median(h["slowest-site-seconds"] for h in (ours[1:] or ours))
        slots = min(SITES, os.cpu_count() or 1)  # one CPU per virtual site (client-resources num-cpus = 1)
        sched, span = scheduled_overhead(ours, slots)
        bench.record(f"simulation overhead s/round (3 sites, {args.sim_dataset}, {'quick' if quick else 'full'} sites)",
                     stock=round(overhead(stock), 3),
                     ours=round(overhead(ours), 3), ours_fraction_of_local_compute=round(overhead(ours) / local, 3),
                     local_compute_s=round(local, 3), cpu_slots=slots, sites_makespan_s=round(span, 3),
                     ours_overhead_beyond_makespan_s=round(sched, 3),
                     ours_overhead_beyond_makespan_fraction=round(sched / span, 3),
                     ratio=round(overhead(ours) / max(overhead(stock), 1e-9), 3),
                     round_s_stock=round(per_round(stock), 3), round_s_ours=round(per_round(ours), 3))
        bench.record("bytes per round (3 sites)", down=ours[-1]["bytes-down"], up=ours[-1]["bytes-up"])
    if not args.skip_deploy:
        stock = deploy(args.rounds, secure=False, fused=False)
        ours = deploy(args.rounds, secure=True, fused=True)
        bench.record("deployment overhead s/round (3 sites)", stock_insecure_2msg=round(overhead(stock), 3),
                     ours_tls_auth_fused=round(overhead(ours), 3),
                     ratio=round(overhead(ours) / max(overhead(stock), 1e-9), 3),
                     round_s_stock=round(per_round(stock), 3), round_s_ours=round(per_round(ours), 3))
    comp = compression(args.rounds)
    bench.record("bf16 update compression", bytes_up_fp32=comp["none"]["bytes_up_per_round"],
                 bytes_up_bf16=comp["bf16"]["bytes_up_per_round"], acc_fp32=comp["none"]["test_accuracy"],
                 acc_bf16=comp["bf16"]["test_accuracy"])
    bench.finish()


if __name__ == "__main__":
    main()
