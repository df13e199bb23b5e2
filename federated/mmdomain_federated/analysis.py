"""The analysts' API: run a federation with one call, read any run folder as pandas tables.

Notebooks and scripts use this module (and the core's and plugins' documented modules), never
the app's internals, which may change between releases::

    from mmdomain_federated import analysis

    config = {"dataset": "s2s1_scenes", "data-root": "regions", "num-server-rounds": 4}
    run = analysis.federate(config, sites=3, out_dir="fed")                         # in-process
    run = analysis.federate(config, sites=3, out_dir="fed", engine="simulation")    # Flower's Ray simulation
    run = analysis.load_run("fed")        # any run folder: fed run, a kit's results/<run>, the demo's
    run.history, run.per_site, run.final, run.ledger, run.readiness, run.cross_site()
    run.model()                           # the final global model (best=True: the best by validation)

    train = analysis.site_data(config, site=0, sites=3, split="train")
    model = analysis.train_local(config, train, epochs=4)
    analysis.score(model, analysis.pooled_data(config, sites=3), config)["overall"]["macro_auroc"]
    analysis.cross_site({"global": run.model(), "local site-0": model}, config, sites=3)

``config`` is a run config: the keys of ``[tool.flwr.app.config]`` in ``federated/pyproject.toml``
(``mmdomain fed run --help`` lists them), or a ``Settings``. Sites are the simulated ones,
``partition-id`` 0..sites-1 of ``data-root``. Tables are pandas DataFrames; pandas is imported
when a table is made.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from mmdomain.errors import CheckpointError, ConfigError, DataError, MMDomainError

from .settings import Settings

ENGINES = ("in-process", "simulation")
Config = Mapping[str, Any] | Settings


def settings_of(config: Config) -> Settings:
    """``config`` as ``Settings`` (a run-config mapping is checked: unknown keys and bad values
    are a ``ConfigError`` naming them)."""
    return config if isinstance(config, Settings) else Settings.from_run_config(dict(config))


def federate(config: Config, *, sites: int, out_dir: str | Path, engine: str = "in-process",
             progress: Callable[[str], None] | None = print, timeout: float | None = None) -> "Run":
    """Train a federation of ``sites`` simulated sites with the real ServerApp and ClientApp and
    return its run folder, loaded. ``engine``: ``in-process`` (the apps called on Flower Messages
    in this process, no Ray; the fastest) or ``simulation`` (``flwr run`` on Flower's simulation
    engine, one virtual client per site). ``progress`` gets one short line per round and the
    final line (None: silent); ``events.log`` in ``out_dir`` keeps the full records."""
    if engine not in ENGINES:
        raise ConfigError(f"engine must be one of {', '.join(ENGINES)}; got {engine!r}")
    if not isinstance(sites, int) or sites < 1:
        raise ConfigError(f"sites must be a positive integer; got {sites!r}")
    out = Path(out_dir).expanduser().resolve()
    settings = settings_of({**settings_of(config).as_run_config(), "out-dir": str(out)})
    if sites < settings.min_sites:
        raise ConfigError(f"sites={sites} is fewer than the run's min-sites={settings.min_sites}")
    say = progress or (lambda line: None)
    started = time.time()
    if engine == "in-process":
        from .inprocess import LocalGrid
        from .server_app import run_server

        with _quiet_flower():  # its per-round INFO lines; ours say more in one line
            grid = LocalGrid(sites, settings.as_run_config())
            result = run_server(grid, settings, out, echo=False, log=say, names=grid.site_names())
        return _fresh_run(out, started, result.get("stopped"))
    from .simulate import run_simulation

    def line(text: str) -> None:  # the server's own lines, without Flower's and Ray's
        if "[mmdomain-fed" in text:
            say(text.split("] ", 1)[-1].rstrip())

    proc = run_simulation(sites, settings.as_run_config(), timeout=timeout, on_line=line)
    tail = "\n".join(proc.stdout.splitlines()[-15:])
    return _fresh_run(out, started, f"the Flower simulation exited with {proc.returncode}; its last lines:\n{tail}")


@contextlib.contextmanager
def _quiet_flower():
    flwr_log = logging.getLogger("flwr")
    level = flwr_log.level
    flwr_log.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        flwr_log.setLevel(level)


def _fresh_run(out: Path, started: float, why: str | None) -> "Run":
    """The run this call wrote in ``out``: an older ``summary.json`` there (a run before it that
    used the same folder) is not it."""
    summary = out / "summary.json"
    if not summary.is_file() or summary.stat().st_mtime < started - 1:
        raise MMDomainError(f"the run wrote no summary in {out} (see its events.log): {why or 'no reason given'}")
    return load_run(out)


def load_run(folder: str | Path) -> "Run":
    """The run in ``folder`` (it must hold the ``summary.json`` a finished or stopped run writes)."""
    path = Path(folder).expanduser()
    summary_file = path / "summary.json"
    if not summary_file.is_file():
        hint = (" (it holds an unfinished run: no summary yet)" if (path / "events.log").is_file() else
                "" if path.is_dir() else " (no such folder)")
        raise DataError(f"{path} is not a run folder: {summary_file.name} is missing{hint}")
    try:
        summary = json.loads(summary_file.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{summary_file} cannot be read as JSON: {exc}") from None
    if not isinstance(summary, dict) or "history" not in summary:
        raise DataError(f"{summary_file} is not a run summary (no history)")
    return Run(path.resolve(), summary)


@dataclass
class Run:
    """A run folder. The tables are built from its files each time they are asked for."""

    folder: Path
    summary: dict[str, Any] = field(repr=False)

    @property
    def stopped(self) -> str | None:
        """Why the run ended (``completed``, ``max-epsilon reached``, ...)."""
        return self.summary.get("stopped")

    @property
    def epsilon(self) -> float | None:
        """The central-DP epsilon spent (None without central DP)."""
        return self.summary.get("epsilon")

    @property
    def local_epsilon(self) -> dict[str, float] | None:
        """Each site's local DP-SGD epsilon, as last reported (None without local DP)."""
        return self.summary.get("local-epsilon")

    def site(self, node: Any) -> str:
        """A site's label in the tables: its name where the run named sites (``site-names`` of
        the summary: registered names, or ``site-<i>`` in-process), else its node id."""
        return (self.summary.get("site-names") or {}).get(str(node), str(node))

    @property
    def history(self):
        """One row per round: sites answered, dropped, rejected, bytes, train loss, the
        sample-weighted validation metrics (``eval-*``, the global model of the round before),
        epsilon; nested per-site and per-group entries are in ``per_site``."""
        pd = _pandas()
        rows = [{k: v for k, v in r.items() if not isinstance(v, (dict, list))} for r in self.summary["history"]]
        return pd.DataFrame(rows, columns=_columns(rows, first=["round"])).set_index("round")

    @property
    def per_site(self):
        """One row per round and site (by name where sites were registered so, else node id):
        that site's train loss, samples, seconds and validation metrics, and its local epsilon."""
        pd = _pandas()
        rows = []
        for r in self.summary["history"]:
            local = r.get("local-epsilon") or {}
            for site, metrics in sorted((r.get("per-site") or {}).items(), key=lambda kv: _natural(kv[0])):
                row = {"round": r["round"], "site": str(site), **metrics}
                if str(site) in local:
                    row["local-epsilon"] = local[str(site)]
                rows.append(row)
        return pd.DataFrame(rows, columns=_columns(rows, first=["round", "site"]))

    @property
    def final(self):
        """The final global model's test metrics: a row per site (computed at the site, on its own
        test set) and a ``pooled`` row (the sample-weighted aggregate of them)."""
        pd = _pandas()
        final = self.summary.get("final") or {}
        rows = [{"site": str(s), **m} for s, m in _by_site(final.get("per_site") or {})]
        if final.get("overall"):
            rows.append({"site": "pooled", **final["overall"]})
        return pd.DataFrame(rows, columns=_columns(rows, first=["site"])).set_index("site")

    @property
    def ledger(self):
        """The privacy ledger (``privacy-ledger.jsonl``): a row per site and release with its
        mechanism, noise, clip, delta and the epsilon spent so far; empty without DP."""
        pd = _pandas()
        path = self.folder / "privacy-ledger.jsonl"
        rows = []
        if path.is_file():
            for n, text in enumerate(path.read_text().splitlines(), 1):
                if text.strip():
                    try:
                        row = json.loads(text)
                    except ValueError:
                        raise DataError(f"{path}, line {n}, is not JSON") from None
                    rows.append({**row, "site": self.site(row["site"])} if "site" in row else row)
        return pd.DataFrame(rows, columns=_columns(rows, first=["round", "site", "mechanism", "epsilon"]))

    @property
    def readiness(self):
        """The readiness report (``readiness.json``): a row per site and split with the noised
        counts of rows and of each availability pattern (``<5``: a suppressed small cell)."""
        pd = _pandas()
        path = self.folder / "readiness.json"
        report = json.loads(path.read_text()) if path.is_file() else {}
        rows = []
        for site, entry in sorted(report.items(), key=lambda kv: _natural(self.site(kv[0]))):
            for split, counts in (entry.get("splits") or {}).items():
                rows.append({"site": self.site(site), "split": split, "n": counts.get("n"), **(counts.get("patterns") or {})})
        return pd.DataFrame(rows, columns=_columns(rows, first=["site", "split", "n"]))

    @property
    def heterogeneity(self):
        """How different the sites are (``heterogeneity.json``, from their noised readiness
        reports): a row per site, each against the others pooled: Jensen-Shannon divergence of
        the label and availability-pattern distributions, Hellinger distance of each modality's
        input statistics (all 0-1; NaN where a site reported none)."""
        pd = _pandas()
        path = self.folder / "heterogeneity.json"
        div = json.loads(path.read_text()) if path.is_file() else {}
        rows = {self.site(s): v for s, v in sorted(div.items(), key=lambda kv: _natural(self.site(kv[0])))}
        return pd.DataFrame.from_dict(rows, orient="index", dtype=float)

    def cross_site(self, metric: str | None = None):
        """Model x test set: the final global model's ``metric`` (default: the run's main one) on
        each site's own test set and pooled, as the sites computed it; with ``personalise`` a row
        ``personalised (<method>)`` (each site's own model on its own test set: no pooled cell); with
        the rows of ``cross-site.json`` when the folder has one (``cross_site(..., save_to=run.folder)``)."""
        pd = _pandas()
        from .cross_site import main_metric

        final = self.summary.get("final") or {}
        metric = metric or main_metric(final.get("overall") or {})
        table = {}
        if final.get("per_site"):
            table["global"] = {**{str(s): m.get(metric) for s, m in _by_site(final["per_site"])},
                               "pooled": final.get("overall", {}).get(metric)}
        mine = self.summary.get("personalised") or {}
        if mine.get("per_site"):
            from .cross_site import personal_name

            table[personal_name(mine.get("method"))] = {str(s): m.get(metric) for s, m in _by_site(mine["per_site"])}
        saved = self.folder / CROSS_SITE_FILE
        if saved.is_file():
            matrix = json.loads(saved.read_text())
            if matrix.get("metric") == metric:
                table.update({f"{name} (scored here)" if name in table else name: m["scores"]
                              for name, m in matrix["models"].items()})
        return pd.DataFrame.from_dict(table, orient="index")

    def model(self, best: bool = False):
        """The final global model (``model.safetensors``), or with ``best`` the best one by the
        run's validation metric (``best.safetensors``, when the run kept one), rebuilt from its
        checkpoint."""
        from mmdomain.checkpoint import load_checkpoint
        from mmdomain.plugins import get_registry

        name = (self.summary.get("best") or {}).get("file") if best else self.summary.get("model")
        if not name:
            what = "best model (set checkpoint-metric to keep one)" if best else "model"
            raise CheckpointError(f"the run in {self.folder} has no {what}; it ended: {self.stopped or 'unknown'}")
        model, _ = load_checkpoint(self.folder / name, get_registry())
        return model


