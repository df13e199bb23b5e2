"""Experiment tracking with MLflow: a finished run's config, metrics and files, logged after the
run's own outputs are written (a tracking failure loses nothing).

The default store is embedded: a file store in ``mlruns/`` under the run's folder, no server
(``$MLFLOW_TRACKING_URI`` or ``--tracking-uri`` choose another). MLflow is imported only when a
run is logged, with its telemetry off (``MLFLOW_DISABLE_TELEMETRY``, ``DO_NOT_TRACK``) set before
the import; nothing here uses a model registry. MLflow 3 keeps its file store in maintenance
mode behind ``MLFLOW_ALLOW_FILE_STORE`` (set here unless the caller set it); its SQL stores
(``sqlite:///...``) need SQLAlchemy and work through ``--tracking-uri`` too.

What is logged is what the run folder already holds in aggregate form: the config as params
(nested keys joined by ``.``; a path-valued key as its last component only, so no data root's
full path goes to a store that may be remote), numeric metrics with their step, and files as
artifacts. ``log_training_run`` logs what ``mmdomain train`` writes; ``log_run`` logs one run of
anything; ``tracking`` / ``Tracker`` are the pieces for several (nested) runs, as the federated
layer's tracking logs ``fed compare``.
"""

from __future__ import annotations

import json
import os
import re
import time
from contextlib import contextmanager
from pathlib import Path, PurePath
from typing import Any, Iterable, Iterator, Mapping, NamedTuple

import click

from .errors import MMDomainError

STORE_FOLDER = "mlruns"
TRAIN_EXPERIMENT = "mmdomain-train"
OFFLINE_ENV = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
TRAIN_PATH_KEYS = ("data.root", "train.out_dir", "train.init_from")  # logged as their last component
TRAIN_ARTIFACTS = ("model.safetensors", "metrics.jsonl", "calibration.json")  # model.json: the header again
_MAX_PARAM = 500  # longer values (a fitted vocabulary) are cut; the config artifact and the model hold them
_BATCH_PARAMS, _BATCH_METRICS = 100, 1000  # MLflow's log_batch limits

Series = Iterable[tuple[str, float, int]]  # (metric key, value, step)


class TrackingError(MMDomainError):
    """MLflow could not log a run (a bad tracking URI, an unwritable store); the run's own outputs
    are kept."""


class TrackedRun(NamedTuple):
    run_id: str
    uri: str
    experiment: str

    def __str__(self) -> str:
        return f"MLflow run {self.run_id} (experiment {self.experiment!r}) in {self.uri}"


def options(experiment: str):
    """The ``--track/--no-track``, ``--tracking-uri`` and ``--experiment`` options of a command
    (its function takes ``track``, ``tracking_uri`` and ``experiment``)."""
    def add(command):
        command = click.option("--experiment", default=experiment, show_default=True,
                               help="MLflow experiment the run is logged under.")(command)
        command = click.option("--tracking-uri", default=None, metavar="URI",
                               help=f"MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else the run folder's "
                                    f"{STORE_FOLDER}/, a file store: no server).")(command)
        return click.option("--track/--no-track", default=True, show_default=True,
                            help="Log the finished run to MLflow (config, metrics, model and reports).")(command)
    return add


def resolve_uri(uri: str | None, run_dir: Path) -> str:
    """``uri``, else ``$MLFLOW_TRACKING_URI``, else a file store in ``run_dir/mlruns``."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or (Path(run_dir).resolve() / STORE_FOLDER).as_uri()


# -- what a run folder holds, as params and metrics ------------------------------------------------
def metric_key(name: str) -> str:
    """``name`` in the characters MLflow allows on every platform (``/ \\w . - space``): an
    availability pattern's ``+`` becomes ``.``, anything else ``_``."""
    return re.sub(r"[^/\w.\- ]", "_", name.replace("+", "."))[:250]


