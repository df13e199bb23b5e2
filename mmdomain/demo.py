"""``mmdomain local-demo``: generate synthetic data for an installed dataset, train fusion and
single-modality models, print metrics overall and per availability pattern."""

from __future__ import annotations

import tempfile
from pathlib import Path

import click

from .config import DataConfig, ModelConfig, RunConfig, TrainConfig, parse, single_modality
from .errors import MMDomainError
from .jsonout import write
from .plugins import get_registry
from .training import fit


def run_local_demo(dataset: str, out: Path, *, epochs: int, seed: int, quick: bool, fusion: str | None,
                   log=click.echo) -> dict:
    registry = get_registry()
    dspec = registry.dataset(dataset)
    gen = registry.synthetic_for(dataset)
    sites = gen.generate(out / "data", num_sites=1, seed=seed, **(gen.quick_options if quick else {}))
    base = parse(ModelConfig, dspec.default_model, f"default model of {dataset!r}")
    if fusion:
        base = base.model_copy(update={"fusion": base.fusion.model_copy(update={"name": fusion, "options": {}})})
    variants = {"fusion": base, **{f"{m} only": single_modality(base, m) for m in base.modalities}}
    summary = {}
    for label, model_cfg in variants.items():
        log(f"\n== {label} ==")
        run = RunConfig(data=DataConfig(dataset=dataset, root=sites[0]), model=model_cfg,
                        train=TrainConfig(epochs=epochs, seed=seed, out_dir=out / label.replace(" ", "_"),
                                          progress=False))
        result = fit(run, registry, log=log)
        summary[label] = result.history[-1]
    write(out / "summary.json", summary, indent=2)
    log("\nvalidation metrics by availability pattern")
    for label, rec in summary.items():
        log(f"{label:<24} overall " + " ".join(f"{k}={v:.3f}" for k, v in rec["overall"].items()))
        for pattern, values in rec["by_pattern"].items():
            log(f"{'':<24} {pattern:<22} " + " ".join(
                f"{k}={v:.3f}" if k != "n" else f"n={v}" for k, v in values.items()))
    return summary


@click.command()
@click.option("--dataset", default=None, help="Dataset to demo (default: the first installed with a generator).")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Report folder (default: a temp dir).")
@click.option("--epochs", default=8, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--quick", is_flag=True, help="Small data, fewer epochs.")
@click.option("--fusion", default=None, help="Fusion head (default: the dataset's).")
def demo_command(dataset: str | None, out: Path | None, epochs: int, seed: int, quick: bool, fusion: str | None):
    """Train fusion vs single-modality models on synthetic data and compare them."""
    registry = get_registry()
    if dataset is None:
        gens = registry.specs("synthetic")
        if not gens:
            raise MMDomainError("no installed plugin provides a synthetic-data generator; install a domain plugin")
        dataset = gens[0].dataset
    out = out or Path(tempfile.mkdtemp(prefix="mmdomain-demo-"))
    run_local_demo(dataset, out, epochs=3 if quick else epochs, seed=seed, quick=quick, fusion=fusion)
    click.echo(f"\nreport: {out}")
