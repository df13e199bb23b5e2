"""Utility against privacy: pooled-test macro AUROC of the federated model at epsilon in
{1, 3, 8} against the same federation without DP, per dataset, over seeds, with paired
bootstrap intervals (quality benchmark; not a timed test).

Arms (each trained federated, in-process, on the real ServerApp/ClientApp):
  no-dp         the default model, every parameter, no privacy
  central       central DP (site-level), noise planned for the target epsilon
  local-all     local DP-SGD (record-level) of every parameter, from scratch
  local-frozen  local DP-SGD of fusion + task only, on encoders pretrained self-supervised
                (contrastive, image<->text or S1<->S2) on a separate public site of unlabelled
                pairs (another seed of the generator): they cost no privacy and never travel
  local-pretrained  local DP-SGD of every parameter from that same pretrained start (the app's
                default learning rate unless --private-lr): the private counterpart of no-dp-pretrained

Target (issue #13): at epsilon <= 8, delta 1e-5, 3 sites of >= 2,000 samples, the private model
within 0.05 macro AUROC of the non-private one, in both domains.

    ./dev bench dp_utility --large            # 3 sites of ~2,000 each (the generators' large_options)
    ./dev bench dp_utility --large --datasets medical --seeds 0 --arms local-frozen --epsilons 8

The public site is another seed of the same generator with the sites' options, or larger with
``--public-options '{"scenes_per_site": 8}'`` (public corpora outsize one hospital's or region's).
``--pretrain supervised`` pretrains the whole model on the public site's labels instead.

Private arms train with ``--dp-batch`` (large Poisson-sampled batches, as DP-SGD wants); the
no-DP arm with ``--batch``. Rows are written to bench/results/dp_utility.json as they finish.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))
from harness import RESULTS, dataset_names, json_options  # noqa: E402

from mmdomain.bootstrap import paired_bootstrap  # noqa: E402
from mmdomain.checkpoint import load_checkpoint  # noqa: E402
from mmdomain.config import DataConfig, ModelConfig, RunConfig, TrainConfig, contrastive_variant, parse  # noqa: E402
from mmdomain.plugins import get_registry  # noqa: E402
from mmdomain.training import fit  # noqa: E402
from mmdomain_federated import task  # noqa: E402
from mmdomain_federated.experiment import main_metric, pooled_predictions, pooled_test, run_flower  # noqa: E402
from mmdomain_federated.settings import Settings  # noqa: E402

ARMS = ("local-frozen", "local-all", "central")  # "local-pretrained" (not a default): see the docstring
# "no-dp-pretrained" (not a default): the no-DP federation from the same pretrained start, every
# parameter trained: against it, what privacy costs at an equal starting point


def pretrain(registry, dataset: str, public_site: Path, out: Path, epochs: int, batch: int,
             kind: str = "contrastive") -> Path:
    """The default model pretrained on a public site: ``contrastive`` (its encoders, self-supervised
    on the site's pairs, no label read) or ``supervised`` (the whole model on the public labels, as
    ImageNet / BigEarthNet weights are made)."""
    model = json.loads(json.dumps(registry.dataset(dataset).default_model))
    model.pop("balance", None)  # the figures in bench/README were measured without modality-balance remedies
    if kind == "contrastive":
        model = contrastive_variant(model, proj_dim=64)
    config = RunConfig(data=DataConfig(dataset=dataset, root=public_site),
                       model=parse(ModelConfig, model), train=TrainConfig(epochs=epochs, batch_size=batch,
                                                                          out_dir=out, progress=False))
    return fit(config, registry, log=lambda *_: None).checkpoint


def arm_config(arm: str, epsilon: float, modalities: list[str], pretrained: Path,
               encoder_train: str = "none", clip: float = 1.0) -> dict[str, Any]:
    if arm == "central":
        return {"central-dp": True, "target-epsilon": epsilon, "clip-norm": 1.0}
    config = {"local-dp": True, "target-epsilon": epsilon, "local-clip-norm": clip}
    if arm == "local-frozen":
        config |= {"init-from": str(pretrained), "encoder-train": ";".join(f"{m}={encoder_train}" for m in modalities)}
    elif arm == "local-pretrained":
        config["init-from"] = str(pretrained)
    return config


def one_seed(registry, dataset: str, seed: int, args, work: Path, log, done: list) -> dict[str, Any]:
    gen = registry.synthetic_for(dataset)
    options = args.site_options if args.site_options is not None else \
        (gen.large_options if args.large else gen.quick_options)
    root = work / f"{dataset}-{seed}"
    gen.generate(root / "sites", num_sites=args.sites, seed=seed, **options)
    public_options = {**options, **args.public_options}
    public = gen.generate(root / "public", num_sites=1, seed=seed + 1000, **public_options)[0]
    base = {"dataset": dataset, "data-root": str(root / "sites"), "seed": seed, "num-server-rounds": args.rounds,
            "local-epochs": 1, "batch-size": args.batch, "min-sites": 2, "readiness": False, "resume": False,
            "target-delta": 1e-5}
    settings = Settings.from_run_config(base)
    test = pooled_test(settings, registry, args.sites)
    modalities = list(task.model_config(settings, registry).modalities)
    t0 = time.perf_counter()
    pretrained = pretrain(registry, dataset, public, root / "pretrain", args.pretrain_epochs, args.batch,
                          args.pretrain)
    log(f"  {dataset} seed {seed}: pretrained ({args.pretrain}) on the public site in {time.perf_counter() - t0:.0f}s")
    preds, rows = {}, []

    def score(checkpoint: Path, key: tuple) -> tuple[Any, str, float]:
        """The checkpoint's model, its main metric and value on the pooled test set; its predictions in preds."""
        model, _ = load_checkpoint(checkpoint, registry)
        result = task.evaluate_site(model, test, settings)
        metric = main_metric(result["overall"])
        preds[key] = pooled_predictions(model, test, settings)
        return model, metric, result["overall"].get(metric)

    if args.pretrain == "supervised":  # what the public model alone scores, before any private data
        model, metric, value = score(pretrained, ("public-only", None))
        rows.append({"dataset": dataset, "seed": seed, "arm": "public-only", "epsilon_target": None,
                     "epsilon_spent": None, "metric": metric, "value": value, "pretrain": args.pretrain})
        log(f"  {dataset} seed {seed} public-only : {metric} {rows[-1]['value']:.3f}")
    runs = [(a, e) for a in args.arms if a != "no-dp-pretrained"
            for e in (args.epsilons if a == "local-frozen" else args.other_epsilons)]
    for arm, eps in [("no-dp", None)] + [("no-dp-pretrained", None)] * ("no-dp-pretrained" in args.arms) + runs:
        config = {**base, **({} if eps is None else arm_config(arm, eps, modalities, pretrained,
                                                                         args.encoder_train, args.clip))}
        if arm == "no-dp-pretrained":
            config["init-from"] = str(pretrained)
        if eps is not None:
            config["local-batch-size"] = args.dp_batch
            if arm == "local-frozen":  # only fusion + task train: a larger step for the few noisy ones
                config["lr"] = args.head_lr
            elif args.private_lr and arm != "central":
                config["lr"] = args.private_lr
        t0 = time.perf_counter()
        out = root / f"{arm}-{eps}"
        summary = run_flower("in-process", args.sites, config, out, 0.0, lambda *_: None)
        model, metric, value = score(out / "model.safetensors", (arm, eps))
        spent = summary.get("epsilon") if arm == "central" else \
            max((summary.get("local-epsilon") or {}).values(), default=None)
        rows.append({"dataset": dataset, "seed": seed, "arm": arm, "epsilon_target": eps, "epsilon_spent": spent,
                     **({"encoder_train": args.encoder_train, "pretrain": args.pretrain} if arm == "local-frozen"
                        else {"pretrain": args.pretrain} if arm in ("no-dp-pretrained", "local-pretrained") else {}),
                     "metric": metric, "value": value, "rounds": summary.get("rounds"),
                     "seconds": round(time.perf_counter() - t0, 1)})
        log(f"  {dataset} seed {seed} {arm:<12} eps {eps!s:>4}: {metric} {rows[-1]['value']:.3f} "
            f"(spent {spent if spent is None else round(spent, 2)}, {rows[-1]['seconds']}s)")
        save(args, done + rows)
    ref_preds, target = preds[("no-dp", None)]
    for row in rows:
        if row["arm"] == "no-dp":
            continue
        p = preds[(row["arm"], row["epsilon_target"])]
        boot = paired_bootstrap(model.task, row["metric"], p[0], {"no-dp": ref_preds}, target, resamples=args.resamples,
                                seed=seed)
        row["minus_no_dp"] = boot["margin"]
        row["interval"] = boot["interval"]
        if ("no-dp-pretrained", None) in preds and row["arm"] not in ("no-dp-pretrained", "public-only"):
            same = paired_bootstrap(model.task, row["metric"], p[0], {"no-dp-pretrained": preds[("no-dp-pretrained",
                                    None)][0]}, target, resamples=args.resamples, seed=seed)
            row["minus_no_dp_pretrained"], row["interval_pretrained"] = same["margin"], same["interval"]
    return {"rows": rows, "test_rows": len(target), "site_options": options, "public_options": public_options}