CROSS_SITE_FILE = "cross-site.json"


def site_data(config: Config, *, site: int, sites: int, split: str = "train"):
    """Simulated site ``site``'s ``split`` (``train``, ``val`` or ``test``) of the run's dataset,
    as the ClientApp reads it (``partition-id`` ``site`` of ``sites``)."""
    from mmdomain.plugins import get_registry

    from . import task

    if not 0 <= site < sites:
        raise ConfigError(f"site must be in 0..{sites - 1}; got {site}")
    return task.load_site(settings_of(config), {"partition-id": site, "num-partitions": sites}, get_registry(), split)


def pooled_data(config: Config, *, sites: int, split: str = "test"):
    """Every simulated site's ``split``, concatenated (the pooled test set of the reports)."""
    from torch.utils.data import ConcatDataset

    return ConcatDataset([site_data(config, site=i, sites=sites, split=split) for i in range(sites)])


def train_local(config: Config, data, *, epochs: int | None = None, seed: int | None = None):
    """A fresh model of the run's config trained on ``data`` alone, as a site would train it
    (``local-epochs``, or ``epochs`` when given; ``seed`` defaults to the run's)."""
    import torch

    from mmdomain.plugins import get_registry

    from . import task

    settings = settings_of(config)
    if epochs is not None:
        settings = settings_of({**settings.as_run_config(), "local-epochs": epochs})
    seed = settings.seed if seed is None else seed
    torch.manual_seed(seed)
    model = task.build(settings, get_registry())
    task.train_site(model, data, settings, seed=seed)
    return model


