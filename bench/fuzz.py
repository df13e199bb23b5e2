"""The long fuzz run (issue #17 item 6): the test suite's fuzz families with many more mutants.

Each mutant of a real file (or a real federated reply) is read in a forked child under a memory
limit (2 GiB beyond its size at the fork) and a timeout (30 s) and classified by
``mmdomain.testing.fuzz``: ok / clear (the typed error or a refusal naming the file) / unnamed /
crash / abort / hang / memory. Families (their mutants and checks are the tests' own functions):

- ``checkpoints``: safetensors checkpoints of a toy model (``tests/test_fuzz.py``);
- ``dicom``, ``reports``, ``manifests``: DICOM (uncompressed, RLE, JPEG 2000), MIMIC / OpenI XML /
  SR reports, CSV / Parquet manifests through ``MedicalDataset`` (``plugins/mmdomain-medical/tests/
  test_fuzz_medical.py``; ``--resize`` reads ``ds[i]`` whole, MONAI's resize included);
- ``rasters``: Sentinel-2 JP2 bands and MTD XML, Sentinel-1 and land-cover GeoTIFFs through
  ``SceneFolderDataset`` (``plugins/mmdomain-remote-sensing/tests/test_fuzz_rasters.py``);
- ``replies``: federated train replies through the real aggregation (``federated/tests/
  test_fuzz_replies.py``).

Prints the table (one row per family: the counts, the largest child's peak RSS, how far a child
grew past its size at the fork, seconds) and every failure (its seed and mutation, the error and
its innermost frame, to replay it), and writes ``bench/results/fuzz.json``.

    ./dev bench fuzz [--mutants 500] [--seed 17] [--families dicom rasters ...] [--threads 1]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

for k, v in {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
             "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "HF_HUB_OFFLINE": "1",
             "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(k, v)  # as the tests' conftest files set them, before flwr is imported

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
for folder in ("tests", "plugins/mmdomain-medical/tests", "plugins/mmdomain-remote-sensing/tests", "federated/tests"):
    sys.path.insert(0, str(REPO / folder))

from harness import Bench  # noqa: E402

from mmdomain.testing import fuzz  # noqa: E402

FAMILIES = ("checkpoints", "dicom", "reports", "manifests", "rasters", "replies")


def _checkpoints(work: Path, n: int, seed: int, args):
    import test_fuzz as t
    from mmdomain.plugins import get_registry

    registry = get_registry()
    (work / "template").mkdir(parents=True)
    raw = t.make_checkpoint(work / "template", registry).read_bytes()
    (work / "mutants").mkdir()
    return t.checkpoint_cases(raw, work / "mutants", n, seed, registry=registry), t.ALLOWED


def _medical(kind: str):
    def cases(work: Path, n: int, seed: int, args):
        import test_fuzz_medical as t

        if args.resize:
            import monai.transforms  # noqa: F401 - once here, not in each child
        template = t.make_template(work / "template")
        for case in t.FAMILIES[kind](template, work / "good", 1, mutation=fuzz.unmutated, resize=args.resize):
            case.run()  # the unmutated files read (and what the children need is imported)
        return t.FAMILIES[kind](template, work / "mutants", n, seed, resize=args.resize), t.ALLOWED
    return cases


def _rasters(work: Path, n: int, seed: int, args):
    import test_fuzz_rasters as t
    from mmdomain_remote_sensing import handles

    template = t.make_template(work / "template")
    for case in t.raster_cases(template, work / "good", 1, mutation=fuzz.unmutated):
        case.run()
    handles.close_all()
    return t.raster_cases(template, work / "mutants", n, seed), t.ALLOWED


def _replies(work: Path, n: int, seed: int, args):
    import copy

    import test_fuzz_replies as t
    from mmdomain.plugins import get_registry

    honest = t.honest_replies(get_registry())
    t.aggregate_checked(honest, [copy.deepcopy(r) for r in honest[3]])
    return t.reply_cases(honest, n, seed), ()


SETUP = {"checkpoints": _checkpoints, "dicom": _medical("dicom"), "reports": _medical("reports"),
         "manifests": _medical("manifests"), "rasters": _rasters, "replies": _replies}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mutants", type=int, default=500, help="mutants per family")
    p.add_argument("--seed", type=int, default=17, help="the first mutant's seed (then seed+1, ...)")
    p.add_argument("--families", nargs="+", choices=FAMILIES, default=list(FAMILIES))
    p.add_argument("--threads", type=int, default=1, help="torch threads (each child uses one anyway)")
    p.add_argument("--timeout", type=int, default=fuzz.TIMEOUT, help="seconds a mutant may run")
    p.add_argument("--memory-gb", type=float, default=fuzz.MEMORY / 2**30,
                   help="GiB a child may map beyond its size at the fork")
    p.add_argument("--resize", action="store_true", help="medical: ds[i] whole, MONAI's resize included")
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    logging.disable(logging.WARNING)  # each skipped file is logged by its dataset: thousands of lines
    warnings.simplefilter("ignore")
    bench = Bench("fuzz", "mutants")
    started = time.monotonic()
    failures = []
    with tempfile.TemporaryDirectory(prefix="mmdomain-fuzz-") as tmp:
        for family in args.families:
            work = Path(tmp) / family
            t0 = time.monotonic()
            cases, allowed = SETUP[family](work, args.mutants, args.seed, args)
            setup = time.monotonic() - t0
            outcomes = []
            for case in cases:
                outcomes.append(fuzz.run_case(case, allowed=allowed, memory=int(args.memory_gb * 2**30),
                                              timeout=args.timeout))
            row = fuzz.tally(outcomes)
            bad = fuzz.failures(outcomes)
            failures += [{"family": family, "kind": o.kind, "label": o.label, "error": o.error, "where": o.where}
                         for o in bad]
            bench.record(family, **row, setup_s=round(setup, 1), wall_s=round(time.monotonic() - t0, 1))
            for o in bad:
                print(f"  {o.kind}: {o.label}\n    {o.error}\n    at {o.where}", flush=True)
    total = round(time.monotonic() - started, 1)
    print(f"\n{'family':<12}" + "".join(f"{k:>9}" for k in ("mutants", *fuzz.KINDS, "peak MB", "grew MB", "s")))
    for r in bench.rows:
        print(f"{r['case']:<12}" + "".join(f"{r[k]:>9}" for k in ("mutants", *fuzz.KINDS, "peak_rss_mb", "grew_mb",
                                                                    "wall_s")))
    print(f"total {total} s; failures: {len(failures)}")
    bench.record("total", seconds=total, failures=len(failures), seed=args.seed, mutants=args.mutants,
                 timeout_s=args.timeout, memory_gb=args.memory_gb, resize=args.resize)
    bench.rows.append({"case": "failures", "list": failures})
    bench.finish()


if __name__ == "__main__":
    main()
