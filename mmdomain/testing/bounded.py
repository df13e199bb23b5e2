"""Run a hostile-input check in a forked child that may neither take the machine's memory nor hang.

``run_bounded(fn, extra_bytes=..., timeout=...)`` forks, caps the child's address space at its size
at the fork plus ``extra_bytes`` (RLIMIT_AS) and arms an alarm; the child runs ``fn()`` with one
torch thread (when torch is loaded) and pickles back what it returned. A regression that allocates
what a lying header asks, aborts in a native decoder or blocks on a FIFO then fails the test with
an ``AssertionError`` instead of stopping pytest. ``run_child`` is the same run, returning what
became of the child (its result, wait status and peak memory) instead of asserting: the fuzz
suite (``mmdomain.testing.fuzz``) classifies those. POSIX only (``os.fork``).
"""

from __future__ import annotations

import os
import pickle
import resource
import select
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Child:
    """What became of a forked child (``run_child``): ``result`` is ``("ok", value)``, ``("raised",
    "Type: message")`` or None (it died or hung: ``status`` says how), ``maxrss`` its peak resident
    size in bytes."""

    result: tuple[str, Any] | None
    status: int
    maxrss: int

    @property
    def signal(self) -> int:
        """The signal that ended the child (0 if it exited)."""
        return os.WTERMSIG(self.status) if os.WIFSIGNALED(self.status) else 0


def run_child(fn: Callable[[], Any], *, extra_bytes: int = 1 << 30, timeout: int = 30) -> Child:
    """``fn()`` in a forked child under RLIMIT_AS (its current size + ``extra_bytes``) and an alarm
    of ``timeout`` seconds (killed ``timeout + 10`` s after the fork at the latest)."""
    vm = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmSize"))
    hard = resource.getrlimit(resource.RLIMIT_AS)[1]
    limit = vm + extra_bytes if hard == resource.RLIM_INFINITY else min(vm + extra_bytes, hard)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.close(r)
            if "torch" in sys.modules:
                sys.modules["torch"].set_num_threads(1)
            resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
            signal.alarm(timeout)
            try:
                result = ("ok", fn())
            except BaseException as exc:  # noqa: BLE001 - reported to the parent
                result = ("raised", f"{type(exc).__name__}: {str(exc)[:500]}")
            with os.fdopen(w, "wb") as f:
                f.write(pickle.dumps(result))
        finally:
            os._exit(0)
    os.close(w)
    chunks, deadline = [], time.monotonic() + timeout + 10
    with os.fdopen(r, "rb") as f:
        while time.monotonic() < deadline:
            if select.select([f], [], [], 0.5)[0]:
                chunk = os.read(f.fileno(), 1 << 16)
                if not chunk:
                    break
                chunks.append(chunk)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    _, status, usage = os.wait4(pid, 0)
    try:
        result = pickle.loads(b"".join(chunks)) if chunks else None
    except Exception:  # noqa: BLE001 - killed half-way through writing it
        result = None
    return Child(result, status, usage.ru_maxrss * 1024)


def run_bounded(fn: Callable[[], Any], *, extra_bytes: int = 1 << 30, timeout: int = 30) -> Any:
    """``fn()`` in a forked child under RLIMIT_AS (its current size + ``extra_bytes``) and an alarm
    of ``timeout`` seconds; returns what it returned, or raises AssertionError if the child raised,
    died (an abort, the memory limit) or hung."""
    child = run_child(fn, extra_bytes=extra_bytes, timeout=timeout)
    assert child.result is not None, \
        f"the child died or hung (wait status {child.status}; SIGABRT is {signal.SIGABRT})"
    kind, value = child.result
    assert kind == "ok", value
    return value