def score(model, data, config: Config) -> dict[str, Any]:
    """``model``'s metrics on ``data``: ``{"overall": {...}, "by_pattern": {pattern: {...}}, "n": rows}``."""
    from . import task

    return task.evaluate_site(model, data, settings_of(config))


def cross_site(models: Mapping[str, Any], config: Config, *, sites: int, metric: str | None = None,
               save_to: str | Path | None = None):
    """Each of ``models`` (name -> model) scored on every simulated site's own test set and on
    their union: a model x test set table of ``metric`` (default: the main one), with the worst
    site, spread and mean over the sites. ``save_to``: also write the whole matrix (per pattern
    too) there as ``cross-site.json``, which ``Run.cross_site`` then shows."""
    from mmdomain.jsonout import dumps

    from .cross_site import cross_site as matrix_of

    tests = {f"site-{i}": site_data(config, site=i, sites=sites, split="test") for i in range(sites)}
    matrix = matrix_of(models, tests, settings_of(config), metric)
    if save_to is not None:
        (Path(save_to) / CROSS_SITE_FILE).write_text(dumps(matrix, indent=1))
    return matrix_table(matrix)


def matrix_table(matrix: Mapping[str, Any]):
    """A cross-site matrix (``mmdomain fed compare``'s, the demo's ``metrics.json``'s) as a table:
    a row per model, a column per test set, then ``worst_site``, ``worst``, ``spread``, ``mean``."""
    pd = _pandas()
    rows = {name: {**m["scores"], **{k: m.get(k) for k in ("worst_site", "worst", "spread", "mean")}}
            for name, m in matrix["models"].items()}
    return pd.DataFrame.from_dict(rows, orient="index", columns=[*matrix["columns"], "worst_site", "worst", "spread",
                                                                  "mean"])


