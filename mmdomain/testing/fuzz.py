"""Seeded fuzzing of file and message readers: mutate real bytes, run the reader on each mutant in a
bounded child, classify what happened (issue #17 item 6). Knows no domain: the plugins' and the
federated layer's tests say what to mutate and what to read.

Mutants. ``mutate(data, seed)`` applies one to three of the ``MUTATORS`` to ``data`` and says which:

- ``truncate``: cut the bytes at an offset;
- ``flip``: flip 1, 2, 4 or 8 random bits;
- ``overwrite``: overwrite a span (1 to 64 bytes) with 0x00, 0xFF or random bytes;
- ``duplicate`` / ``delete``: repeat a span in place, or remove it;
- ``integer``: write a big integer (a declared length or count: 2**n - 1, 2**(n-1), 2**(n-1) - 1, or
  random above 2**(n-2)) of 2, 4 or 8 bytes, little or big endian, at an offset aligned to its width.

``focus=(lo, hi)`` puts three operations in four inside that span (a file's header, where a flipped
bit changes a declared size rather than a pixel). Each mutant is a function of the bytes and its
seed alone. ``unmutated`` stands in for ``mutate`` to run a family's cases on the real files.

Outcomes. ``run_case(case, allowed=...)`` runs ``case.run()`` in a forked child
(``bounded.run_child``: RLIMIT_AS at its size plus ``memory``, an alarm after ``timeout`` s) and
says what happened, as an ``Outcome`` of one of ``KINDS``:

- ``ok``: it returned (the callable checks the result itself: an ``AssertionError`` is a crash);
- ``clear``: it raised one of the ``allowed`` error types, or ``Refused`` (the code under test turned
  the input away without raising: a skip list, a rejected reply, re-raised by the callable with the
  message as written), and the message names the file (``case.names``: a string the message must
  hold, or a predicate on it);
- ``unnamed``: such an error whose message does not name the file (or names what it must not);
- ``crash``: any other exception: its type, message and innermost frame are kept;
- ``abort``: the child died by a signal (SIGABRT, SIGSEGV...) or without a word;
- ``hang``: still running after ``timeout`` s;
- ``memory``: a ``MemoryError`` (the address-space limit), also when wrapped into an allowed error.

``FAILURES`` are the kinds a fuzz test asserts never happen; ``tally(outcomes)`` counts each kind and
the peak memory (``ru_maxrss`` of the children, and how far a child grew past its size at the fork)
for tables. POSIX only (``os.fork``).
"""

from __future__ import annotations

import random
import signal
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from .bounded import run_child

KINDS = ("ok", "clear", "unnamed", "crash", "abort", "hang", "memory")
FAILURES = frozenset(KINDS[2:])
MEMORY = 2 << 30  # bytes a child may map beyond its size at the fork
TIMEOUT = 30  # seconds


# -- mutators --------------------------------------------------------------------------------------

def _span(data: bytes, rng: random.Random, lo: int, hi: int | None, most: int = 64) -> tuple[int, int]:
    """A span [start, end) of 1 to ``most`` bytes inside [lo, hi) of ``data`` (clamped to it)."""
    hi = len(data) if hi is None else min(hi, len(data))
    lo = min(max(lo, 0), max(hi - 1, 0))
    start = rng.randrange(lo, max(hi, lo + 1))
    return start, min(start + rng.randint(1, most), max(hi, start + 1))


def truncate(data: bytes, rng: random.Random, lo: int = 0, hi: int | None = None) -> bytes:
    """``data`` cut at an offset in [lo, hi)."""
    return data[:_span(data, rng, lo, hi)[0]]


def flip_bits(data: bytes, rng: random.Random, lo: int = 0, hi: int | None = None, count: int | None = None
              ) -> bytes:
    """``data`` with ``count`` (default: 1, 2, 4 or 8) random bits in [lo, hi) flipped."""
    if not data:
        return data
    hi = len(data) if hi is None else min(hi, len(data))
    lo = min(max(lo, 0), hi - 1)
    count = rng.choice((1, 2, 4, 8)) if count is None else count
    out = bytearray(data)
    for _ in range(count):
        out[rng.randrange(lo, hi)] ^= 1 << rng.randrange(8)
    return bytes(out)


