"""``mmdomain fed compare``: does federated training beat every site's local-only model, and
how much of that is luck?

For each seed, fresh synthetic sites are written and each site trains the fusion model alone
for as many epochs as the federation has rounds x local epochs; then the federation trains (no
DP). All are scored on the pooled test set of all sites, with a paired bootstrap of that test set
(federated minus the best local-only model). Seeds vary both the data and the training, which
the bootstrap cannot; the summary counts the seeds in which federated wins. The steps are
``experiment``'s, shared with ``mmdomain demo``.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any, Callable

import click

from .experiment import (Clock, federated, local_only, main_metric, pooled_predictions, pooled_test, synthetic_sites,
                         versus_local)
from mmdomain.jsonout import dumps


def run_compare(*, dataset: str, seeds: list[int], out: Path, sites: int, rounds: int, local_epochs: int,
                engine: str, quick: bool, log: Callable[[str], None] = click.echo) -> dict[str, Any]:
    from mmdomain.plugins import get_registry

    registry = get_registry()
    clock = Clock(log)
    out.mkdir(parents=True, exist_ok=True)
    runs = []
    for seed in seeds:
        settings = synthetic_sites(registry, dataset, out / f"seed-{seed}" / "data", sites=sites, seed=seed,
                                   quick=quick, clock=clock, config={"num-server-rounds": rounds,
                                                                     "local-epochs": local_epochs, "device": "auto"})
        test = pooled_test(settings, registry, sites)
        clock.step(f"seed {seed}: local-only fusion model at each site ({rounds * local_epochs} epochs)")
        local, local_preds, _ = local_only(settings, registry, sites, rounds * local_epochs, test, log,
                                        single_modality_models=False)
        clock.step(f"seed {seed}: federated, {rounds} rounds ({engine})")
        fed, model = federated(settings, registry, sites, engine, 0.0, test, out / f"seed-{seed}" / "federated",
                               dp=False, noise=0.0, clip=0.0, max_epsilon=0.0, log=log)
        metric = main_metric(fed["overall"])
        versus = versus_local(model, metric, pooled_predictions(model, test, settings), local_preds, seed, log)
        per_site = {site: m["overall"][metric] for site, m in local["fusion"].items()}
        runs.append({"seed": seed, "metric": metric, "test_samples": len(test), "federated": fed["overall"][metric],
                     "local": per_site, "margin": fed["overall"][metric] - max(per_site.values()),
                     "bootstrap": versus})
        log(f"  seed {seed}: federated {metric} {runs[-1]['federated']:.3f}; local-only "
            + ", ".join(f"{k} {v:.3f}" for k, v in per_site.items()))
    margins = [r["margin"] for r in runs]
    result = {"dataset": dataset, "sites": sites, "rounds": rounds, "local_epochs": local_epochs, "engine": engine,
              "quick": quick, "runs": runs, "wins": sum(m > 0 for m in margins), "seeds": len(runs),
              "mean_margin": statistics.fmean(margins), "min_margin": min(margins), "max_margin": max(margins)}
    (out / "compare.json").write_text(dumps(result, indent=1))
    (out / "compare.md").write_text(markdown(result))
    log(markdown(result))
    return result


def markdown(result: dict[str, Any]) -> str:
    metric = result["runs"][0]["metric"]
    sites = list(result["runs"][0]["local"])
    lines = [f"# Federated vs local-only: {result['dataset']}", "",
             f"{result['sites']} synthetic sites, {result['rounds']} rounds x {result['local_epochs']} local epoch(s) "
             f"({result['engine']}); each local-only model trains {result['rounds'] * result['local_epochs']} epochs. "
             f"Pooled test {metric}.", "",
             "| seed | test samples | federated | " + " | ".join(f"local {s}" for s in sites)
             + " | margin | bootstrap interval | beats all in |",
             "|---|---|---|" + "---|" * len(sites) + "---|---|---|"]
    for r in result["runs"]:
        b = r["bootstrap"]
        boot = (f"[{b['interval'][0]:+.3f}, {b['interval'][1]:+.3f}] | {b['beats_all_share']:.0%}" if b else "- | -")
        lines.append(f"| {r['seed']} | {r['test_samples']} | {r['federated']:.3f} | "
                     + " | ".join(f"{r['local'][s]:.3f}" for s in sites) + f" | {r['margin']:+.3f} | {boot} |")
    lines += ["", f"Federated beats every site's local-only fusion model in {result['wins']} of {result['seeds']} "
              f"seeds; margin over the best of them: mean {result['mean_margin']:+.3f}, "
              f"min {result['min_margin']:+.3f}, max {result['max_margin']:+.3f}.", ""]
    return "\n".join(lines)


def _seeds(ctx, param, text: str) -> list[int]:
    try:
        seeds = [int(x) for x in text.replace(",", " ").split()]
    except ValueError:
        raise click.BadParameter(f"expected integers like 0,1,2; got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise click.BadParameter(f"expected distinct integers like 0,1,2; got {text!r}")
    return seeds


@click.command("compare")
@click.option("--dataset", required=True, help="Dataset with a synthetic generator (e.g. medical, s2s1_scenes).")
@click.option("--seeds", default="0,1,2", show_default=True, callback=_seeds,
              help="Comma-separated seeds (data and training).")
@click.option("--sites", default=3, show_default=True)
@click.option("--rounds", default=8, show_default=True, help="Federated rounds.")
@click.option("--local-epochs", default=1, show_default=True, help="Local epochs per round.")
@click.option("--engine", type=click.Choice(["in-process", "simulation"]), default="in-process", show_default=True,
              help="The Flower apps called in-process, or Flower's Ray simulation.")
@click.option("--quick", is_flag=True, help="The generators' small quick sites.")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Output folder (default: a new temp folder).")
def compare(dataset: str, seeds: list[int], sites: int, rounds: int, local_epochs: int, engine: str, quick: bool,
            out: Path | None) -> None:
    """Federated vs each site's local-only model over several seeds, with a paired bootstrap."""
    import tempfile

    from mmdomain.errors import MMDomainError
    from mmdomain.plugins import get_registry

    get_registry().synthetic_for(dataset)  # a clear error for a dataset without a generator
    if sites < 2:
        raise MMDomainError("--sites must be at least 2 for a federated run")
    out = (out or Path(tempfile.mkdtemp(prefix="mmdomain-compare-"))).resolve()
    run_compare(dataset=dataset, seeds=seeds, out=out, sites=sites, rounds=rounds, local_epochs=local_epochs,
                engine=engine, quick=quick)
    click.echo(f"\nreport: {out / 'compare.md'}")