@dataclass
class BenchResults:
    """A benchmark's committed results file: its rows as a table and how it was run."""

    path: Path
    rows: Any
    argv: list[Any]
    measured: str
    note: str | None = None

    def commands(self, bench: str) -> str:
        """The ``./dev bench`` command(s) that wrote the file (several when runs were merged)."""
        runs = self.argv if self.argv and all(isinstance(a, list) for a in self.argv) else [self.argv]
        return " and ".join(f"`./dev bench {' '.join([bench, *map(str, a)])}`" for a in runs)


def bench_results(name: str, search_from: str | Path | None = None) -> BenchResults | None:
    """``bench/results/<name>`` (e.g. ``dp_utility.json``) of the repository above ``search_from``
    (default: the working folder) or of the checkout the packages are installed from; None when
    there is none (the benchmark has not been run here)."""
    import mmdomain

    pd = _pandas()
    start = Path(search_from or Path.cwd()).resolve()
    repo = Path(mmdomain.__file__).resolve().parents[1]
    candidates = [p / "bench" / "results" / name for p in (start, *start.parents, repo)]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        return None
    try:
        data = json.loads(path.read_text())
    except ValueError:
        raise DataError(f"{path} is not JSON") from None
    return BenchResults(path, pd.DataFrame(data.get("rows", [])), data.get("argv") or [], _measured(path, data),
                        data.get("note"))


def _measured(path: Path, data: Mapping[str, Any]) -> str:
    """When the figures were measured: the file's own date, else the date of the commit that last
    wrote it (when it is unchanged since), else its modification time."""
    import datetime
    import subprocess

    if data.get("measured") or data.get("date"):
        return str(data.get("measured") or data.get("date"))
    try:
        out = subprocess.run(["git", "log", "-1", "--format=%cs", "--", path.name], cwd=path.parent,
                             capture_output=True, text=True, timeout=10).stdout.strip()
        clean = subprocess.run(["git", "diff", "--quiet", "--", path.name], cwd=path.parent, timeout=10).returncode == 0
        if out and clean:
            return f"{out} (the commit that last wrote it)"
    except (OSError, subprocess.SubprocessError):
        pass
    return f"{datetime.date.fromtimestamp(path.stat().st_mtime)} (the file's modification time)"


def _natural(name: Any) -> list[Any]:
    """``site-2`` before ``site-10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(name))]


def _by_site(per_site: Mapping[Any, Any]) -> list[tuple[Any, Any]]:
    return sorted(per_site.items(), key=lambda kv: _natural(kv[0]))


def _columns(rows: list[dict[str, Any]], first: list[str]) -> list[str]:
    """``first`` (those present, or all of them for no rows), then every other key in order of appearance."""
    keys = dict.fromkeys(k for r in rows for k in r)
    return [k for k in first if k in keys or not rows] + [k for k in keys if k not in first]


def _pandas():
    try:
        import pandas
    except ImportError:  # pragma: no cover - pandas is a dependency of the environment
        raise MMDomainError("the analysis tables need pandas: pip install pandas") from None
    return pandas
