"""Run the app in Flower's local simulation (Ray) with a private FLWR_HOME, and stop the
local SuperLink that ``flwr run`` leaves behind (by its PID, found through our own FLWR_HOME).
``mmdomain fed run``, ``mmdomain demo`` (its output streamed line by line) and the tests all
launch Flower through ``run_simulation``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

APP_DIR = Path(__file__).resolve().parents[1]
FLOWER_ENV = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
              "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "PYTHONUNBUFFERED": "1"}


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    return '"' + str(v).replace('"', '\\"') + '"'


def run_config_arg(config: dict[str, Any]) -> str:
    return " ".join(f"{k}={_toml_value(v)}" for k, v in config.items())


def write_flwr_home(home: Path, num_sites: int, *, num_cpus: float = 1, num_gpus: float = 0.0) -> Path:
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(f"""[superlink]
default = "local"

[superlink.local]
address = ":local:"
options.num-supernodes = {num_sites}
options.backend.client-resources.num-cpus = {num_cpus}
options.backend.client-resources.num-gpus = {num_gpus}
""")
    return home


def _pids_using(path_fragment: str) -> list[int]:
    """PIDs of processes whose command line contains our private FLWR_HOME path."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if path_fragment in cmd and "flower-superlink" in cmd:
            pids.append(int(entry.name))
    return pids


def stop_local_superlink(home: Path) -> list[int]:
    pids = _pids_using(str(home))
    for pid in pids:
        try:
            os.killpg(pid, signal.SIGTERM)  # detached: its own process group (Ray, flwr-simulation too)
        except (ProcessLookupError, PermissionError):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.time() + 10
    while time.time() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
        time.sleep(0.2)
    for pid in pids:
        if Path(f"/proc/{pid}").exists():
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    return pids


def free_port_base(tries: int = 50) -> int:
    """A port p with p and p + 2 free on 127.0.0.1 (the local SuperLink's HTTP and control APIs),
    so simulations started side by side (a notebook while the demo runs) do not collide on
    Flower's fixed defaults (39091/39093)."""
    import random
    import socket

    for _ in range(tries):
        p = random.randint(20000, 60000)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", p))
                b.bind(("127.0.0.1", p + 2))
            return p
        except OSError:
            continue
    raise OSError("no free pair of loopback ports for the local SuperLink")


def run_simulation(num_sites: int, run_config: dict[str, Any], *, flwr_home: Path | None = None,
                   num_cpus: float = 1, num_gpus: float = 0.0, timeout: float | None = 900,
                   app_dir: Path = APP_DIR, port_base: int | None = None,
                   on_line: Callable[[str], None] | None = None) -> subprocess.CompletedProcess:
    """``flwr run <app> local --stream`` with a temp FLWR_HOME; always stops the SuperLink.
    ``on_line`` gets each output line as it comes (stdout and stderr together, all in ``stdout``)."""
    home = flwr_home or Path(tempfile.mkdtemp(prefix="mmdomain-flwr-home-"))
    write_flwr_home(home, num_sites, num_cpus=num_cpus, num_gpus=num_gpus)
    env = {**os.environ, **FLOWER_ENV, "FLWR_HOME": str(home),
           "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")}
    port_base = port_base or free_port_base()
    if port_base:
        env["FLWR_LOCAL_SUPERLINK_HTTP_API_PORT"] = str(port_base)
        env["FLWR_LOCAL_CONTROL_API_PORT"] = str(port_base + 2)
    flwr = str(Path(sys.executable).with_name("flwr"))
    cmd = [flwr, "run", str(app_dir), "local", "--stream"]
    if run_config:
        cmd += ["--run-config", run_config_arg(run_config)]
    try:
        if on_line is None:
            return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=str(app_dir))
        return _streamed(cmd, env, app_dir, timeout, on_line)
    finally:
        stop_local_superlink(home)


def _streamed(cmd: list[str], env: dict[str, str], cwd: Path, timeout: float | None,
              on_line: Callable[[str], None]) -> subprocess.CompletedProcess:
    """``subprocess.run`` with the output handed to ``on_line`` line by line."""
    proc = subprocess.Popen(cmd, env=env, cwd=str(cwd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    expired = threading.Event()
    timer = threading.Timer(timeout, lambda: (expired.set(), proc.kill())) if timeout else None
    lines: list[str] = []
    try:
        if timer:
            timer.start()
        for line in proc.stdout:
            lines.append(line)
            on_line(line)
        proc.wait(timeout=60)
    finally:
        if timer:
            timer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if expired.is_set():
        raise subprocess.TimeoutExpired(cmd, timeout, output="".join(lines))
    return subprocess.CompletedProcess(cmd, proc.returncode, "".join(lines), "")