def overwrite(data: bytes, rng: random.Random, lo: int = 0, hi: int | None = None) -> bytes:
    """``data`` with a span overwritten by 0x00, 0xFF or random bytes."""
    start, end = _span(data, rng, lo, hi)
    fill = rng.choice((b"\x00", b"\xff", None))
    new = rng.randbytes(end - start) if fill is None else fill * (end - start)
    return data[:start] + new + data[end:]


def duplicate(data: bytes, rng: random.Random, lo: int = 0, hi: int | None = None) -> bytes:
    """``data`` with a span repeated where it stands."""
    start, end = _span(data, rng, lo, hi)
    return data[:end] + data[start:end] + data[end:]


def delete(data: bytes, rng: random.Random, lo: int = 0, hi: int | None = None) -> bytes:
    """``data`` without a span."""
    start, end = _span(data, rng, lo, hi)
    return data[:start] + data[end:]


def integer(data: bytes, rng: random.Random, lo: int = 0, hi: int | None = None) -> bytes:
    """``data`` with a big integer of 2, 4 or 8 bytes written at an offset aligned to its width."""
    width = rng.choice((2, 4, 8))
    bits = 8 * width
    value = rng.choice((2**bits - 1, 2**(bits - 1), 2**(bits - 1) - 1, rng.randrange(2**(bits - 2), 2**bits)))
    start = _span(data, rng, lo, hi)[0]
    start -= start % width
    start += width if start < lo else 0
    raw = value.to_bytes(width, rng.choice(("little", "big")))
    return data[:start] + raw + data[start + width:]


MUTATORS: dict[str, Callable[..., bytes]] = {
    "truncate": truncate, "flip": flip_bits, "overwrite": overwrite, "duplicate": duplicate, "delete": delete,
    "integer": integer,
}


@dataclass(frozen=True)
class Mutant:
    """One mutant: its seed, the mutators applied and the bytes they made."""

    seed: int
    ops: tuple[str, ...]  # the mutators applied, in order
    data: bytes

    @property
    def label(self) -> str:
        return f"seed {self.seed}: {'+'.join(self.ops)}"


def mutate(data: bytes, seed: int, *, focus: tuple[int, int] | None = None, steps: int | None = None) -> Mutant:
    """One to three (``steps``) seeded ``MUTATORS`` applied to ``data``; with ``focus``, three in four
    land inside that span."""
    rng = random.Random(seed)
    names = [rng.choice(sorted(MUTATORS)) for _ in range(steps or rng.randint(1, 3))]
    for name in names:
        lo, hi = focus if focus is not None and rng.random() < 0.75 else (0, None)
        data = MUTATORS[name](data, rng, lo, hi)
    return Mutant(seed, tuple(names), data)


def unmutated(data: bytes, seed: int, **_: Any) -> Mutant:
    """``data`` as it is, in ``mutate``'s place: a family's cases on the real files (the control)."""
    return Mutant(seed, ("none",), data)


# -- outcomes --------------------------------------------------------------------------------------

class Refused(Exception):
    """Raised by a case's callable when the code under test refused its input without raising (a
    dataset's skipped file, a server's rejected reply), with that refusal's message as written."""


@dataclass
class Case:
    """One run of a reader on one mutant: ``run`` (no arguments: the mutant is already on disk or in
    the closure), what its error must name (``names``: a substring or a predicate), and a label."""

    label: str
    run: Callable[[], Any]
    names: str | Callable[[str], bool]


@dataclass(frozen=True)
class Outcome:
    kind: str  # one of KINDS
    label: str
    error: str = ""  # "Type: message" (cut to 300 characters)
    where: str = ""  # the innermost frame of a crash: "file:line in function"
    seconds: float = 0.0
    peak_rss: int = 0  # bytes: ru_maxrss of the child
    grew: int = 0  # bytes: how far the child's resident size grew past its size at the fork


class _Timeout(BaseException):
    pass


def _status_kb(field: str) -> int:
    return next((int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(field)), 0)


