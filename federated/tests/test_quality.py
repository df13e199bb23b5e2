"""Federated beats every site's local-only model on the pooled test set (toy data), and a
site lacking a modality still trains its other encoder and helps."""

import numpy as np
import pytest
from torch.utils.data import ConcatDataset

from mmdomain_federated import task
from mmdomain_federated.inprocess import LocalGrid
from mmdomain_federated.server_app import run_server


def pooled_accuracy(model, s, registry, n):
    test = ConcatDataset([task.load_site(s, {"partition-id": i, "num-partitions": n}, registry, "test")
                          for i in range(n)])
    return task.evaluate_site(model, test, s)["overall"]["accuracy"]


@pytest.mark.slow
def test_federated_beats_local_only(settings_for, registry, tmp_path):
    n, rounds = 3, 6
    s = settings_for(num_server_rounds=rounds, max_steps=0, local_epochs=1, site_modalities="2=toy_image")
    summary = run_server(LocalGrid(n, s.as_run_config()), s, tmp_path)
    assert summary["history"][-1]["groups"]["encoder:toy_note"] == 2  # site 2 has no notes
    assert summary["history"][-1]["groups"]["encoder:toy_image"] == 3  # ... but trains its image encoder
    fed = task.build(s, registry)
    task.set_weights(fed, dict(np.load(tmp_path / "final.npz")))
    fed_acc = pooled_accuracy(fed, s, registry, n)
    local = []
    for i in range(n):  # same number of local epochs, own data only
        m = task.build(s, registry)
        data = task.load_site(s, {"partition-id": i, "num-partitions": n}, registry, "train")
        ls = task.Settings.from_run_config({**s.as_run_config(), "local-epochs": rounds})
        task.train_site(m, data, ls)
        local.append(pooled_accuracy(m, s, registry, n))
    print(f"pooled test accuracy: federated {fed_acc:.3f}, local-only {[round(a, 3) for a in local]}")
    (tmp_path / "quality.txt").write_text(f"{fed_acc} {local}")
    assert fed_acc > max(local)


def image_only_auroc(weights, s, registry, root):
    """Pooled test set of all 3 sites with the notes dropped: the image pathway alone."""
    from mmdomain.training import evaluate, make_loader
    model = task.build(s, registry)
    task.set_weights(model, weights)
    test = ConcatDataset([task.load_site(s, {"data-root": str(f)}, registry, "test") for f in task.site_folders(root)])
    result = evaluate(model, make_loader(test, model.modalities, 64, shuffle=False), drop=["toy_note"])
    assert result["n"] > 50
    return result["overall"]["macro_auroc"]


@pytest.mark.slow
def test_image_only_site_improves_the_image_pathway(settings_for, registry, tmp_path):
    """Site 2 holds only images. Federating with it (3 sites) beats federating without it
    (sites 0-1) on the pooled image-only test set: its image-only updates are used, not wasted."""
    root = task.synthetic_root(registry, "toy", 3, 0, True)
    s = settings_for(num_server_rounds=3, max_steps=0, local_epochs=4, site_modalities="2=toy_image",
                     data_root=str(root), fused_eval=True)
    auroc = {}
    for n in (3, 2):  # with data-root set, n=2 uses the same first two site folders
        summary = run_server(LocalGrid(n, s.as_run_config()), s, tmp_path / f"{n}-sites")
        assert summary["stopped"] == "completed"
        auroc[n] = image_only_auroc(dict(np.load(tmp_path / f"{n}-sites" / "final.npz")), s, registry, root)
    print(f"image-only pooled test macro AUROC: 3 sites {auroc[3]:.3f}, sites 0-1 only {auroc[2]:.3f}")
    assert auroc[3] > auroc[2]