def save(args, rows: list[dict[str, Any]]) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / args.results).write_text(json.dumps({"argv": sys.argv[1:], "date": time.strftime(
        "%Y-%m-%d %H:%M UTC", time.gmtime()), "rows": rows}, indent=2))


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| dataset | seed | arm | epsilon (target / spent) | metric | value | minus no-DP [95% CI] |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        eps = "-" if r["epsilon_target"] is None else f"{r['epsilon_target']:g} / {r['epsilon_spent']:.2f}"
        diff = f"{r['minus_no_dp']:+.3f} [{r['interval'][0]:+.3f}, {r['interval'][1]:+.3f}]" if "interval" in r else ""
        lines.append(f"| {r['dataset']} | {r['seed']} | {r['arm']} | {eps} | {r['metric']} | {r['value']:.3f} | {diff} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default="medical,s2s1_scenes")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epsilons", default="8,3,1", help="target epsilons of the local-frozen arm")
    ap.add_argument("--other-epsilons", default="8", help="target epsilons of the local-all and central arms")
    ap.add_argument("--arms", default=",".join(ARMS), help="of local-frozen, local-all, central, local-pretrained "
                    "(local DP-SGD of every parameter from the pretrained start) and no-dp-pretrained (no DP from "
                    "the pretrained start); no-dp always runs")
    ap.add_argument("--sites", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--batch", type=int, default=64, help="batch size of the no-DP arm")
    ap.add_argument("--dp-batch", type=int, default=256, help="expected Poisson batch size of the private arms")
    ap.add_argument("--private-lr", type=float, default=0.0,
                    help="learning rate of the local-all and local-pretrained arms (0: the app's default)")
    ap.add_argument("--clip", type=float, default=1.0, help="per-sample clip norm of the local DP arms")
    ap.add_argument("--head-lr", type=float, default=0.03, help="learning rate of the local-frozen arm's fusion + task")
    ap.add_argument("--large", action="store_true", help="the generators' large_options (~2,000 samples a site)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--results", default="dp_utility.json", help="file name under bench/results")
    ap.add_argument("--pretrain-epochs", type=int, default=5)
    ap.add_argument("--pretrain", choices=("contrastive", "supervised"), default="contrastive",
                    help="how the public site pretrains the local-frozen arm's model: self-supervised on its pairs, "
                         "or supervised on its labels (then a public-only row: that model before any private data)")
    ap.add_argument("--encoder-train", default="none",
                    help="training policy of the pretrained encoders in the local-frozen arm (none, norms, last:N, "
                         "lora:R); anything but none is trained privately too")
    ap.add_argument("--resamples", type=int, default=500)
    ap.add_argument("--site-options", default="", help="JSON generator options per site (default: its quick options)")
    ap.add_argument("--public-options", default="", help="JSON generator options of the public pretraining site over "
                    "the sites' (e.g. a larger one: public corpora outsize a hospital's or a region's)")
    args = ap.parse_args()
    args.site_options = json_options(ap, "--site-options", args.site_options) if args.site_options else None
    args.public_options = json_options(ap, "--public-options", args.public_options or "{}")
    args.epsilons = [float(e) for e in args.epsilons.split(",")]
    args.other_epsilons = [float(e) for e in args.other_epsilons.split(",") if e]
    args.arms = [a for a in args.arms.split(",") if a]
    if args.threads:
        torch.set_num_threads(args.threads)
    registry = get_registry()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="dp-utility-") as tmp:
        for dataset in dataset_names(registry, args.datasets):
            for seed in (int(s) for s in args.seeds.split(",")):
                rows += one_seed(registry, dataset, seed, args, Path(tmp), lambda line: print(line, flush=True),
                                 rows)["rows"]
                save(args, rows)
    print(markdown(rows))


if __name__ == "__main__":
    main()
