"""Federated beats every site's local-only model, and a site lacking a modality still trains
its other encoder and helps (toy domain, in-process Flower apps).

Both are tested where the mechanism, not luck, decides: sites too small to learn the task alone,
and a large held-out test set from the same generator (another seed), so that neither the draw
of the training shuffles nor a few test samples can flip the comparison. `mmdomain fed compare`
measures the same on the real domains over seeds (numbers in federated/README.md).
"""

import shutil

import numpy as np
import pytest
from torch.utils.data import ConcatDataset

from mmdomain.training import evaluate, make_loader
from mmdomain_federated import task
from mmdomain_federated.inprocess import LocalGrid
from mmdomain_federated.server_app import run_server
from mmdomain_federated.settings import Settings

TRAINING = dict(batch_size=8, lr=0.003, max_steps=0, readiness=False)


def toy_sites(registry, folder, sizes, seed):
    """One toy site per entry of ``sizes`` (samples per site), each from its own seed."""
    root = folder / "sites"
    root.mkdir(parents=True)
    for i, n in enumerate(sizes):
        registry.synthetic_for("toy").generate(folder / f"gen-{i}", num_sites=1, seed=seed * 10 + i,
                                               samples_per_site=n)
        shutil.move(folder / f"gen-{i}" / "site-0", root / f"site-{i}")
    return root


def held_out(registry, folder, s, seed):
    """300 samples the sites never saw, every split of them."""
    root = folder / "held-out"
    registry.synthetic_for("toy").generate(root, num_sites=3, seed=seed + 100, samples_per_site=100)
    return ConcatDataset([task.load_site(s, {"data-root": str(f)}, registry, "all") for f in task.site_folders(root)])


def score(weights_or_model, s, registry, test, metric, drop=()):
    model = weights_or_model
    if isinstance(weights_or_model, dict):
        model = task.build(s, registry)
        task.set_weights(model, weights_or_model)
    result = evaluate(model, make_loader(test, model.modalities, 64, shuffle=False), drop=drop)
    assert result["n"] >= 200  # with notes dropped, the ~15% without an image are skipped
    return result["overall"][metric]


@pytest.mark.slow
def test_federated_beats_local_only(settings_for, registry, tmp_path):
    n, rounds, epochs, seed = 3, 8, 2, 0
    root = toy_sites(registry, tmp_path, [100, 100, 100], seed)
    s = settings_for(num_server_rounds=rounds, local_epochs=epochs, site_modalities="2=toy_image",
                     data_root=str(root), seed=seed, **TRAINING)
    summary = run_server(LocalGrid(n, s.as_run_config()), s, tmp_path / "run")
    assert summary["history"][-1]["groups"]["encoder:toy_note"] == 2  # site 2 has no notes
    assert summary["history"][-1]["groups"]["encoder:toy_image"] == 3  # ... but trains its image encoder
    test = held_out(registry, tmp_path, s, seed)
    fed = score(dict(np.load(tmp_path / "run" / "final.npz")), s, registry, test, "accuracy")
    local = []
    for i, folder in enumerate(task.site_folders(root)):  # same epochs in all, own data only
        m = task.build(s, registry)
        node = {"data-root": str(folder), **({"modalities": "toy_image"} if i == 2 else {})}
        data = task.load_site(s, node, registry, "train")
        task.train_site(m, data, Settings.from_run_config({**s.as_run_config(), "local-epochs": rounds * epochs}),
                        seed=seed)
        local.append(score(m, s, registry, test, "accuracy"))
    print(f"held-out accuracy: federated {fed:.3f}, local-only {[round(a, 3) for a in local]}")
    assert fed > max(local) + 0.05, (fed, local)


@pytest.mark.slow
def test_image_only_site_improves_the_image_pathway(settings_for, registry, tmp_path):
    """Site 2 holds only images (four times the others' share). Federating with it (3 sites)
    beats federating without it (sites 0-1) on held-out images alone: its image-only updates
    are used, not wasted."""
    seed = 0
    root = toy_sites(registry, tmp_path, [40, 40, 160], seed)
    s = settings_for(num_server_rounds=6, local_epochs=2, site_modalities="2=toy_image", data_root=str(root),
                     seed=seed, fused_eval=True, **TRAINING)
    test = held_out(registry, tmp_path, s, seed)
    auroc = {}
    for n in (3, 2):  # with data-root set, n=2 uses the same first two site folders
        summary = run_server(LocalGrid(n, s.as_run_config()), s, tmp_path / f"{n}-sites")
        assert summary["stopped"] == "completed"
        weights = dict(np.load(tmp_path / f"{n}-sites" / "final.npz"))
        auroc[n] = score(weights, s, registry, test, "macro_auroc", drop=["toy_note"])
    print(f"held-out image-only macro AUROC: 3 sites {auroc[3]:.3f}, sites 0-1 only {auroc[2]:.3f}")
    assert auroc[3] > auroc[2] + 0.03, auroc
