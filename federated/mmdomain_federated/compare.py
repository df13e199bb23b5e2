"""``mmdomain fed compare``: does federated training beat every site's local-only model, and
how much of that is luck?

For each seed, fresh synthetic sites are written and each site trains the fusion model alone
for as many epochs as the federation has rounds x local epochs; then the federation trains (no
DP). All are scored on the pooled test set of all sites, with a paired bootstrap of that test set
(federated minus the best local-only model). Seeds vary both the data and the training, which
the bootstrap cannot; the summary counts the seeds in which federated wins. Every model is also
scored on each site's own test set (``cross_site``): per seed the matrix, and each model's worst
site and spread over the sites, local-only against global. The steps are ``experiment``'s,
shared with ``mmdomain demo``.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any, Callable

import click

from mmdomain.tracking import options as tracking_options

from .cross_site import CrossSite, describe, local_vs_global, personal_vs_global, score_text
from .settings import PERSONALISATION
from .tracking import COMPARE_EXPERIMENT
from .experiment import (Clock, federated, local_only, main_metric, pooled_predictions, pooled_test, site_tests,
                         synthetic_sites, versus_local)
from mmdomain.jsonout import dumps


def run_compare(*, dataset: str, seeds: list[int], out: Path, sites: int, rounds: int, local_epochs: int,
                engine: str, quick: bool, personalise: str = "",
                log: Callable[[str], None] = click.echo) -> dict[str, Any]:
    from mmdomain.plugins import get_registry

    registry = get_registry()
    clock = Clock(log)
    out.mkdir(parents=True, exist_ok=True)
    runs = []
    for seed in seeds:
        settings = synthetic_sites(registry, dataset, out / f"seed-{seed}" / "data", sites=sites, seed=seed,
                                   quick=quick, clock=clock, config={"num-server-rounds": rounds,
                                                                     "local-epochs": local_epochs, "device": "auto"})
        tests = site_tests(settings, registry, sites)
        test = pooled_test(settings, registry, sites, tests)
        cross = CrossSite(tests, settings)
        clock.step(f"seed {seed}: local-only fusion model at each site ({rounds * local_epochs} epochs)")
        local, local_preds, _ = local_only(settings, registry, sites, rounds * local_epochs, test, log,
                                        single_modality_models=False, cross=cross)
        clock.step(f"seed {seed}: federated, {rounds} rounds ({engine})")
        fed, model = federated(settings, registry, sites, engine, 0.0, test, out / f"seed-{seed}" / "federated",
                               dp=False, noise=0.0, clip=0.0, max_epsilon=0.0, log=log, cross=cross,
                               personalise=personalise)
        metric = main_metric(fed["overall"])
        matrix = cross.matrix(metric)
        versus = versus_local(model, metric, pooled_predictions(model, test, settings), local_preds, seed, log)
        per_site = {site: m["overall"][metric] for site, m in local["fusion"].items()}
        runs.append({"seed": seed, "metric": metric, "test_samples": len(test), "federated": fed["overall"][metric],
                     "local": per_site, "margin": fed["overall"][metric] - max(per_site.values()),
                     "bootstrap": versus, "cross_site": matrix, "cross_site_summary": local_vs_global(matrix),
                     "personalised": personal_vs_global(matrix)})
        log(f"  seed {seed}: federated {metric} {runs[-1]['federated']:.3f}; local-only "
            + ", ".join(f"{k} {v:.3f}" for k, v in per_site.items()))
        log(f"  seed {seed}: cross-site {metric}: {describe(matrix)}")
    margins = [r["margin"] for r in runs]
    result = {"dataset": dataset, "sites": sites, "rounds": rounds, "local_epochs": local_epochs, "engine": engine,
              "quick": quick, "personalise": personalise, "runs": runs, "wins": sum(m > 0 for m in margins),
              "seeds": len(runs),
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
    return "\n".join(lines + _cross_site_lines(result["runs"], metric))


def _cross_site_lines(runs: list[dict[str, Any]], metric: str) -> list[str]:
    """Per seed: the global model's worst site and spread over the sites' own test sets, next to
    the local-only models' (their mean worst-site score and mean spread, and their lowest cell)."""
    runs = [r for r in runs if r.get("cross_site_summary")]
    if not runs:
        return []
    lines = [f"Cross-site: each model on every site's own test set ({metric}); worst site and spread "
             "(max - min) over the sites.", "",
             "| seed | global worst site | global spread | local-only worst (mean) | local-only spread (mean) | "
             "lowest local-only cell |", "|---|---|---|---|---|---|"]
    for r in runs:
        s = r["cross_site_summary"]
        g = s["global"] or {}
        low = s.get("local_lowest")
        cells = [f"{g.get('worst_site') or '-'} {score_text(g.get('worst'))}", score_text(g.get("spread")),
                 score_text(s.get("local_worst_mean")), score_text(s.get("local_spread_mean")),
                 f"{low['model']} on {low['site']} {low['score']:.3f}" if low else "-"]
        lines.append(f"| {r['seed']} | " + " | ".join(cells) + " |")
    return lines + [""] + _personal_lines(runs, metric)


