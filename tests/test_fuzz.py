"""The fuzz harness (``mmdomain.testing.fuzz``, issue #17 item 6): its mutators are seeded and stay
where they are sent, its classification tells every way a reader can fail apart, and the core's
own binary reader (the safetensors checkpoint) is fuzzed with it: each mutant of a real checkpoint
loads a finite model or is a ``CheckpointError`` naming the file, under 2 GiB and 30 s.

The crafted checkpoint cases (lying lengths, huge shapes, bit flips in header and data) are in
``test_hostile_files``; here the mutants are random (spans overwritten, duplicated, deleted, big
integers spliced in), three in four inside the JSON header."""

from __future__ import annotations

import faulthandler
import os
import random
import struct
import time
from typing import Iterator

import pytest
import torch

from mmdomain import CheckpointError, DataError
from mmdomain.checkpoint import load_checkpoint, save_checkpoint
from mmdomain.config import ModelConfig, parse
from mmdomain.models.compose import FusionModel
from mmdomain.testing import fuzz
from mmdomain.testing.fuzz import Case, Refused, mutate, run_case, tally

from test_hostile_files import MODEL

SEED = 20260
CHECKPOINT_MUTANTS = 40


# -- mutators ------------------------------------------------------------------------------------------

DATA = bytes(range(256)) * 8


def test_mutants_are_a_function_of_the_bytes_and_the_seed():
    a = [mutate(DATA, SEED + i) for i in range(60)]
    b = [mutate(DATA, SEED + i) for i in range(60)]
    assert a == b
    assert all(m.data != DATA for m in a)  # every mutator changes something here (no span is empty)
    assert {op for m in a for op in m.ops} == set(fuzz.MUTATORS)
    assert len({m.data for m in a}) == len(a)
    assert all(1 <= len(m.ops) <= 3 for m in a)
    assert mutate(DATA, SEED).label.startswith(f"seed {SEED}: ")


@pytest.mark.parametrize("name", ["flip", "overwrite", "integer"])
def test_in_place_mutators_stay_inside_their_span(name):
    rng = random.Random(SEED)
    for _ in range(200):
        out = fuzz.MUTATORS[name](DATA, rng, 100, 300)
        assert len(out) == len(DATA)
        changed = [i for i, (x, y) in enumerate(zip(DATA, out)) if x != y]
        assert all(100 <= i < 300 + 8 for i in changed), changed  # an integer may end past it, by its width
        if name == "integer" and changed:
            assert changed[0] >= 100


def test_length_changing_mutators():
    rng = random.Random(SEED)
    cuts = {len(fuzz.truncate(DATA, rng, 10, 20)) for _ in range(100)}
    assert cuts <= set(range(10, 20)) and len(cuts) > 5
    assert all(len(fuzz.delete(DATA, rng)) < len(DATA) for _ in range(50))
    dup = fuzz.duplicate(DATA, rng)
    assert len(dup) > len(DATA) and DATA[:10] in dup
    assert fuzz.truncate(b"", rng) == b"" and fuzz.flip_bits(b"", rng) == b""


def test_focus_puts_most_operations_in_the_header():
    header = (0, 64)
    inside = 0
    for i in range(200):
        m = mutate(DATA, SEED + i, focus=header, steps=1)
        if m.ops[0] in ("flip", "overwrite"):
            first = next(j for j, (x, y) in enumerate(zip(DATA, m.data)) if x != y)
            inside += first < 64
        else:
            inside += 0.75  # not checked: counted at the expected rate
    assert 0.6 < inside / 200 < 0.9


# -- classification --------------------------------------------------------------------------------------

def _raise(exc):
    def run():
        raise exc
    return run


def _hog():
    return bytearray(1 << 30)  # 1 GiB under a 256 MiB limit


