"""mmdomain.data: collate (zero fill, presence masks), availability, the group split."""

import pytest
import torch

from mmdomain import Collate, DataError, Sample


def test_collate_zero_fills_and_masks():
    samples = [Sample({"a": torch.ones(2, 3), "t": "hello"}, torch.tensor(1)),
               Sample({"t": "bye"}, torch.tensor(0)),
               Sample({"a": torch.full((2, 3), 2.0)}, torch.tensor(1))]
    batch = Collate(["t", "a", "never"])(samples)
    assert batch.present["a"].tolist() == [True, False, True]
    assert batch.present["never"].tolist() == [False, False, False] and batch.inputs["never"] is None
    assert torch.equal(batch.inputs["a"][1], torch.zeros(2, 3))
    assert batch.inputs["t"] == ["hello", "bye", ""]
    assert batch.patterns() == ["a+t", "t", "a"]


def test_collate_rejects_mismatched_shapes():
    with pytest.raises(DataError, match="'a'.*share a shape"):
        Collate(["a"])([Sample({"a": torch.ones(2)}), Sample({"a": torch.ones(3)})])


def test_availability_pattern_is_one_spelling():
    from mmdomain.data import availability_pattern

    assert availability_pattern({"report", "image"}) == "image+report"
    assert availability_pattern([]) == "none"
    samples = [Sample({"b": "x", "a": torch.ones(1)}), Sample({"b": "y"})]
    assert [s.pattern for s in samples] == ["a+b", "b"]
    assert Collate(["a", "b"])(samples).patterns() == ["a+b", "b"]


class _Indexed(torch.utils.data.Dataset):
    """Knows its samples' modalities from an index; building a sample is counted."""

    def __init__(self, rows):
        self.rows, self.built = rows, 0

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        self.built += 1
        return Sample({m: torch.ones(1) for m in self.rows[i]})

    def available(self, i):
        return frozenset(self.rows[i])


def test_availability_counts_use_the_index_not_the_samples():
    from mmdomain.data import availability_counts, present_modalities

    ds = _Indexed([{"a", "b"}, {"a"}, {"b"}, {"a", "b"}, set()])
    per_modality, patterns = availability_counts(ds, ["a", "b", "c"])
    assert per_modality == {"a": 3, "b": 3, "c": 0}
    assert patterns == {"a+b": 2, "a": 1, "b": 1, "none": 1}
    assert ds.built == 0  # nothing decoded
    sub = torch.utils.data.Subset(ds, [2, 0])
    assert [present_modalities(sub, i) for i in range(2)] == [{"b"}, {"a", "b"}]
    assert ds.built == 0
    both = torch.utils.data.ConcatDataset([ds, sub])  # ... and through ConcatDataset's parts
    assert [present_modalities(both, i) for i in (1, 5, 6)] == [{"a"}, {"b"}, {"a", "b"}] and ds.built == 0

    class Plain(torch.utils.data.Dataset):  # no protocol: falls back on building the sample
        def __len__(self):
            return len(ds)

        def __getitem__(self, i):
            return ds[i]

    assert present_modalities(Plain(), 1) == {"a"} and ds.built == 1
    assert availability_counts(ds, ["a"])[1] == {"a": 3, "none": 2}  # patterns over the asked modalities


def test_split_is_by_key_deterministic_and_near_its_fractions():
    from mmdomain.data import split_of

    keys = [f"patient-{i}" for i in range(3000)]
    splits = [split_of(k) for k in keys]
    assert splits == [split_of(k) for k in keys]  # same key, same split, whatever else is there
    share = {s: splits.count(s) / len(keys) for s in ("train", "val", "test")}
    assert abs(share["train"] - 0.7) < 0.03 and abs(share["val"] - 0.15) < 0.03 and abs(share["test"] - 0.15) < 0.03
    assert {split_of(k, (0.0, 0.0)) for k in keys[:50]} == {"test"}
    assert {split_of(k, (1.0, 0.0)) for k in keys[:50]} == {"train"}


def test_synth_command_takes_generator_options_and_refuses_unknown_ones(tmp_path):
    from click.testing import CliRunner

    from mmdomain.cli import cli

    run = CliRunner().invoke
    ok = run(cli, ["synth", "toy", str(tmp_path / "a"), "--sites", "1", "--set", "samples_per_site=7"])
    assert ok.exit_code == 0, ok.output
    ids = {f.stem for f in (tmp_path / "a" / "site-0").rglob("s0-*.*")}  # an image and/or a note per sample
    assert ids == {f"s0-{i:04d}" for i in range(7)}
    bad = run(cli, ["synth", "toy", str(tmp_path / "b"), "--set", "colour=1"])
    assert bad.exit_code == 2 and "has no option colour" in bad.output and "samples_per_site" in bad.output
    assert not (tmp_path / "b").exists()  # refused before anything was written
    assert run(cli, ["synth", "toy", str(tmp_path / "c"), "--set", "oops"]).exit_code == 2
    assert "exclusive" in run(cli, ["synth", "toy", str(tmp_path / "d"), "--quick", "--large"]).output
