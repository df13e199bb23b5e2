"""View augmentation (mmdomain.data.augment): per-row, per-modality crops / flips / turns and
word dropout, its ``auto`` rule, and its plumbing through the config and the loader."""

from __future__ import annotations

import pytest
import torch

from mmdomain.config import AugmentConfig, TrainConfig, parse
from mmdomain.data import Batch
from mmdomain.data.augment import ViewAugment, check_view_limits, crop_flip_turn, view_augment
from mmdomain.errors import ConfigError

KINDS = {"image": "image", "report": "text", "ct": "volume"}


def batch(n: int = 8, absent: tuple[int, ...] = (2,)) -> Batch:
    g = torch.Generator().manual_seed(0)
    img = torch.rand(n, 3, 16, 16, generator=g) + 1.0  # values in [1, 2): zero only where absent
    present = torch.ones(n, dtype=torch.bool)
    for i in absent:
        img[i] = 0
        present[i] = False
    texts = [f"row {i} no pneumothorax small left effusion" if i not in absent else "" for i in range(n)]
    vol = torch.rand(n, 1, 4, 4, 4, generator=g)
    return Batch({"image": img, "report": texts, "ct": vol},
                 {"image": present, "report": present.clone(), "ct": torch.ones(n, dtype=torch.bool)},
                 torch.zeros(n, 2), [{} for _ in range(n)])


def test_spatial_views_differ_per_row_stay_in_range_and_keep_absent_rows_zero():
    b = batch()
    out = ViewAugment(KINDS)(b, torch.Generator().manual_seed(1))
    x, y = b.inputs["image"], out.inputs["image"]
    assert y.shape == x.shape and y.dtype == x.dtype
    assert torch.equal(y[2], torch.zeros_like(y[2]))  # absent stays absent (zero-filled)
    rows = [i for i in range(len(b)) if i != 2]
    # bilinear resampling with reflection: convex combinations of each row's own pixels
    for i in rows:
        assert y[i].min() >= x[i].min() - 1e-5 and y[i].max() <= x[i].max() + 1e-5
        assert not torch.allclose(y[i], x[i])
    # each row gets its own crop: the change differs between rows (not one transform for the batch)
    deltas = torch.stack([(y[i] - x[i]).abs().mean() for i in rows])
    assert deltas.std() > 0
    assert torch.equal(out.inputs["ct"], b.inputs["ct"])  # a kind it does not know passes through
    assert out.present is b.present and torch.equal(out.target, b.target)


def test_same_generator_same_views_and_two_modalities_are_drawn_on_their_own():
    b = batch(absent=())
    two = {"a": "raster", "b": "raster"}
    b2 = Batch({"a": b.inputs["image"], "b": b.inputs["image"].clone()},
               {"a": b.present["image"], "b": b.present["image"]})
    aug = ViewAugment(two)
    first = aug(b2, torch.Generator().manual_seed(3))
    again = aug(b2, torch.Generator().manual_seed(3))
    assert torch.equal(first.inputs["a"], again.inputs["a"]) and torch.equal(first.inputs["b"], again.inputs["b"])
    # identical inputs in both modalities, yet different views: the crops are independent
    assert not torch.allclose(first.inputs["a"], first.inputs["b"])


def test_without_a_crop_a_quarter_turn_is_rot90_and_a_flip_a_mirror():
    x = torch.arange(3 * 1 * 6 * 6, dtype=torch.float32).reshape(3, 1, 6, 6)
    one, zero = torch.ones(3), torch.zeros(3)
    out = crop_flip_turn(x, one, one, zero, zero, torch.tensor([1.0, 1.0, -1.0]), torch.tensor([1, 2, 0]))
    turned = [torch.rot90(x[0], k, dims=(-2, -1)) for k in (1, -1)]
    assert any(torch.allclose(out[0], t, atol=1e-4) for t in turned)
    assert torch.allclose(out[1], torch.rot90(x[1], 2, dims=(-2, -1)), atol=1e-4)
    assert torch.allclose(out[2], x[2].flip(-1), atol=1e-4)
    half = crop_flip_turn(x, one / 2, one / 2, zero, zero, one, torch.zeros(3, dtype=torch.long))
    assert not torch.allclose(half, x)  # a crop is a zoom, not the identity


def test_word_dropout_keeps_order_never_empties_and_leaves_absent_text_alone():
    b = batch()
    out = ViewAugment(KINDS, word_dropout=0.5)(b, torch.Generator().manual_seed(0))
    for before, after in zip(b.inputs["report"], out.inputs["report"]):
        if not before:
            assert after == ""
            continue
        words, kept = before.split(), after.split()
        assert 1 <= len(kept) <= len(words)
        it = iter(words)
        assert all(w in it for w in kept)  # a subsequence: order kept
    assert out.inputs["report"] != b.inputs["report"]
    assert ViewAugment.words("single", None, 0.9) == "single"


