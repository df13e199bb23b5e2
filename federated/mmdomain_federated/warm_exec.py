"""A SuperExec for one site whose ClientApp processes start warm.

Flower 1.42's SuperNode (default ``--isolation subprocess``) starts ``flower-superexec``, which
starts a fresh ``flwr-clientapp`` process for every message; each one imports torch, flwr and the
app again (~8 s here, longer than a round of a small model). With ``--isolation process`` the
SuperNode leaves launching to an external SuperExec. This one runs Flower's own SuperExec loop
(``flower-superexec``, same arguments, same token-authenticated Runtime API) with one change: the
executor starts each ``flwr-clientapp`` as a child of a fork server that imported torch, flwr and
this app once (``multiprocessing``'s forkserver with preloading). Every message still gets its own
process, so no state leaks between messages; only the start-up cost is gone.

    python -m mmdomain_federated.warm_exec --runtime-api-address 127.0.0.1:PORT --insecure --parent-pid PID \
        [--policy-file /etc/mmdomain/policy.toml]

``--policy-file`` (this executor's own option, the path the SuperNode's ``--node-config`` names):
the site's policy is validated before anything starts (``policy.check_file``, the rule
``load_policy`` applies at every message); an invalid file stops the executor with every problem
listed and exit status 2, so a misspelt key is found when the site starts, not when a job arrives.
Each ClientApp process then runs the site's gate (``site_guard``) on that file before the job's app
is unpacked: an app not in ``approved-apps``, or a run config the policy refuses, gets the site's
refusal and none of the job's code runs (without ``--policy-file``: the SuperNode's node-config
``policy-file``).
"""

from __future__ import annotations

import multiprocessing
import sys
from typing import Any

#: Imported once in the fork server; the app module is then found in sys.modules by Flower's loader.
PRELOAD = ["mmdomain_federated.warm_preload"]


def _run_clientapp(argv: list[str], policy_file: str | None = None) -> None:
    sys.argv = ["flwr-clientapp", *argv]
    from flwr.supernode.cli import flwr_clientapp

    from .site_guard import install

    install(policy_file)  # the site's own check, before the job's app is unpacked or imported
    flwr_clientapp()


class WarmForkExecutor:
    """Flower's executor protocol (``launch``, ``reconcile``, ``close``, capacity hooks) for
    ClientApp tasks, forking each from the preloaded fork server."""

    def __init__(self, preload: list[str] | None = None, policy_file: str | None = None):
        from flwr.supercore.constant import TaskType

        self.policy_file = policy_file
        self.task_type = TaskType.CLIENT_APP
        self.ctx = multiprocessing.get_context("forkserver")
        self.ctx.set_forkserver_preload(list(preload or PRELOAD))
        from multiprocessing import forkserver

        forkserver.ensure_running()  # pay the imports now, not on the first message
        self.children: list[Any] = []

    def get_eligible_capacity(self, supported_task_types, *, insecure: bool = False,
                              root_certificates_path: str | None = None):
        return {t for t in supported_task_types if t == self.task_type}, set()

    def wait_for_capacity(self, task_type=None, *, fab_hash=None, insecure: bool = False,
                          root_certificates_path: str | None = None) -> None:
        return None

    def launch(self, spec):
        from flwr.supercore.superexec.executor.types import LaunchResult

        if spec.task_type != self.task_type:
            return LaunchResult.failed(f"this SuperExec starts ClientApps only, not {spec.task_type}")
        argv = ["--runtime-api-address", spec.runtime_api_address, "--token", spec.token]
        if spec.insecure:
            argv.append("--insecure")
        elif spec.root_certificates_path is not None:
            argv += ["--root-certificates", spec.root_certificates_path]
        if spec.parent_pid is not None:
            argv += ["--parent-pid", str(spec.parent_pid)]
        proc = self.ctx.Process(target=_run_clientapp, args=(argv, self.policy_file),
                                name=f"clientapp-{spec.task_id}")
        proc.start()
        self.children.append(proc)
        return LaunchResult.accepted()

    def reconcile(self) -> None:
        self.children = [p for p in self.children if p.is_alive()]  # is_alive() reaps finished ones

    def close(self) -> None:
        for p in self.children:
            if p.is_alive():
                p.terminate()
        for p in self.children:
            p.join(timeout=5)
        self.children = []


def split_policy_file(argv: list[str]) -> tuple[str | None, list[str]]:
    """``--policy-file PATH`` (or ``--policy-file=PATH``) taken out of ``argv``: (PATH, the rest)."""
    rest, path, i = [], None, 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--policy-file":
            if i + 1 >= len(argv):
                raise SystemExit("warm_exec: --policy-file needs a path")
            path, i = argv[i + 1], i + 2
            continue
        if arg.startswith("--policy-file="):
            path = arg.split("=", 1)[1]
        else:
            rest.append(arg)
        i += 1
    return path, rest


def check_policy_at_start(path: str | None) -> None:
    """Validate the site's policy file before the executor starts: its summary on stderr, or
    every problem and ``SystemExit(2)``."""
    if not path:
        return
    from .policy import check_file, report

    result = check_file(path)
    sys.stderr.write("mmdomain warm SuperExec: " + report(result, path))
    sys.stderr.flush()
    if not result.ok:
        sys.stderr.write("mmdomain warm SuperExec: not started (fix the site policy file, then start again)\n")
        raise SystemExit(2)


def main(argv: list[str] | None = None) -> None:
    import os

    policy_file, argv = split_policy_file(list(sys.argv[1:] if argv is None else argv))
    check_policy_at_start(policy_file)  # before any import of flwr, before the fork server

    # asking the SuperNode beside it for new tasks costs a loopback request: every 0.2 s, not every 1 s
    os.environ.setdefault("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", "0.2")
    import flwr.supercore.superexec.run_superexec as superexec_loop
    from flwr.supercore.cli import flower_superexec

    executor = WarmForkExecutor(policy_file=policy_file)
    superexec_loop.get_executor = lambda *args, **kwargs: executor  # the loop's only executor hook
    sys.argv = ["flower-superexec", *argv]
    flower_superexec()


if __name__ == "__main__":
    main()
