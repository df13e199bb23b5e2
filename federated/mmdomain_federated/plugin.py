"""mmdomain plugin: adds ``mmdomain fed run`` (local simulation), ``mmdomain fed evaluate`` (a
checkpoint scored on every site, nothing trained), ``mmdomain fed deploy``,
``mmdomain fed compare`` (federated vs local-only over seeds), ``mmdomain fed policy init|check``
(a site's policy file), ``mmdomain fed provision`` (startup kits for a consortium) and ``mmdomain demo``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from mmdomain import hookimpl
from mmdomain.tracking import options as tracking_options

from .tracking import FED_EXPERIMENT


PATH_KEYS = ("init-from", "data-root")  # run-config keys holding a local path, resolved where the command runs


def _parse_kv(items: tuple[str, ...]) -> dict:
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        for cast in (int, float):
            try:
                value = cast(value)
                break
            except ValueError:
                continue
        else:
            value = {"true": True, "false": False}.get(str(value).lower(), value)
        out[key.strip()] = value
    for key in PATH_KEYS:  # the apps run elsewhere (simulation: from federated/): a path means the caller's
        if isinstance(out.get(key), str) and out[key]:
            out[key] = str(Path(out[key]).expanduser().resolve())
    return out


@click.group()
def fed() -> None:
    """Federated training with Flower (simulation or deployment)."""


@fed.command("run")
@click.option("--sites", default=3, show_default=True, help="Simulated sites (one virtual client per CPU).")
@click.option("--rounds", default=3, show_default=True)
@click.option("--dataset", default=None, help="Dataset name (any installed plugin's).")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Run folder (checkpoints, ledger).")
@click.option("--gpus-per-site", default=0.0, show_default=True, help="Fractional GPU per virtual client.")
@click.option("--set", "sets", multiple=True, help="Run-config override KEY=VALUE (repeatable).")
@tracking_options(FED_EXPERIMENT)
def fed_run(sites: int, rounds: int, dataset: str | None, out: Path | None, gpus_per_site: float,
            sets: tuple[str, ...], track: bool, tracking_uri: str | None, experiment: str) -> None:
    """Run the federated app in Flower's local simulation; unless --no-track, then log the run
    folder to MLflow (OUT/mlruns by default; without --out the run folder is a new temp folder)."""
    import tempfile

    from .simulate import run_simulation

    config = {"num-server-rounds": rounds, **_parse_kv(sets)}
    if dataset:
        config["dataset"] = dataset
    if track and not out and not config.get("out-dir"):  # the run folder must be known to log it
        out = Path(tempfile.mkdtemp(prefix="mmdomain-fed-run-"))
    if out:
        config["out-dir"] = str(out.resolve())
    result = run_simulation(sites, config, num_gpus=gpus_per_site)
    click.echo(result.stdout)
    if result.returncode:
        click.echo(result.stderr, err=True)
        raise SystemExit(result.returncode)
    if track:  # the run's outputs are written: a tracking failure loses nothing
        run_dir = Path(config["out-dir"])
        if (run_dir / "summary.json").exists():
            from .tracking import log_fed_run

            click.echo(f"tracked: {log_fed_run(run_dir, uri=tracking_uri, experiment=experiment, config=config)}")
        else:
            click.echo(f"not tracked: {run_dir} holds no summary.json (the run stopped before its end)", err=True)
    if out and (out / "summary.json").exists():
        summary = json.loads((out / "summary.json").read_text())
        if not summary.get("rounds"):  # nothing trained, no model written: not a success
            click.echo(f"stopped: {summary['stopped']}; no round was trained, no model written", err=True)
            raise SystemExit(1)
        click.echo(f"stopped: {summary['stopped']}; final: {summary['final'].get('overall')}")


@fed.command("evaluate")
@click.option("--checkpoint", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="A model.safetensors (any mmdomain checkpoint: train, fed run, best.safetensors).")
@click.option("--sites", default=3, show_default=True, help="Simulated sites (one virtual client per CPU).")
@click.option("--dataset", default=None, help="Dataset name (any installed plugin's).")
@click.option("--split", type=click.Choice(["test", "val"]), default="test", show_default=True,
              help="The split each site scores.")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Run folder (summary.json, events.log).")
@click.option("--set", "sets", multiple=True, help="Run-config override KEY=VALUE (repeatable).")
def fed_evaluate(checkpoint: Path, sites: int, dataset: str | None, split: str, out: Path | None,
                 sets: tuple[str, ...]) -> None:
    """Evaluation only: send the model of CHECKPOINT to every site (Flower's local simulation) and
    collect each site's metrics on its own split; nothing is trained. Every participant rebuilds the
    model from the checkpoint file itself."""
    from mmdomain.checkpoint import read_header
    from mmdomain.errors import CheckpointError

    from .simulate import run_simulation

    try:
        read_header(checkpoint)  # a clear error before any process starts
    except (CheckpointError, OSError) as exc:
        raise click.ClickException(f"--checkpoint: {exc}") from None
    config = {**_parse_kv(sets), "evaluate-only": True, "evaluate-split": split, "init-from": str(checkpoint.resolve()),
              "resume": False}
    if dataset:
        config["dataset"] = dataset
    if out:
        config["out-dir"] = str(out.resolve())
    result = run_simulation(sites, config)
    click.echo(result.stdout)
    if result.returncode:
        click.echo(result.stderr, err=True)
        raise SystemExit(result.returncode)
    if out and (out / "summary.json").exists():
        final = json.loads((out / "summary.json").read_text())["final"]
        click.echo(f"{split}: {final.get('overall')}")
        for site, m in sorted(final.get("per_site", {}).items()):
            click.echo(f"  site {site}: " + ", ".join(f"{k} {v:.4g}" for k, v in sorted(m.items())
                                                      if isinstance(v, float) and "/" not in k))  # per pattern: summary.json


@fed.command("deploy")
@click.option("--sites", default=3, show_default=True)
@click.option("--rounds", default=2, show_default=True)
@click.option("--work", type=click.Path(path_type=Path), default=None, help="Folder for certs, keys, logs, results.")
@click.option("--set", "sets", multiple=True, help="Run-config override KEY=VALUE (repeatable).")
def fed_deploy(sites: int, rounds: int, work: Path | None, sets: tuple[str, ...]) -> None:
    """Start a SuperLink + one SuperNode per site on loopback with TLS and SuperNode
    authentication, run the app, collect results, stop every process."""
    from .deploy import deploy_local

    summary = deploy_local(sites, {"num-server-rounds": rounds, **_parse_kv(sets)}, work=work, log=click.echo)
    click.echo(json.dumps({k: summary[k] for k in ("stopped", "rounds", "model", "final") if k in summary}, indent=1,
                          default=str))


@fed.group("policy")
def fed_policy() -> None:
    """A site's policy file (the SuperNode's policy-file): write a template, check one."""


@fed_policy.command("init")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Overwrite FILE if it exists.")
def fed_policy_init(file: Path, force: bool) -> None:
    """Write a commented policy template to FILE, every key documented. As written it is a strict
    policy for a hospital (DP-SGD at the site, noise multiplier >= 0.8, at most 100 rounds)."""
    from .policy import check_file, report, write_template

    try:
        write_template(file, force=force)
    except FileExistsError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"cannot write {file}: {exc.strerror or exc}") from None
    click.echo(f"wrote {file}")
    click.echo(report(check_file(file), file), nl=False)


@fed_policy.command("check")
@click.argument("file", type=click.Path(path_type=Path))
def fed_policy_check(file: Path) -> None:
    """Validate a site policy file: print what it enforces (exit 0) or every problem (exit 2)."""
    from .policy import check_file, report

    result = check_file(file)
    click.echo(report(result, file), nl=False, err=not result.ok)
    if not result.ok:
        raise SystemExit(2)


@fed.command("app-hash")
@click.argument("app", type=click.Path(file_okay=False, exists=True, path_type=Path), required=False)
def fed_app_hash(app: Path | None) -> None:
    """Print the sha256 of the Flower app bundle (FAB) that `flwr run APP` ships: the value a site
    lists in its policy's approved-apps after reviewing APP (default: this installation's
    federated app)."""
    from .simulate import APP_DIR
    from .site_guard import app_hash

    try:
        click.echo(app_hash(app or APP_DIR))
    except (FileNotFoundError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None


@fed.command("results")
@click.argument("run", required=False)
@click.option("--dir", "base", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="The results folder (default: $MMDOMAIN_RESULTS_DIR, which a coordinator kit's "
                   "start-superlink.sh sets to its results/).")
@click.option("--copy-to", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Copy RUN's folder into this folder.")
def fed_results(run: str | None, base: Path | None, copy_to: Path | None) -> None:
    """List the runs on this coordinator, or show RUN (a folder name under --dir, or a path): how it
    ended, each site's final metrics by name, refusals, dropped sites, its files. (Flower 1.42's
    `flwr pull` needs an enterprise SuperLink.)"""
    from .results import copy_run, describe_run, list_runs, results_dir

    base = base or results_dir()
    if run is None:
        if base is None:
            raise click.ClickException("no results folder: give --dir (a coordinator kit's results/) or set "
                                       "MMDOMAIN_RESULTS_DIR")
        lines = list_runs(base)
        click.echo("\n".join(lines) if lines else f"no runs in {base}")
        return
    folder = base / run if base is not None and (base / run).exists() else Path(run)  # an absolute RUN: itself
    try:
        click.echo("\n".join(describe_run(folder)))
        if copy_to is not None:
            click.echo(f"copied to {copy_run(folder, copy_to)}")
    except (FileNotFoundError, FileExistsError) as exc:
        raise click.ClickException(str(exc)) from None


@fed.command("provision")
@click.argument("consortium", type=click.Path(dir_okay=False, path_type=Path), required=False)
@click.option("-o", "--out", "out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for the kits (one per participant, plus ca-private/ with the CA's key).")
@click.option("--force", is_flag=True, help="Replace an existing kits folder (a fresh CA and fresh keys: every kit "
                                            "must be sent again) / overwrite an existing --template file.")
@click.option("--template", is_flag=True, help="Write a commented example consortium file to CONSORTIUM instead.")
@click.option("--add-key", nargs=2, metavar="SITE PUBLIC_KEY", default=None,
              help="Add a site-provided public key to the coordinator's kit in --out (CONSORTIUM is not read).")
def fed_provision(consortium: Path | None, out: Path | None, force: bool, template: bool,
                  add_key: tuple[str, str] | None) -> None:
    """Write one startup kit per participant from CONSORTIUM (a TOML file naming the coordinator and
    the sites): the coordinator's (CA certificate, server certificate and key, the sites' public
    keys, SuperLink start/stop and site registration scripts, the researchers' Flower connection)
    and each site's (CA certificate, its own key pair or a slot for one, connection settings, a
    policy file, SuperNode + warm SuperExec start/stop scripts). The CA's private key goes to
    OUT/ca-private/, in no kit. Nothing is written unless every kit is: an existing OUT is kept
    unless --force.

    \b
    mmdomain fed provision --template consortium.toml
    mmdomain fed provision consortium.toml -o kits/
    mmdomain fed provision --add-key hospital-c hospital-c.key.pub -o kits/"""
    from mmdomain.errors import ConfigError

    from . import provision

    if consortium is None and not add_key:
        raise click.UsageError("CONSORTIUM (the consortium file) is required")
    try:
        if template:
            provision.write_template(consortium, force=force)
            click.echo(f"wrote {consortium}; edit it, then: mmdomain fed provision {consortium} -o kits/")
            return
        if out is None:
            raise click.UsageError("-o / --out KITS is required (the folder the kits go to)")
        if add_key:
            fp = provision.add_site_key(out, add_key[0], Path(add_key[1]))
            click.echo(f"{add_key[0]}: public key added ({fp}); run register-sites.sh on the coordinator")
            return
        kits = provision.write_kits(provision.read_consortium(consortium), out, force=force)
    except (ConfigError, FileExistsError) as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"cannot write {exc.filename or out}: {exc.strerror or exc}") from None
    for name in sorted(p.name for p in kits.iterdir() if p.is_dir()):
        click.echo(f"{kits / name}/" + ("  (the CA's private key: keep it offline, send it to no one)"
                                         if name == provision.CA_PRIVATE else ""))


@hookimpl
def register_commands(cli):
    from .compare import compare
    from .demo import demo

    fed.add_command(compare, name="compare")
    cli.add_command(fed, name="fed")
    cli.add_command(demo, name="demo")  # the full demo; the core's one-site demo is `mmdomain local-demo`