def test_a_modality_bounds_its_own_views():
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).reshape(2, 1, 6, 6) + 1
    aug = ViewAugment({"film": "image", "scene": "raster", "note": "text"}, crop_scale=0.3, word_dropout=0.5,
                      views={"film": {"flip": False, "rotate90": False, "crop_scale": 0.9},
                             "note": {"word_dropout": 0.0}})
    assert aug.settings("film") == {"crop_scale": 0.9, "flip": False, "rotate90": False, "word_dropout": 0.5}
    assert aug.settings("scene") == {"crop_scale": 0.3, "flip": True, "rotate90": True, "word_dropout": 0.5}
    assert aug.describe() == ("film: crops 0.9-1 of the area; scene: crops 0.3-1 of the area, flips, quarter turns")
    b = Batch({"film": x, "scene": x.clone(), "note": ["no acute process seen", "no effusion"]},
              {k: torch.ones(2, dtype=torch.bool) for k in ("film", "scene", "note")})
    out = aug(b, torch.Generator().manual_seed(0))
    assert out.inputs["note"] == b.inputs["note"]  # a dropped "no" would invert the note: never touched
    # a film keeps its orientation: its view correlates with the original far more than a turned scene's can
    for i in range(2):
        film = torch.corrcoef(torch.stack([out.inputs["film"][i].flatten(), x[i].flatten()]))[0, 1]
        assert film > 0.9
    with pytest.raises(ValueError, match="views key 'mirror'"):
        check_view_limits("film", {"mirror": False})
    with pytest.raises(ValueError, match="must be a number in"):
        check_view_limits("film", {"crop_scale": 2.0})


def test_plugins_declare_valid_views(registry):
    from mmdomain import ModalitySpec
    from mmdomain.errors import InvalidSpecError

    for name in registry.names("modality"):
        check_view_limits(name, registry.modality(name).views)
    with pytest.raises(InvalidSpecError, match="views key"):
        ModalitySpec("bad", "image", channels=1, views={"shear": True}).validate()


def test_auto_is_on_for_self_supervised_tasks_only():
    assert view_augment("auto", False, KINDS) is not None  # contrastive: no target
    assert view_augment("auto", True, KINDS) is None  # supervised
    assert view_augment("on", True, KINDS) is not None
    assert view_augment("off", False, KINDS) is None
    assert view_augment("on", True, {"ct": "volume"}) is None  # nothing it could change
    with pytest.raises(ValueError, match="mode must be auto, on or off"):
        view_augment("sideways", False, KINDS)
    with pytest.raises(ValueError, match="crop_scale"):
        ViewAugment(KINDS, crop_scale=0.0)


def test_config_table_and_its_errors():
    t = parse(TrainConfig, {"augment": {"mode": "on", "crop_scale": 0.3, "word_dropout": 0.2}})
    assert t.augment == AugmentConfig(mode="on", crop_scale=0.3, word_dropout=0.2)
    assert parse(TrainConfig, {}).augment.mode == "auto"
    with pytest.raises(ConfigError, match="augment.mode"):
        parse(TrainConfig, {"augment": {"mode": "sideways"}})
    with pytest.raises(ConfigError, match="augment.crop_scale"):
        parse(TrainConfig, {"augment": {"crop_scale": 1.5}})
    with pytest.raises(ConfigError, match="augment.colour"):
        parse(TrainConfig, {"augment": {"colour": True}})


def test_a_contrastive_fit_trains_on_augmented_views_and_a_supervised_one_does_not(registry, toy_site, tmp_path):
    from mmdomain.config import DataConfig, ModelConfig, RunConfig
    from mmdomain.training import build_dataset, fit, make_loader, run_augment

    base = ModelConfig.model_validate(registry.dataset("toy").default_model)
    pre = base.model_copy(update={"task": base.task.model_copy(update={"name": "contrastive", "options": {}}),
                                  "modality_dropout": 0.0})
    logs: list[str] = []
    result = fit(RunConfig(data=DataConfig(dataset="toy", root=toy_site), model=pre,
                           train=TrainConfig(epochs=1, out_dir=tmp_path / "pre", progress=False,
                                             max_steps_per_epoch=3)), registry, log=logs.append)
    assert any("view augmentation toy_image: crops 0.5-1 of the area" in line and "toy_note: word dropout 0.1" in line
               for line in logs), logs
    model = result.model
    views = run_augment(AugmentConfig(), model)
    data = build_dataset(RunConfig(data=DataConfig(dataset="toy", root=toy_site)), registry, "train")
    torch.manual_seed(0)
    plain = next(iter(make_loader(data, model.modalities, 8, shuffle=False)))
    seen = next(iter(make_loader(data, model.modalities, 8, shuffle=False, augment=views)))
    assert not torch.allclose(plain.inputs["toy_image"], seen.inputs["toy_image"])
    assert torch.equal(plain.present["toy_image"], seen.present["toy_image"])
    # the supervised default keeps its inputs as they are unless asked
    from mmdomain.models.compose import build_model

    supervised = build_model(base, registry)
    assert run_augment(AugmentConfig(), supervised) is None
    assert run_augment(AugmentConfig(mode="on"), supervised) is not None
