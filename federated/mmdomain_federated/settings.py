"""The run config (``[tool.flwr.app.config]`` in ``federated/pyproject.toml``), typed and checked.

``Settings()`` defaults are the table's defaults (a test keeps them equal); keys are the
table's kebab-case names with ``_`` for ``-``. Imports no flwr and no torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from mmdomain.errors import ConfigError

#: Settings fields that are deliberately not in ``[tool.flwr.app.config]``, with the reason.
#: Every other field must be there, with the same default (tests/test_settings.py).
NOT_IN_APP_CONFIG: dict[str, str] = {}

#: Settings fields that are options of ``task = "contrastive"`` (``mmdomain.tasks.ContrastiveTask``'s own).
CONTRASTIVE_OPTIONS = ("proj_dim", "temperature")
#: ``strategy`` values with a server-side optimiser (``server_opt``), and the options each takes.
SERVER_OPTIMISERS = {"fedadam": ("server_lr", "server_beta1", "server_beta2", "server_tau"),
                     "fedyogi": ("server_lr", "server_beta1", "server_beta2", "server_tau"),
                     "fedadagrad": ("server_lr", "server_tau")}
STRATEGIES = ("fedavg", "fedprox", *SERVER_OPTIMISERS)
AGGREGATIONS = ("modality", "plain", "median", "trimmed-mean", "krum")
#: ``personalise`` values (``personal``): what stays at each site, or fine-tuning after the last round.
PERSONALISATION = ("fedbn", "fedper", "finetune", "ditto")
FINETUNE_SELECT = ("last", "val-loss")  # which fine-tuned epoch a site keeps (personal.py)


@dataclass
class Settings:
    """The run config, typed. Keys are the kebab-case names."""

    dataset: str = "toy"
    data_root: str = ""
    partition: str = ""
    site_modalities: str = ""
    synthetic_quick: bool = True
    num_server_rounds: int = 3
    local_epochs: int = 1
    batch_size: int = 16
    lr: float = 0.003
    max_steps: int = 0
    fusion: str = ""
    task: str = ""  # "" = the dataset's default (supervised) task; "contrastive" = cross-modal pretraining
    proj_dim: int = 128  # task=contrastive: the projection each modality's embedding is compared in
    temperature: float = 0.07  # task=contrastive: the initial softmax temperature (it is learned)
    augment: str = "auto"  # view augmentation of local batches: auto (on for task=contrastive) | on | off
    strategy: str = "fedavg"  # fedavg | fedprox | fedadam | fedyogi | fedadagrad (server optimiser: server_opt.py)
    proximal_mu: float = 0.01
    server_lr: float = 0.01  # fedadam / fedyogi / fedadagrad: the server's step size (Flower's eta)
    server_beta1: float = 0.9  # fedadam / fedyogi: first-moment decay (Flower's beta_1)
    server_beta2: float = 0.99  # fedadam / fedyogi: second-moment decay (Flower's beta_2)
    server_tau: float = 1e-3  # fedadam / fedyogi / fedadagrad: adaptivity (added to sqrt(v); Flower's tau)
    aggregation: str = "modality"  # modality | plain | median | trimmed-mean | krum (robust, unweighted)
    trim_fraction: float = 0.2  # aggregation=trimmed-mean: the share of values dropped at each end (>= 1 with 3+)
    krum_byzantine: int = 1  # aggregation=krum: f, the attackers tolerated (a group needs > 2f + 2 sites)
    min_sites: int = 2
    expected_sites: int = 0
    fraction_train: float = 1.0  # client sampling: the share of live sites a round trains (at least min-sites)
    round_timeout: float = 600.0
    seed: int = 0
    device: str = "auto"
    fused_eval: bool = True
    readiness: bool = True
    readiness_rows: int = 256  # rows of the train split read for the report's label and input statistics (0 = none)
    outlier_factor: float = 10.0
    max_site_samples: int = 1_000_000  # a site reporting more samples (in any count) is rejected
    max_site_weight: float = 0.5  # one site's largest share of a group's average (>= 3 sites; 1 = no cap)
    central_dp: bool = False
    noise_multiplier: float = 1.0
    clip_norm: float = 1.0
    target_delta: float = 1e-5
    max_epsilon: float = 0.0
    local_dp: bool = False
    local_noise_multiplier: float = 1.0
    local_clip_norm: float = 1.0
    local_batch_size: int = 256  # local-dp: the expected Poisson batch (0 = batch-size); capped at the site's size
    target_epsilon: float = 0.0  # > 0: the DP noise is planned to spend at most this over the whole training
    encoder_train: str = ""  # per-encoder train policy, "m=none;m2=last:1" (mmdomain.models.trainable)
    init_from: str = ""  # a checkpoint every participant starts from (its frozen parts never travel)
    evaluate_only: bool = False  # no training: init-from's own model, whole, evaluated on every site (fed evaluate)
    evaluate_split: str = "test"  # evaluate-only: the split each site scores (test | val)
    secagg: bool = False
    secagg_shares: float = 1.0  # fraction of the round's sites each one shares its mask secrets with
    secagg_threshold: float = 0.67  # fraction of those shares needed to unmask a dropped site
    secagg_clip_range: float = 1.0  # |weight x delta| and weights are quantised within this range
    secagg_weight_scale: float = 1000.0  # sample counts are divided by this before weighting
    compress: str = "none"
    out_dir: str = ""
    resume: bool = True
    stop_after_round: int = 0
    checkpoint_metric: str = ""  # "" = off; a round validation metric (eval-macro_auroc): best.safetensors
    checkpoint_mode: str = "max"  # max | min: which way checkpoint-metric improves
    early_stopping_patience: int = 0  # stop after this many scored models without improvement (0 = off)
    personalise: str = ""  # "" = off | fedbn | fedper | finetune | ditto: each site's own model (personal.py)
    ditto_lambda: float = 0.1  # personalise=ditto: how strongly each site's model is pulled toward the global one
    finetune_epochs: int = 1  # personalise=finetune: epochs each site fine-tunes the global model after the last round
    finetune_select: str = "last"  # personalise=finetune: last | val-loss (the epoch, 0 = global, of least val loss)

    @classmethod
    def from_run_config(cls, run_config: dict[str, Any]) -> "Settings":
        known = {f.name: f for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in dict(run_config).items():
            name = key.replace("-", "_")
            if name not in known:
                raise ConfigError(f"run config: unknown key {key!r}; known: {sorted(k.replace('_', '-') for k in known)}")
            values[name] = _cast(key, value, type(known[name].default))
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Raise ``ConfigError`` for a value or combination the app cannot run."""
        if self.num_server_rounds < 1:  # a run without a round would only hand out its initial model
            raise ConfigError(f"run config: num-server-rounds must be >= 1, got {self.num_server_rounds}")
        if self.central_dp and self.target_epsilon <= 0 and self.noise_multiplier <= 0:  # else: infinite epsilon
            raise ConfigError(f"run config: central-dp needs noise-multiplier > 0 (or target-epsilon to plan it), "
                              f"got {self.noise_multiplier:g}")
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"run config: strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        self._validate_server_optimiser()
        if self.aggregation not in AGGREGATIONS:
            raise ConfigError(f"run config: aggregation must be one of {', '.join(AGGREGATIONS)}, "
                              f"got {self.aggregation!r}")
        if self.aggregation == "krum" and self.krum_byzantine < 1:
            raise ConfigError(f"run config: krum-byzantine (f, the attackers Krum tolerates) must be >= 1, "
                              f"got {self.krum_byzantine}")
        if self.aggregation == "krum" and self.min_sites <= 2 * self.krum_byzantine + 2:
            raise ConfigError(f"run config: aggregation=krum with krum-byzantine={self.krum_byzantine} needs more than "
                              f"2f + 2 = {2 * self.krum_byzantine + 2} sites per round: set min-sites >= "
                              f"{2 * self.krum_byzantine + 3} (now {self.min_sites}) or lower krum-byzantine")
        if self.aggregation in ("median", "trimmed-mean", "krum") and (self.central_dp or self.secagg):
            raise ConfigError(f"run config: aggregation={self.aggregation} needs each site's update in clear and "
                              f"undoes the central-DP sum's sensitivity; it cannot run with "
                              f"{'secagg' if self.secagg else 'central-dp'}")
        if not 0 <= self.trim_fraction < 0.5:
            raise ConfigError(f"run config: trim-fraction must be in [0, 0.5), got {self.trim_fraction:g}")
        if self.outlier_factor != 0 and not self.outlier_factor > 1:
            raise ConfigError(f"run config: outlier-factor must be 0 (off) or > 1, got {self.outlier_factor:g}")
        if self.readiness_rows < 0:
            raise ConfigError(f"run config: readiness-rows must be >= 0 (0 = no label or input statistics), "
                              f"got {self.readiness_rows}")
        if self.max_site_samples < 1:
            raise ConfigError(f"run config: max-site-samples must be >= 1, got {self.max_site_samples}")
        if not 0 < self.max_site_weight <= 1:
            raise ConfigError(f"run config: max-site-weight must be in (0, 1] (1 = no cap), "
                              f"got {self.max_site_weight:g}")
        if self.task not in ("", "contrastive"):
            raise ConfigError(f"run config: task must be '' (the dataset's default task) or contrastive, "
                              f"got {self.task!r}")
        changed = [f.name.replace("_", "-") for f in fields(self)
                   if f.name in CONTRASTIVE_OPTIONS and getattr(self, f.name) != f.default]
        if self.task != "contrastive" and changed:
            raise ConfigError(f"run config: {' and '.join(changed)} apply to task=contrastive only")
        if self.proj_dim < 1 or self.temperature <= 0:
            raise ConfigError("run config: proj-dim must be >= 1 and temperature > 0")
        if self.augment not in ("auto", "on", "off"):
            raise ConfigError(f"run config: augment must be auto, on or off, got {self.augment!r}")
        if self.compress not in ("none", "bf16"):
            raise ConfigError(f"run config: compress must be none or bf16, got {self.compress!r}")
        if self.secagg and not (0 < self.secagg_shares <= 1 and 0 < self.secagg_threshold <= 1):
            raise ConfigError("run config: secagg-shares and secagg-threshold are fractions in (0, 1]")
        if self.secagg and (self.secagg_clip_range <= 0 or self.secagg_weight_scale <= 0):
            raise ConfigError("run config: secagg-clip-range and secagg-weight-scale must be > 0")
        if self.local_batch_size < 0:
            raise ConfigError(f"run config: local-batch-size must be >= 0 (0 = batch-size), got {self.local_batch_size}")
        if self.target_epsilon < 0:
            raise ConfigError(f"run config: target-epsilon must be >= 0 (0 = off), got {self.target_epsilon}")
        if self.target_epsilon > 0 and not (self.local_dp or self.central_dp):
            raise ConfigError("run config: target-epsilon plans the noise of local-dp or central-dp; turn one on")
        if self.target_epsilon > 0 and self.local_dp and self.central_dp:
            raise ConfigError("run config: target-epsilon plans one mechanism; choose local-dp or central-dp")
        self._validate_sampling()
        if self.evaluate_only and not self.init_from:
            raise ConfigError("run config: evaluate-only evaluates the model of init-from; name a checkpoint "
                              "(mmdomain fed evaluate --checkpoint M)")
        if self.evaluate_split not in ("test", "val"):
            raise ConfigError(f"run config: evaluate-split must be test or val, got {self.evaluate_split!r}")
        self._validate_checkpointing()
        self._validate_personalisation()
        self.encoder_policies()  # a malformed policy fails here, not at the first round
        if self.secagg and self.compress != "none":
            raise ConfigError("run config: compress applies to clear-text updates; SecAgg+ quantises its own")

    def _validate_server_optimiser(self) -> None:
        takes = SERVER_OPTIMISERS.get(self.strategy, ())
        defaults = {f.name: f.default for f in fields(self)}
        stray = [n.replace("_", "-") for n in SERVER_OPTIMISERS["fedadam"]
                 if n not in takes and getattr(self, n) != defaults[n]]
        if stray:
            which = "apply to strategy=fedadam, fedyogi or fedadagrad" if not takes else \
                f"do not apply to strategy={self.strategy}"
            raise ConfigError(f"run config: {' and '.join(stray)} {which}")
        if not takes:
            return
        if not (self.server_lr > 0 and math.isfinite(self.server_lr)):
            raise ConfigError(f"run config: server-lr must be a finite number > 0, got {self.server_lr:g}")
        if not (self.server_tau > 0 and math.isfinite(self.server_tau)):
            raise ConfigError(f"run config: server-tau must be a finite number > 0 (it keeps the step finite where "
                              f"the second moment is 0), got {self.server_tau:g}")
        for name in ("server_beta1", "server_beta2"):
            if name in takes and not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"run config: {name.replace('_', '-')} must be in [0, 1), got {getattr(self, name):g}")

    def _validate_sampling(self) -> None:
        if not (0 < self.fraction_train <= 1) or not math.isfinite(self.fraction_train):
            raise ConfigError(f"run config: fraction-train is the share of sites a round trains, in (0, 1], got "
                              f"{self.fraction_train:g}")
        if self.fraction_train < 1 and (self.central_dp or self.secagg):
            raise ConfigError("run config: fraction-train < 1 samples sites without the Poisson sampling a "
                              "privacy amplification would need, and SecAgg+ rounds mask over every site: use it "
                              f"without {'secagg' if self.secagg else 'central-dp'} (local-dp is unaffected: a "
                              "site that is not sampled spends nothing)")

    def _validate_checkpointing(self) -> None:
        metric = self.checkpoint_metric
        if metric and not (metric.startswith("eval-") and len(metric) > 5 and "/" not in metric):
            raise ConfigError(f"run config: checkpoint-metric must name an overall validation metric of the rounds "
                              f"(eval-<name>, e.g. eval-macro_auroc or eval-loss), got {metric!r}")
        if self.checkpoint_mode not in ("max", "min"):
            raise ConfigError(f"run config: checkpoint-mode must be max or min, got {self.checkpoint_mode!r}")
        if metric.endswith("loss") and self.checkpoint_mode == "max":
            raise ConfigError(f"run config: checkpoint-metric={metric} with checkpoint-mode=max would keep the model "
                              f"with the highest loss; set checkpoint-mode=min")
        if self.early_stopping_patience < 0:
            raise ConfigError(f"run config: early-stopping-patience must be >= 0 (0 = off), "
                              f"got {self.early_stopping_patience}")
        if self.early_stopping_patience and not metric:
            raise ConfigError("run config: early-stopping-patience needs checkpoint-metric (the metric that must "
                              "improve)")

    def _validate_personalisation(self) -> None:
        if self.personalise not in ("", *PERSONALISATION):
            raise ConfigError(f"run config: personalise must be '' (off) or one of {', '.join(PERSONALISATION)}, "
                              f"got {self.personalise!r}")
        if self.finetune_epochs < 1:
            raise ConfigError(f"run config: finetune-epochs must be >= 1, got {self.finetune_epochs}")
        if self.finetune_epochs != 1 and self.personalise != "finetune":
            raise ConfigError("run config: finetune-epochs applies to personalise=finetune only")
        if self.finetune_select not in FINETUNE_SELECT:
            raise ConfigError(f"run config: finetune-select must be one of {', '.join(FINETUNE_SELECT)}, "
                              f"got {self.finetune_select!r}")
        if self.finetune_select != "last" and self.personalise != "finetune":
            raise ConfigError("run config: finetune-select applies to personalise=finetune only")
        if not (self.ditto_lambda > 0 and math.isfinite(self.ditto_lambda)):
            raise ConfigError(f"run config: ditto-lambda must be a finite number > 0, got {self.ditto_lambda:g}")
        if self.ditto_lambda != 0.1 and self.personalise != "ditto":
            raise ConfigError("run config: ditto-lambda applies to personalise=ditto only")
        if self.personalise in ("fedbn", "fedper") and self.secagg:
            raise ConfigError(f"run config: personalise={self.personalise} keeps part of the model at each site, "
                              "which SecAgg+'s fixed vector layout cannot leave out; use it without secagg "
                              "(or personalise=finetune)")
        if self.personalise and self.evaluate_only:
            raise ConfigError("run config: evaluate-only trains nothing, so there is nothing to personalise")

    @property
    def server_optimiser(self) -> str:
        """The server-side optimiser's rule (``server_opt``), '' for fedavg / fedprox."""
        return self.strategy if self.strategy in SERVER_OPTIMISERS else ""

    def encoder_policies(self) -> dict[str, str]:
        """``encoder-train`` as ``{modality: policy}``."""
        out: dict[str, str] = {}
        for part in filter(None, (p.strip() for p in self.encoder_train.split(";"))):
            modality, sep, policy = part.partition("=")
            if not sep or not modality.strip() or not policy.strip():
                raise ConfigError(f"run config: encoder-train entry {part!r} is not modality=policy")
            out[modality.strip()] = policy.strip()
        return out

    def train_batch_size(self, n: int) -> int:
        """The batch a site of ``n`` training rows trains with: ``local-batch-size`` under local DP
        (the expected size of its Poisson batches; at most ``n``), else ``batch-size``."""
        size = self.local_batch_size if self.local_dp and self.local_batch_size else self.batch_size
        return max(1, min(size, n)) if n else size

    def as_run_config(self) -> dict[str, Any]:
        return {f.name.replace("_", "-"): getattr(self, f.name) for f in fields(self)}


_BOOL_WORDS = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}


def _cast(key: str, value: Any, typ: type) -> Any:
    try:
        if typ is bool and isinstance(value, str):  # "perhaps" is not false: a site's policy reads these
            if value.strip().lower() not in _BOOL_WORDS:
                raise ValueError(value)
            return _BOOL_WORDS[value.strip().lower()]
        if typ is bool and not isinstance(value, (bool, int)):
            raise ValueError(value)
        return typ(value)
    except (TypeError, ValueError):
        raise ConfigError(f"run config: {key}={value!r} is not a {typ.__name__}") from None