def flat_numbers(record: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The numbers of a nested JSON object, keyed by their path joined by ``/`` (``metric_key``);
    strings, booleans, lists and nulls are left out."""
    out: dict[str, float] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flat_numbers(value, name + "/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[metric_key(name)] = float(value)
    return out


def flat_params(config: Mapping[str, Any], *, paths: Iterable[str] = (), prefix: str = "") -> dict[str, str]:
    """A nested config as MLflow params (keys joined by ``.``; values as JSON, text as itself).
    The keys in ``paths`` hold a local path: only its last component is kept."""
    paths = set(paths)
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flat_params(value, paths=paths, prefix=name + "."))
            continue
        if name in paths and value:
            value = PurePath(str(value)).name
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        out[metric_key(name)] = text if len(text) <= _MAX_PARAM else text[:_MAX_PARAM - 3] + "..."
    return out


def redact(config: Mapping[str, Any], paths: Iterable[str], prefix: str = "") -> dict[str, Any]:
    """``config`` with the values of the dotted keys in ``paths`` cut to their last component."""
    paths = set(paths)
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out[key] = redact(value, paths, name + ".")
        else:
            out[key] = PurePath(str(value)).name if name in paths and value else value
    return out


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def last_training(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records of the last run in a ``metrics.jsonl`` (a reused folder appends): from the last
    line of epoch 1 on."""
    starts = [i for i, r in enumerate(records) if r.get("epoch") == 1]
    return records[starts[-1]:] if starts else records


# -- logging ---------------------------------------------------------------------------------------
def _import_mlflow():
    """``mlflow``, imported offline: its telemetry client starts (or not) at its first import, so
    every import of it here goes through this."""
    os.environ.update(OFFLINE_ENV)
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    import mlflow.tracking

    return mlflow


def _mlflow_client(uri: str):
    return _import_mlflow().tracking.MlflowClient(tracking_uri=uri)


class Tracker:
    """One tracking store and experiment; each method logs to a run id. Use ``tracking()``."""

    def __init__(self, uri: str, experiment: str):
        self.uri, self.experiment, self.client = uri, experiment, _mlflow_client(uri)
        from mlflow.exceptions import MlflowException

        self.open: list[str] = []  # runs started and not yet finished
        found = self.client.get_experiment_by_name(experiment)
        if found is None:
            try:
                self.experiment_id = self.client.create_experiment(experiment)
            except MlflowException:  # created meanwhile by another process
                found = self.client.get_experiment_by_name(experiment)
                if found is None:
                    raise
        if found is not None:
            self.experiment_id = found.experiment_id

    def start(self, name: str | None = None, *, tags: Mapping[str, str] | None = None,
              parent: str | None = None) -> str:
        tags = {**(tags or {}), **({"mlflow.parentRunId": parent} if parent else {})}
        run_id = self.client.create_run(self.experiment_id, run_name=name, tags=tags).info.run_id
        self.open.append(run_id)
        return run_id

    def params(self, run_id: str, params: Mapping[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), _BATCH_PARAMS):
            self.client.log_batch(run_id, params=items[i:i + _BATCH_PARAMS])

    def metrics(self, run_id: str, series: Series) -> int:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(key, value, now, step) for key, value, step in series]
        for i in range(0, len(items), _BATCH_METRICS):
            self.client.log_batch(run_id, metrics=items[i:i + _BATCH_METRICS])
        return len(items)

    def artifacts(self, run_id: str, files: Iterable[Path], folder: str | None = None) -> list[str]:
        logged = []
        for f in files:
            if Path(f).is_file():
                self.client.log_artifact(run_id, str(f), folder)
                logged.append(Path(f).name)
        return logged

    def json(self, run_id: str, obj: Any, name: str) -> None:
        self.client.log_dict(run_id, obj, name)

    def finish(self, run_id: str, status: str = "FINISHED") -> TrackedRun:
        self.client.set_terminated(run_id, status)
        self.open.remove(run_id)
        return TrackedRun(run_id, self.uri, self.experiment)


