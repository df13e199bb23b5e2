"""The one weighting rule (``groups``) and counts from the datasets' availability (no decoding)."""

import pytest

from mmdomain.data import availability_counts
from mmdomain_federated import task
from mmdomain_federated.aggregation import SiteUpdate, contributors
from mmdomain_federated.groups import FUSION_FROM_ALL, fusion_from, trained_groups, weight
from mmdomain_federated.readiness import held_modalities
from mmdomain_federated.secure import group_weights

SITES = [({"img": 30, "txt": 10}, 40), ({"img": 10, "txt": 0}, 10), ({"img": 0, "txt": 30}, 30)]


@pytest.mark.parametrize("plain", [False, True])
def test_clear_and_secure_weights_are_the_same_rule(plain):
    updates = [SiteUpdate(i, {}, counts, n) for i, (counts, n) in enumerate(SITES)]
    for i, (counts, n) in enumerate(SITES):
        secure = group_weights(counts, n, fusion_from="multi", plain=plain, dp=False, scale=1.0)
        for group in trained_groups(counts, n):
            clear = dict((u.site, w) for u, w in contributors(group, updates, plain)).get(i, 0.0)
            assert secure.get(group, 0.0) == clear == weight(group, counts, n, plain=plain), (group, i)


def test_fusion_comes_from_every_site_when_none_holds_two_modalities():
    single = [SiteUpdate(0, {}, {"img": 5, "txt": 0}, 5), SiteUpdate(1, {}, {"img": 0, "txt": 7}, 7)]
    assert [(u.site, w) for u, w in contributors("fusion", single)] == [(0, 5.0), (1, 7.0)]
    assert fusion_from([{"img"}, {"txt"}]) == FUSION_FROM_ALL
    assert weight("fusion", {"img": 5}, 5) == 0.0 and weight("fusion", {"img": 5}, 5, fusion_from="all") == 5.0
    report = {"1": {"splits": {"train": {"modalities": {"img": "<5", "txt": 0}}}}, "2": {"refused": "policy"},
              "3": {"splits": {"train": {"modalities": {"img": 12, "txt": 9}}}}}
    assert held_modalities(report) == [{"img"}, {"img", "txt"}]


def test_counts_of_a_site_hiding_a_modality_never_decode_a_sample(settings_for, registry, monkeypatch):
    s = settings_for(site_modalities="0=toy_image")
    data = task.load_site(s, {"partition-id": 0, "num-partitions": 2}, registry, "train")
    assert isinstance(data, task.HideModalities)
    decoded = [data[i] for i in range(len(data))]  # what the counts used to do
    expected = sum(1 for x in decoded if x.inputs.get("toy_image") is not None)
    monkeypatch.setattr(type(data.base), "__getitem__", lambda self, i: pytest.fail("decoded a sample"))
    per_mod, patterns = availability_counts(data, ["toy_image", "toy_note"])
    assert per_mod == {"toy_image": expected, "toy_note": 0}
    assert set(patterns) <= {"toy_image", "none"} and sum(patterns.values()) == len(data)