def _memory_in_chain(exc: BaseException | None) -> bool:
    seen = 0
    while exc is not None and seen < 20:
        if isinstance(exc, MemoryError) or "MemoryError" in str(exc):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def _innermost(exc: BaseException) -> str:
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename != __file__]  # not on_alarm
    if not frames:
        return ""
    f = frames[-1]
    return f"{Path(f.filename).name}:{f.lineno} in {f.name}"


def _names(names: str | Callable[[str], bool], message: str) -> bool:
    return names in message if isinstance(names, str) else bool(names(message))


def _attempt(case: Case, allowed: tuple[type[BaseException], ...]) -> dict[str, Any]:
    """In the child: run the case, classify it, measure how far the child grew."""
    def on_alarm(*_):
        raise _Timeout
    signal.signal(signal.SIGALRM, on_alarm)  # a Python-level hang reports where it was
    start_kb, t0 = _status_kb("VmRSS:"), time.monotonic()
    out: dict[str, Any] = {"kind": "ok"}
    try:
        case.run()
    except _Timeout as exc:
        out = {"kind": "hang", "where": _innermost(exc)}
    except BaseException as exc:  # noqa: BLE001 - classified, never raised
        message = str(exc)
        if _memory_in_chain(exc):
            kind = "memory"
        elif isinstance(exc, (Refused, *allowed)):
            kind = "clear" if _names(case.names, message) else "unnamed"
        else:
            kind = "crash"
        out = {"kind": kind, "error": f"{type(exc).__name__}: {message[:300]}",
               "where": _innermost(exc) if kind == "crash" else ""}
    signal.alarm(0)
    out["seconds"] = time.monotonic() - t0
    out["grew"] = max(0, _status_kb("VmHWM:") - start_kb) * 1024
    return out


def run_case(case: Case, *, allowed: Sequence[type[BaseException]] = (), memory: int = MEMORY,
             timeout: int = TIMEOUT) -> Outcome:
    """``case.run()`` in a forked child under a memory limit and a timeout, classified (module doc)."""
    allowed = tuple(allowed)
    t0 = time.monotonic()
    child = run_child(lambda: _attempt(case, allowed), extra_bytes=memory, timeout=timeout)
    seconds = time.monotonic() - t0
    if child.result is not None and child.result[0] == "ok":
        r = child.result[1]
        return Outcome(r["kind"], case.label, r.get("error", ""), r.get("where", ""), r["seconds"],
                       child.maxrss, r["grew"])
    if child.result is not None:  # the classification itself failed: report it, do not hide it
        return Outcome("crash", case.label, str(child.result[1])[:300], "fuzz._attempt", seconds, child.maxrss)
    sig = child.signal
    if sig in (signal.SIGALRM, signal.SIGKILL) and seconds >= timeout:
        kind = "hang"
    elif sig == signal.SIGKILL:  # killed before its time: the kernel's OOM killer
        kind = "memory"
    else:
        kind = "abort"
    name = signal.Signals(sig).name if sig else f"exit status {child.status}"
    return Outcome(kind, case.label, f"died: {name}", "", seconds, child.maxrss)


def run_cases(cases: Iterable[Case], **kwargs: Any) -> list[Outcome]:
    """``run_case`` on each case, in order (``kwargs``: ``allowed``, ``memory``, ``timeout``)."""
    return [run_case(c, **kwargs) for c in cases]


def failures(outcomes: Iterable[Outcome]) -> list[Outcome]:
    """The outcomes of a ``FAILURES`` kind."""
    return [o for o in outcomes if o.kind in FAILURES]


def tally(outcomes: Iterable[Outcome]) -> dict[str, Any]:
    """``{"mutants": n, <kind>: count for each of KINDS, "peak_rss_mb", "grew_mb", "seconds",
    "slowest_s"}``: one row of a fuzz table."""
    outcomes = list(outcomes)
    row: dict[str, Any] = {"mutants": len(outcomes), **{k: sum(o.kind == k for o in outcomes) for k in KINDS}}
    row["peak_rss_mb"] = round(max((o.peak_rss for o in outcomes), default=0) / 2**20, 1)
    row["grew_mb"] = round(max((o.grew for o in outcomes), default=0) / 2**20, 1)
    row["seconds"] = round(sum(o.seconds for o in outcomes), 2)
    row["slowest_s"] = round(max((o.seconds for o in outcomes), default=0.0), 2)
    return row