def _personal_lines(runs: list[dict[str, Any]], metric: str) -> list[str]:
    """Per seed: the sites' personalised models against the global model, each on its site's own test set."""
    runs = [r for r in runs if r.get("personalised")]
    if not runs:
        return []
    sites = list(runs[0]["personalised"]["margins"])
    lines = [f"{runs[0]['personalised']['model'].capitalize()} minus global, each site's own test set ({metric}); "
             "a negative cell is a site that personalisation hurt.", "",
             "| seed | " + " | ".join(sites) + " | at the global model's worst site | better at |",
             "|---|" + "---|" * len(sites) + "---|---|"]
    for r in runs:
        p = r["personalised"]
        cells = [f"{p['margins'][s]:+.3f}" if s in p["margins"] else "-" for s in sites]
        at = p["margin_at_global_worst"]
        cells += [f"{p['global_worst_site']} {at:+.3f}" if at is not None else "-", f"{p['better_at']} of {p['sites']}"]
        lines.append(f"| {r['seed']} | " + " | ".join(cells) + " |")
    return lines + [""]


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
@click.option("--personalise", type=click.Choice(PERSONALISATION), default=None,
              help="Also give each site its own model this way (federated/README.md, Personalisation) and add the "
              "row 'personalised (METHOD)' to the cross-site matrix: each site's model on its own test set "
              "(in-process engine only).")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Output folder (default: a new temp folder).")
@tracking_options(COMPARE_EXPERIMENT)
def compare(dataset: str, seeds: list[int], sites: int, rounds: int, local_epochs: int, engine: str, quick: bool,
            personalise: str | None, out: Path | None, track: bool, tracking_uri: str | None, experiment: str) -> None:
    """Federated vs each site's local-only model over several seeds, with a paired bootstrap; unless
    --no-track, then logged to MLflow (one run, a nested run per seed; OUT/mlruns by default)."""
    import tempfile

    from mmdomain.errors import MMDomainError
    from mmdomain.plugins import get_registry

    get_registry().synthetic_for(dataset)  # a clear error for a dataset without a generator
    if sites < 2:
        raise MMDomainError("--sites must be at least 2 for a federated run")
    if personalise and engine != "in-process":
        raise click.BadParameter("--personalise needs --engine in-process (each site writes its model to its own "
                                 "folder; the simulation's virtual sites have no folder of their own)",
                                 param_hint="--personalise")
    out = (out or Path(tempfile.mkdtemp(prefix="mmdomain-compare-"))).resolve()
    result = run_compare(dataset=dataset, seeds=seeds, out=out, sites=sites, rounds=rounds, local_epochs=local_epochs,
                         engine=engine, quick=quick, personalise=personalise or "")
    if track:  # compare.json / compare.md are written: a tracking failure loses nothing
        from .tracking import log_compare

        click.echo(f"tracked: {log_compare(result, out, uri=tracking_uri, experiment=experiment)}")
    click.echo(f"\nreport: {out / 'compare.md'}")