def test_each_kind_of_outcome_is_told_apart():
    name = "site/file-abc.bin"
    cases = {
        "ok": lambda: 42,
        "clear": _raise(DataError(f"{name}: truncated")),
        "refused": _raise(Refused(f"{name}: skipped, truncated")),
        "unnamed": _raise(DataError("truncated")),
        "crash": _raise(KeyError("x")),
        "assert": _raise(AssertionError("wrong result")),
        "abort": _abort,
        "hang": lambda: time.sleep(30),
        "memory": _hog,
        "wrapped memory": lambda: _wrapped_memory(name),
    }
    got = {k: run_case(Case(k, fn, name), allowed=(DataError,), memory=256 << 20, timeout=1) for k, fn in cases.items()}
    assert {k: o.kind for k, o in got.items()} == {
        "ok": "ok", "clear": "clear", "refused": "clear", "unnamed": "unnamed", "crash": "crash", "assert": "crash",
        "abort": "abort", "hang": "hang", "memory": "memory", "wrapped memory": "memory"}
    assert got["crash"].error == "KeyError: 'x'" and got["crash"].where.startswith("test_fuzz.py:")
    assert got["abort"].error == "died: SIGABRT"
    assert "sleep" in got["hang"].where or got["hang"].where.startswith("test_fuzz.py:")
    assert got["hang"].seconds < 10
    assert all(o.peak_rss > 0 for o in got.values())
    assert got["memory"].grew < 256 << 20  # the limit held
    # a predicate instead of a substring: the message must name the file and nothing it must not
    clean = run_case(Case("p", _raise(DataError(f"{name}: bad")), lambda m: name in m and "MRN" not in m),
                     allowed=(DataError,))
    leaky = run_case(Case("p", _raise(DataError(f"{name}: MRN 123")), lambda m: name in m and "MRN" not in m),
                     allowed=(DataError,))
    assert (clean.kind, leaky.kind) == ("clear", "unnamed")
    row = tally(got.values())
    assert row["mutants"] == 10 and row["ok"] == 1 and row["clear"] == 2 and row["crash"] == 2
    assert row["memory"] == 2 and row["abort"] == row["hang"] == row["unnamed"] == 1
    assert sum(row[k] for k in fuzz.KINDS) == 10 and row["peak_rss_mb"] > 0
    assert [o.label for o in fuzz.failures(got.values())] == ["unnamed", "crash", "assert", "abort", "hang",
                                                              "memory", "wrapped memory"]


def _abort():
    faulthandler.disable()  # pytest's: its stack dump of this deliberate abort would only be noise
    os.abort()


def _wrapped_memory(name):
    try:
        _hog()
    except MemoryError:
        raise DataError(f"{name}: reading failed (MemoryError)") from None


# -- the checkpoint reader, fuzzed -------------------------------------------------------------------------

def make_checkpoint(workdir, registry, seed: int = SEED):
    """A real checkpoint of the hostile-file tests' toy model, saved by save_checkpoint: its path."""
    torch.manual_seed(seed)
    model = FusionModel(parse(ModelConfig, MODEL), registry)
    return save_checkpoint(model, workdir / "model.safetensors", registry)


def _loads_finite(path, registry) -> None:
    model, _ = load_checkpoint(path, registry)
    assert all(torch.isfinite(p).all() for p in model.state_dict().values() if p.is_floating_point())


def checkpoint_cases(raw: bytes, workdir, count: int, seed: int = SEED, *, registry) -> Iterator[Case]:
    """``raw`` mutated, three operations in four inside its JSON header; loading it must give a model
    of finite weights or a ``CheckpointError`` naming the file."""
    header = 8 + struct.unpack("<Q", raw[:8])[0]
    for k in range(count):
        m = mutate(raw, seed + k, focus=(0, header))
        path = workdir / f"mutant-{m.seed}.safetensors"
        path.write_bytes(m.data)
        yield Case(m.label, lambda p=path: _loads_finite(p, registry), path.name)


ALLOWED = (CheckpointError,)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, registry):
    path = make_checkpoint(tmp_path_factory.mktemp("ckpt"), registry)
    _loads_finite(path, registry)  # unmutated, it loads
    return path.read_bytes()


@pytest.mark.timeout(120)
def test_checkpoint_mutants_load_or_are_a_checkpoint_error_naming_the_file(checkpoint, registry, tmp_path):
    outcomes = fuzz.run_cases(checkpoint_cases(checkpoint, tmp_path, CHECKPOINT_MUTANTS, registry=registry),
                              allowed=ALLOWED)
    row = tally(outcomes)
    assert fuzz.failures(outcomes) == [], (row, fuzz.failures(outcomes))
    assert row["clear"] >= CHECKPOINT_MUTANTS // 2, row  # most mutants of a header are refused ...
    assert row["grew_mb"] < 2048, row