@contextmanager
def tracking(uri: str, experiment: str, *, outputs: Path | None = None) -> Iterator[Tracker]:
    """A ``Tracker`` on ``uri``; MLflow's errors (and the store's OSErrors) inside become a
    ``TrackingError`` naming the URI (and the kept ``outputs``)."""
    try:
        MlflowException = _import_mlflow().exceptions.MlflowException
    except ImportError as exc:  # pragma: no cover - a requirement; a clear word if it is missing
        raise TrackingError(f"tracking needs MLflow ({exc}); pip install mlflow-skinny, or pass --no-track") from None
    kept = f"; the run's outputs are kept in {outputs}" if outputs else ""
    tracker = None
    try:
        tracker = Tracker(uri, experiment)
        yield tracker
    except (MlflowException, OSError) as exc:
        for run_id in tracker.open if tracker else ():  # what was started stays, marked failed
            try:
                tracker.client.set_terminated(run_id, "FAILED")
            except Exception:  # noqa: BLE001 - the store is failing already; the error below says so
                pass
        reason = getattr(exc, "message", None) or (f"{exc.strerror}: {exc.filename}" if isinstance(exc, OSError)
                                                   and exc.strerror else str(exc))
        raise TrackingError(f"tracking: could not log to {uri}: {_shorten(str(reason)).rstrip('.')}{kept} "
                            f"(--no-track skips tracking)") from None


def _shorten(text: str, limit: int = 300) -> str:
    """The first line of ``text``, cut after its last full sentence within ``limit`` characters."""
    line = (text.strip().splitlines() or [""])[0].strip()
    if len(line) <= limit:
        return line
    end = line.rfind(". ", 0, limit)
    return line[:end + 1] if end > 0 else line[:limit - 3] + "..."


def log_run(*, uri: str, experiment: str, name: str | None = None, params: Mapping[str, str] | None = None,
            metrics: Series = (), artifacts: Iterable[Path] = (), documents: Mapping[str, Any] | None = None,
            tags: Mapping[str, str] | None = None, parent: str | None = None,
            outputs: Path | None = None) -> TrackedRun:
    """One finished run: ``params``, ``metrics`` (key, value, step), ``artifacts`` (files) and
    ``documents`` (artifact name -> a JSON-able object)."""
    with tracking(uri, experiment, outputs=outputs) as t:
        run_id = t.start(name, tags=tags, parent=parent)
        t.params(run_id, params or {})
        t.metrics(run_id, metrics)
        t.artifacts(run_id, artifacts)
        for doc_name, obj in (documents or {}).items():
            t.json(run_id, obj, doc_name)
        return t.finish(run_id)


def training_series(history: Iterable[Mapping[str, Any]]) -> list[tuple[str, float, int]]:
    """Each epoch record's numbers (``flat_numbers``: ``train_loss``, ``loss``, ``overall/accuracy``,
    ``by_pattern/toy_image.toy_note/accuracy``, ...) with the epoch as the step."""
    return [(k, v, int(r["epoch"])) for r in history for k, v in flat_numbers(r).items() if k != "epoch"]


def log_training_run(run_dir: Path, *, uri: str | None = None, experiment: str = TRAIN_EXPERIMENT,
                     name: str | None = None) -> TrackedRun:
    """Log the run ``mmdomain train`` wrote in ``run_dir``: its config (``config.json``) as params
    and as a ``config.json`` artifact (paths cut to their last component), each epoch of its last
    run in ``metrics.jsonl`` as metrics (step = epoch), the model and the reports as artifacts."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file():
        raise TrackingError(f"tracking: {run_dir} holds no config.json: not a finished `mmdomain train` run")
    try:
        config = json.loads((run_dir / "config.json").read_text())
        history = last_training(read_jsonl(run_dir / "metrics.jsonl"))
    except ValueError as exc:  # JSONDecodeError: a file edited or cut short
        raise TrackingError(f"tracking: {run_dir}: config.json or metrics.jsonl is not JSON ({exc})") from None
    return log_run(uri=resolve_uri(uri, run_dir), experiment=experiment, name=name or run_dir.name,
                   params=flat_params(config, paths=TRAIN_PATH_KEYS), metrics=training_series(history),
                   artifacts=[run_dir / f for f in TRAIN_ARTIFACTS],
                   documents={"config.json": redact(config, TRAIN_PATH_KEYS)},
                   tags={"mmdomain.kind": "train", "mmdomain.epochs": str(len(history))}, outputs=run_dir)
