"""The site's gate in front of every job, in code the site installed.

A job ships its app (a FAB) from the coordinator. The policy check inside that app (``client_app``)
is the job's own code: a modified copy whose check always passes would train anything. So the
site's warm SuperExec (``warm_exec``) runs this gate in each ClientApp process, after Flower pulled
the task (message, run config, FAB) from the SuperNode and before the FAB is unpacked or any of its
code imported:

1. **the app**: with ``approved-apps`` in the site's policy, the FAB's sha256 must be one of them
   (``app_hash`` of the folder the site reviewed gives the same digest ``flwr run`` ships);
2. **the job**: the run config against the policy (``policy.violations``, the rule the app applies
   too), so a job asking for less than the policy is refused even from an approved app.

A refusal answers the message the way the app's own refusal does (the coordinator lists the site
under ``refused`` with the reason), is written to the site's log with the reason, and runs none of
the job's code. Flower 1.42 has app signatures (``flower-supernode --trusted-entities``) but they
need verification records that only a Flower platform SuperLink adds (``valid_license``): with a
self-hosted SuperLink every signed-app check fails, so the site approves apps by hash instead.

This hooks three names of ``flwr.supernode.runtime.run_clientapp`` (``pull_task_input``,
``install_from_fab``, ``get_load_client_app_fn``; Flower 1.42); ``install`` refuses to start if
one is missing, so a Flower upgrade that moves them stops the site instead of skipping the gate.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("mmdomain.federated.site")
HOOKED = ("pull_task_input", "install_from_fab", "get_load_client_app_fn")


def app_hash(app_dir: str | Path) -> str:
    """The sha256 of the FAB ``flwr run`` builds from ``app_dir`` (Flower's own builder: sorted
    files, fixed timestamps; the same folder gives the same digest on every machine)."""
    from flwr.cli.build import build_fab_from_disk

    app_dir = Path(app_dir)
    if not (app_dir / "pyproject.toml").is_file():
        raise FileNotFoundError(f"{app_dir} is not a Flower app folder (no pyproject.toml)")
    return hashlib.sha256(build_fab_from_disk(app_dir)).hexdigest()


@dataclass(frozen=True)
class Verdict:
    problems: tuple[str, ...] = ()

    @property
    def refused(self) -> bool:
        return bool(self.problems)

    @property
    def reason(self) -> str:
        return "site policy refuses this job: " + "; ".join(self.problems)


def judge(policy_file: str | None, fab_hash: str, run_config: dict[str, Any]) -> Verdict:
    """What the site's policy says of this job: the app first, then its run config."""
    from mmdomain.errors import ConfigError
    from mmdomain.plugins import get_registry

    from .policy import PolicyFileError, load_policy, violations
    from .settings import Settings

    try:
        policy = load_policy(policy_file)
    except PolicyFileError as exc:  # the problems only: the path stays in the site's log
        log.error("site policy file %s invalid: %s", policy_file, "; ".join(exc.problems))
        return Verdict(("the site's policy file is invalid (" + "; ".join(exc.problems) + "); the site must fix it",))
    if policy.approved_apps is not None and fab_hash not in policy.approved_apps:
        return Verdict((f"app sha256 {fab_hash} is not one of the site's approved-apps "
                        f"({', '.join(h[:12] + '...' for h in policy.approved_apps)})",))
    try:
        settings = Settings.from_run_config(dict(run_config))
        return Verdict(tuple(violations(policy, settings, get_registry())))
    except ConfigError as exc:
        return Verdict((f"the job's run config is invalid: {exc}",))


class Refusing:
    """What runs instead of the job's ClientApp when the site refuses it: the refusal as a
    reply (SecAgg+ stages: an error reply, as the app's own refusal raises there)."""

    def __init__(self, verdict: Verdict):
        self.verdict = verdict

    def __call__(self, message, context):
        from flwr.app import ConfigRecord, Message, RecordDict
        from flwr.app.error import Error
        from flwr.common.constant import ErrorCode

        from .secure import SECAGG_CONFIGS

        if SECAGG_CONFIGS in message.content.config_records:
            return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=self.verdict.reason),
                           reply_to=message)
        return Message(RecordDict({"site": ConfigRecord({"refused": self.verdict.reason})}), reply_to=message)


def install(policy_file: str | None) -> None:
    """Put the gate into Flower's ClientApp process (call before ``flwr_clientapp``). The policy
    is ``policy_file`` (the executor's ``--policy-file``), else the SuperNode's node-config
    ``policy-file``, else none (then only what the app checks applies: the site's log says so)."""
    import flwr.supernode.runtime.run_clientapp as rc

    missing = [name for name in HOOKED if not hasattr(rc, name)]
    if missing:
        raise RuntimeError(f"mmdomain site gate: flwr.supernode.runtime.run_clientapp has no {', '.join(missing)} "
                           "(another Flower version?): refusing to run jobs without the site's check")
    if not log.handlers:  # the ClientApp process's stderr is the warm SuperExec's log file
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s mmdomain site gate %(levelname)s: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    pull, unpack, loader = rc.pull_task_input, rc.install_from_fab, rc.get_load_client_app_fn
    state: dict[str, Verdict] = {}

    def pull_task_input(client):
        message, context, run, fab = pull(client)
        path = policy_file or context.node_config.get("policy-file") or None
        verdict = judge(str(path) if path else None, fab.hash_str, dict(context.run_config))
        state["verdict"] = verdict
        if verdict.refused:
            log.warning("site %s: refused the %s message of run %s (app sha256 %s) before running its app: %s",
                        context.node_id, message.metadata.message_type, context.run_id, fab.hash_str[:12],
                        verdict.reason)
        elif path is None:
            log.warning("site %s: no policy file: run %s's app runs unchecked by the site", context.node_id,
                        context.run_id)
        return message, context, run, fab

    def install_from_fab(*args, **kwargs):
        if state.get("verdict", Verdict(("no verdict",))).refused:
            return None  # a refused app is not even unpacked
        return unpack(*args, **kwargs)

    def get_load_client_app_fn(*args, **kwargs):
        load = loader(*args, **kwargs)

        def guarded(*a, **kw):
            verdict = state.get("verdict", Verdict(("the site's gate saw no task (internal error)",)))
            return Refusing(verdict) if verdict.refused else load(*a, **kw)
        return guarded

    rc.pull_task_input, rc.install_from_fab, rc.get_load_client_app_fn = (pull_task_input, install_from_fab,
                                                                          get_load_client_app_fn)
