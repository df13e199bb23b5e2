"""The ``mmdomain`` command line.

Errors mmdomain raises on purpose (``MMDomainError``) are printed as one clear line and
exit with status 2; anything else is a bug and keeps its traceback. Commands import what they
need when they run, so ``mmdomain --help`` and ``plugins list`` start without torch.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from . import tracking
from .errors import MMDomainError


class _Group(click.Group):
    """Turns MMDomainError into a one-line message and exit status 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except MMDomainError as exc:
            click.secho(f"error: {exc}", fg="red", err=True)
            ctx.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mmdomain")
def cli() -> None:
    """Multi-modal learning with missing modalities, across sites that cannot pool data."""


# -- plugins ---------------------------------------------------------------------------------
@cli.group()
def plugins() -> None:
    """Inspect and check installed plugins."""


@plugins.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def plugins_list(as_json: bool) -> None:
    """Show every plugin, its version, its status and what it registered."""
    from .plugins import get_plugin_manager

    infos = get_plugin_manager().plugins()
    if as_json:
        click.echo(json.dumps([i.as_dict() for i in infos], indent=2))
        return
    rows = [("plugin", "distribution", "version", "status", "registered")]
    for i in infos:
        what = "; ".join(f"{k}: {', '.join(v)}" for k, v in i.registered.items()) if i.status == "ok" else i.error
        rows.append((i.name, i.distribution, i.version, i.status, what or "-"))
    widths = [max(len(r[c]) for r in rows) for c in range(4)]
    for r in rows:
        click.echo("  ".join(r[c].ljust(widths[c]) for c in range(4)) + "  " + r[4])


@plugins.command("check")
@click.argument("names", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="Print JSON results.")
def plugins_check(names: tuple[str, ...], as_json: bool) -> None:
    """Run the plugin contract tests against installed plugins (all, or NAMES)."""
    from .plugins import get_plugin_manager
    from .testing.contract import run_contract

    manager = get_plugin_manager()
    infos = [i for i in manager.plugins() if i.distribution != "mmdomain" and i.status != "blocked"]
    if names:
        unknown = sorted(set(names) - {i.name for i in infos})
        if unknown:
            raise MMDomainError(f"no installed plugin named {unknown}; installed: {[i.name for i in infos]}")
        infos = [i for i in infos if i.name in names]
    results = [r for i in infos for r in run_contract(manager, i.name)]
    if as_json:
        click.echo(json.dumps([r.as_dict() for r in results], indent=2))
    else:
        for r in results:
            mark = click.style("PASS", fg="green") if r.ok else click.style("FAIL", fg="red")
            click.echo(f"{mark}  {r.plugin:<20} {r.check:<24} {r.detail.splitlines()[0] if r.detail else ''}")
        failed = {r.plugin for r in results if not r.ok}
        click.echo(f"{len(infos) - len(failed)} of {len(infos)} plugins pass the contract")
    if any(not r.ok for r in results):
        sys.exit(1)


# -- data --------------------------------------------------------------------------------------
@cli.command()
@click.argument("dataset")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--sites", default=3, show_default=True, help="Number of site folders to write.")
@click.option("--seed", default=0, show_default=True)
@click.option("--quick", is_flag=True, help="A small dataset (the generator's quick options).")
@click.option("--large", is_flag=True, help="Sites of ~2,000 samples (the generator's large options, as the privacy "
                                            "benchmarks use; minutes to write).")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="A generator option over those (repeatable; VALUE is read as JSON, else as text), e.g. "
                   "--set coupling=0.8.")
def synth(dataset: str, out: Path, sites: int, seed: int, quick: bool, large: bool, settings: tuple[str, ...]) -> None:
    """Write seeded synthetic data for DATASET into OUT (one folder per site)."""
    import inspect

    from .plugins import get_registry

    if quick and large:
        raise click.UsageError("--quick and --large are exclusive")
    spec = get_registry().synthetic_for(dataset)
    options = dict(spec.quick_options if quick else spec.large_options if large else {})
    for item in settings:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise click.UsageError(f"--set {item!r}: expected KEY=VALUE")
        try:
            options[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            options[key.strip()] = value
    try:
        accepted = inspect.signature(spec.generate).parameters
    except (TypeError, ValueError):
        accepted = {}
    if accepted and not any(p.kind is p.VAR_KEYWORD for p in accepted.values()):
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            known = [n for n in accepted if n not in ("root", "num_sites", "seed")]
            raise click.UsageError(f"generator {spec.name!r} has no option {', '.join(unknown)}; it has {known}")
    try:
        folders = spec.generate(out, num_sites=sites, seed=seed, **options)
    except (TypeError, ValueError) as exc:  # an option the generator refuses, or its value
        raise click.UsageError(f"generator {spec.name!r}: {exc}") from None
    for f in folders:
        click.echo(str(f))


@cli.command()
@click.argument("path", type=click.Path(exists=True, path_type=Path))
def detect(path: Path) -> None:
    """Say which installed plugin's modality reads PATH."""
    from .plugins import get_registry

    registry = get_registry()
    name = registry.detect_modality(path)
    if name is None:
        raise MMDomainError(f"no installed plugin reads {path}; modalities: {registry.names('modality')}")
    click.echo(f"{name} ({registry.owner('modality', name)})")


# -- train / evaluate ----------------------------------------------------------------------------
@cli.command()
@click.option("--config", "config_path", required=True, type=click.Path(path_type=Path),
              help="Run config (.toml, .yaml or .json).")
@click.option("--out", type=click.Path(path_type=Path), help="Output folder (overrides train.out_dir).")
@click.option("--epochs", type=int, help="Override train.epochs.")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
@tracking.options(tracking.TRAIN_EXPERIMENT)
def train(config_path: Path, out: Path | None, epochs: int | None, no_progress: bool, track: bool,
          tracking_uri: str | None, experiment: str) -> None:
    """Train a fusion model; writes model.safetensors and metrics.jsonl, then (unless --no-track)
    logs the run to MLflow (OUT/mlruns by default)."""
    from .config import load_config
    from .plugins import get_registry
    from .training import fit

    config = load_config(config_path)
    if out:
        config.train.out_dir = out
    if epochs:
        config.train.epochs = epochs
    if no_progress:
        config.train.progress = False
    result = fit(config, get_registry(), log=click.echo)
    click.echo(f"checkpoint: {result.checkpoint}")
    if track:  # after the outputs are written: a tracking failure loses nothing
        tracked = tracking.log_training_run(result.checkpoint.parent, uri=tracking_uri, experiment=experiment)
        click.echo(f"tracked: {tracked}")


@cli.command()
@click.option("--checkpoint", required=True, type=click.Path(path_type=Path), help="A model.safetensors file.")
@click.option("--data-root", type=click.Path(path_type=Path), help="Evaluate on this folder instead of the one "
              "the model was trained on.")
@click.option("--split", default="test", show_default=True)
@click.option("--drop", multiple=True, help="Treat this modality as absent (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
def evaluate(checkpoint: Path, data_root: Path | None, split: str, drop: tuple[str, ...], as_json: bool) -> None:
    """Evaluate a checkpoint: metrics overall and per availability pattern."""
    from .checkpoint import load_checkpoint
    from .config import DataConfig, RunConfig, parse
    from .plugins import get_registry
    from .training import build_dataset, evaluate as run_eval, make_loader, select_device

    registry = get_registry()
    model, extra = load_checkpoint(checkpoint, registry)
    data = parse(DataConfig, extra.get("data") or {}, f"{checkpoint} (data config)")
    if data_root:
        data.root = data_root
    unknown = [m for m in drop if m not in model.modalities]
    if unknown:
        raise MMDomainError(f"--drop {unknown}: the model's modalities are {model.modalities}")
    config = RunConfig(data=data)
    device = select_device("auto")
    model.to(device)
    loader = make_loader(build_dataset(config, registry, split, model.config.task.name), model.modalities, 32,
                         shuffle=False)
    result = run_eval(model, loader, device=device, drop=drop)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(f"{split}: n={result['n']} loss={result['loss']:.4f} "
               + " ".join(f"{k}={v:.4f}" for k, v in result["overall"].items()))
    for pattern, values in result["by_pattern"].items():
        click.echo(f"  {pattern:<30} " + " ".join(f"{k}={v:.4f}" if k != "n" else f"n={v}" for k, v in values.items()))


@cli.command()
@click.option("--checkpoint", required=True, type=click.Path(path_type=Path), help="A model.safetensors file.")
@click.option("--sample", "sample_id", help="The id of the row to explain (its meta 'id', e.g. a study pseudonym); "
              "without it, a summary per availability pattern over the whole split.")
@click.option("--data-root", type=click.Path(path_type=Path), help="Read this folder instead of the one the model "
              "was trained on.")
@click.option("--split", default="test", show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=Path("explain"), show_default=True,
              help="Folder for the JSON (and, with --sample, the PNG).")
def explain(checkpoint: Path, sample_id: str | None, data_root: Path | None, split: str, out: Path) -> None:
    """Explain a checkpoint's predictions: each modality's contribution (exact Shapley values over
    the present modalities, summing to the prediction minus the model's prediction with nothing
    present) and, for image / raster modalities of one sample, a Grad-CAM map (and, with the
    token-level fusion head, where the other modality's tokens attended on the image)."""
    from .checkpoint import load_checkpoint
    from .config import DataConfig, RunConfig, parse
    from .data.collate import Collate
    from .explain import attention_maps, gradcam, modality_contributions, summarise
    from .jsonout import write
    from .plugins import get_registry
    from .training import build_dataset, make_loader

    registry = get_registry()
    model, extra = load_checkpoint(checkpoint, registry)
    data = parse(DataConfig, extra.get("data") or {}, f"{checkpoint} (data config)")
    if data_root:
        data.root = data_root
    dataset = build_dataset(RunConfig(data=data), registry, split, model.config.task.name)
    out.mkdir(parents=True, exist_ok=True)
    if sample_id is None:
        summary = summarise(model, make_loader(dataset, model.modalities, 32, shuffle=False))
        path = write(out / f"explain-{split}.json", {"checkpoint": str(checkpoint), "split": split,
                                                      "by_pattern": summary}, indent=2)
        for pattern, row in summary.items():
            click.echo(f"{pattern:<30} n={row['n']:<5} " + " ".join(f"{m} {v:.0%}" for m, v in row["share"].items()))
        click.echo(f"explanations: {path}")
        return
    index = next((i for i in range(len(dataset)) if str(_meta(dataset, i).get("id")) == sample_id), None)
    if index is None:
        raise MMDomainError(f"explain: no sample with id {sample_id!r} in the {split} split of {data.root}")
    batch = Collate(model.modalities)([dataset[index]])
    result = modality_contributions(model, batch)
    prediction = result["prediction"][0]
    top = int(prediction.argmax())
    record = {"sample": sample_id, "split": split, "pattern": result["patterns"][0],
              "prediction": prediction.tolist(), "nothing_present": result["nothing_present"][0].tolist(),
              "contributions": {m: c[0].tolist() for m, c in result["contributions"].items()},
              "explained_output": top}
    maps = {}
    for m in model.modalities:
        if model.modality_kinds[m] in ("image", "raster") and bool(batch.present[m][0]):
            maps[m] = gradcam(model, batch, m, top)
    record["saliency"] = sorted(maps)
    attention = attention_maps(model, batch)  # token-level head only
    record["attention"] = sorted(attention)
    path = write(out / f"explain-{sample_id}.json", record, indent=2)
    if maps or attention:
        png = _saliency_png(batch, {**maps, **attention}, out / f"explain-{sample_id}.png", record)
        click.echo(f"saliency: {png}")
    for m, c in record["contributions"].items():
        click.echo(f"{m:<16} contribution to output {top}: {c[top]:+.3f}")
    click.echo(f"prediction {prediction[top]:.3f} = nothing present {record['nothing_present'][top]:.3f} "
               f"+ the contributions; explanation: {path}")


def _meta(dataset, i: int) -> dict:
    meta = getattr(dataset, "sample_meta", None)
    return meta(i) if callable(meta) else dataset[i].meta


def _saliency_png(batch, maps: dict, path: Path, record: dict) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(maps), figsize=(4 * len(maps), 4), squeeze=False)
    for ax, (m, heat) in zip(axes[0], maps.items()):
        src, _, dst = m.rpartition("->")  # "report->image": an attention map over the image
        x = batch.inputs[dst][0].float()
        img = x[:3].mean(0) if x.shape[0] != 3 else x.permute(1, 2, 0).mean(-1)
        ax.imshow(img.numpy(), cmap="gray")
        ax.imshow(heat.numpy(), cmap="jet", alpha=0.4)
        ax.set_title(f"{src} tokens' attention on {dst}" if src else
                     f"{m} Grad-CAM: contribution {record['contributions'][m][record['explained_output']]:+.3f}")
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _add_plugin_commands() -> None:
    from .plugins import get_plugin_manager

    get_plugin_manager().add_commands(cli)


def main() -> None:
    try:
        _add_plugin_commands()
    except MMDomainError as exc:
        click.secho(f"error: {exc}", fg="red", err=True)
        sys.exit(2)
    cli(prog_name="mmdomain")


if __name__ == "__main__":  # pragma: no cover
    main()
