"""mmdomain.models.trainable, weights and checkpoint initialisation: what trains, what is loaded
from a local file, and what a fine-tuning run takes from an earlier checkpoint."""

import json

import pytest
import torch
from safetensors.torch import save_file

from mmdomain import CheckpointError, ConfigError, Collate
from mmdomain.checkpoint import init_from_checkpoint, save_checkpoint
from mmdomain.config import DataConfig, ModelConfig, RunConfig, TrainConfig, parse
from mmdomain.models import build_model
from mmdomain.models.trainable import count_parameters
from mmdomain.training import fit


def _config(registry, image_train="all", note_train="all", **image):
    cfg = json.loads(json.dumps(registry.dataset("toy").default_model))
    cfg["encoders"]["toy_image"].update(train=image_train, **image)
    cfg["encoders"]["toy_note"]["train"] = note_train
    return parse(ModelConfig, cfg)


@pytest.fixture(scope="module")
def batch(registry, toy_site):
    ds = registry.dataset("toy").build(toy_site, split="train")
    return Collate(["toy_image", "toy_note"])([ds[i] for i in range(16)])


def _trainable_names(module):
    return {n for n, p in module.named_parameters() if p.requires_grad}


def test_frozen_encoder_gets_no_gradient_and_keeps_eval_mode(registry, batch):
    model = build_model(_config(registry, image_train="none"), registry).train()
    assert model.frozen == {"toy_image"} and not model.encoders["toy_image"].training
    model.loss(model(batch), batch).backward()
    assert all(p.grad is None for p in model.encoders["toy_image"].parameters())
    assert all(p.grad is not None for p in model.encoders["toy_note"].parameters() if p.requires_grad)
    trainable, total = count_parameters(model)
    assert trainable == total - sum(p.numel() for p in model.encoders["toy_image"].parameters())


def test_norms_last_blocks_and_lora_policies(registry, batch):
    norms = build_model(_config(registry, image_train="norms"), registry).encoders["toy_image"]
    names = _trainable_names(norms)
    norm_weights = {f"{n}.weight" for n, m in norms.named_modules() if isinstance(m, torch.nn.GroupNorm)}
    biases = {n for n, _ in norms.named_parameters() if n.endswith(".bias")}
    assert len(norm_weights) == 3 and names == norm_weights | biases  # conv and head weights stay frozen
    last = build_model(_config(registry, image_train="last:1"), registry).encoders["toy_image"]
    assert _trainable_names(last) == {"head.weight", "head.bias"}
    last2 = build_model(_config(registry, image_train="last:2"), registry).encoders["toy_image"]
    assert {"body.6.weight", "head.weight"} <= _trainable_names(last2) and "body.3.weight" not in _trainable_names(last2)
    torch.manual_seed(0)
    plain = build_model(_config(registry), registry).eval()
    torch.manual_seed(0)
    lora = build_model(_config(registry, image_train="lora:4"), registry).eval()
    names = _trainable_names(lora.encoders["toy_image"])
    assert names and all("lora_" in n for n in names)
    # adapters start at zero (lora_B = 0): the adapted model computes what the plain one does
    x = batch.inputs["toy_image"]
    with torch.no_grad():
        torch.testing.assert_close(lora.encoders["toy_image"](x), plain.encoders["toy_image"](x))


def test_bad_policy_is_a_config_error_naming_the_field(registry):
    with pytest.raises(ConfigError, match=r"encoders.toy_image.train.*'last:two'.*all, none, norms"):
        _config(registry, image_train="last:two")
    with pytest.raises(ConfigError, match="last:9 asks for more blocks than the encoder's 4"):
        build_model(_config(registry, image_train="last:9"), registry)
    with pytest.raises(ConfigError, match="weights and train apply to encoders only"):
        cfg = registry.dataset("toy").default_model | {"fusion": {"name": "concat", "train": "none"}}
        parse(ModelConfig, cfg)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_encoder_weights_load_from_a_local_file_with_their_digest(registry, tmp_path, suffix):
    torch.manual_seed(1)
    source = build_model(_config(registry), registry).encoders["toy_image"]
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    path = tmp_path / f"image-encoder{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)  # DataParallel layout
    torch.manual_seed(2)
    model = build_model(_config(registry, weights=str(path)), registry)
    for k, v in model.encoders["toy_image"].state_dict().items():
        torch.testing.assert_close(v, state[k])
    from mmdomain.models.weights import sha256_of

    assert model.config.encoders["toy_image"].weights_sha256 == sha256_of(path)
    # the digest travels with the config: another file at that path is refused
    other = _config(registry, weights=str(path)).model_copy(deep=True)
    other.encoders["toy_image"].weights_sha256 = "0" * 64
    with pytest.raises(ConfigError, match="another file than the one this model started from"):
        build_model(other, registry)


def test_weights_of_another_architecture_or_format_are_refused(registry, tmp_path):
    wide = _config(registry).model_copy(deep=True)
    wide.encoders["toy_image"].options["width"] = 8
    path = tmp_path / "narrow.safetensors"
    save_file({k: v.contiguous() for k, v in build_model(wide, registry).encoders["toy_image"].state_dict().items()},
              str(path))
    with pytest.raises(ConfigError, match=r"narrow.safetensors does not fit this encoder.*another shape"):
        build_model(_config(registry, weights=str(path)), registry)
    with pytest.raises(ConfigError, match="not found.*local files only"):
        build_model(_config(registry, weights=str(tmp_path / "absent.pt")), registry)
    bad = tmp_path / "garbage.pt"
    bad.write_bytes(b"not a pickle at all")
    with pytest.raises(ConfigError, match="garbage.pt is not a readable weights file"):
        build_model(_config(registry, weights=str(bad)), registry)
    with pytest.raises(ConfigError, match="unknown weights format '.onnx'"):
        (tmp_path / "m.onnx").write_bytes(b"x")
        build_model(_config(registry, weights=str(tmp_path / "m.onnx")), registry)


def test_init_from_a_checkpoint_reports_what_fits(registry, tmp_path, batch):
    torch.manual_seed(3)
    first = build_model(_config(registry), registry)
    ckpt = save_checkpoint(first, tmp_path / "first.safetensors", registry)
    changed = _config(registry).model_copy(deep=True)
    changed.task.options["num_classes"] = 3  # a new head; the encoders and fusion fit
    second = build_model(changed, registry)
    report = init_from_checkpoint(second, ckpt)["modules"]
    assert report["encoders.toy_image"]["loaded"] > 0 and report["encoders.toy_image"]["other_shape"] == 0
    assert report["task"]["loaded"] == 0 and report["task"]["other_shape"] == 2
    for k, v in first.encoders.state_dict().items():
        torch.testing.assert_close(second.encoders.state_dict()[k], v)
    lora = build_model(_config(registry, image_train="lora:2"), registry)  # base weights go under base_layer
    assert init_from_checkpoint(lora, ckpt)["modules"]["encoders.toy_image"]["not_in_checkpoint"] > 0  # the adapters
    torch.testing.assert_close(lora.encoders["toy_image"].head.base_layer.weight, first.encoders["toy_image"].head.weight)
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(CheckpointError):
        init_from_checkpoint(second, tmp_path / "junk.safetensors")


def test_fit_starts_from_a_checkpoint_and_writes_the_report(registry, toy_site, trained, tmp_path):
    config = RunConfig(data=DataConfig(dataset="toy", root=toy_site),
                       model=_config(registry, image_train="none"),
                       train=TrainConfig(epochs=1, out_dir=tmp_path, progress=False, init_from=trained.checkpoint))
    lines = []
    result = fit(config, registry, log=lines.append)
    assert any("encoders.toy_image:" in line and "loaded" in line for line in lines)
    report = json.loads((tmp_path / "init-report.json").read_text())
    assert report["modules"]["task"]["loaded"] == 2
    for k, v in trained.model.encoders["toy_image"].state_dict().items():  # frozen: unchanged by training
        torch.testing.assert_close(result.model.encoders["toy_image"].state_dict()[k].cpu(), v.cpu())


class _BatchNormEncoder(torch.nn.Module):
    """Two conv + BatchNorm blocks and a head: ``last:1`` freezes both blocks."""

    def __init__(self, modality, out_dim: int = 8):
        super().__init__()
        self.out_dim = out_dim
        self.block1 = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4))
        self.block2 = torch.nn.Sequential(torch.nn.Conv2d(4, 4, 3), torch.nn.BatchNorm2d(4))
        self.head = torch.nn.Linear(4, out_dim)

    def forward(self, x):
        return self.head(self.block2(self.block1(x)).mean((2, 3)))


def test_frozen_batchnorm_keeps_its_statistics_in_train_mode(registry, register_plugin, batch):
    from mmdomain import EncoderSpec, ModalitySpec, hookimpl

    class BNPlugin:  # the toy modalities plus an encoder with BatchNorm, on a bare manager
        @hookimpl
        def register_modalities(self, register):
            register(ModalitySpec("toy_image", "image", channels=1))
            register(ModalitySpec("toy_note", "text"))

        @hookimpl
        def register_encoders(self, register):
            register(EncoderSpec("bn_cnn", ("image",), _BatchNormEncoder, out_dim=8))

    cfg = json.loads(json.dumps(registry.dataset("toy").default_model))
    registry = register_plugin(BNPlugin(), name="bn").registry
    cfg["encoders"]["toy_image"] = {"name": "bn_cnn", "train": "last:1"}
    model = build_model(parse(ModelConfig, cfg), registry).train()
    enc = model.encoders["toy_image"]
    assert enc.training and enc.head.training and not enc.block1[1].training and not enc.block2[1].training
    before = enc.block1[1].running_mean.clone()
    model.loss(model(batch), batch).backward()
    torch.testing.assert_close(enc.block1[1].running_mean, before)  # frozen statistics did not drift
    cfg["encoders"]["toy_image"]["train"] = "all"
    trained = build_model(parse(ModelConfig, cfg), registry).train()
    assert trained.encoders["toy_image"].block1[1].training  # a BatchNorm that learns uses batch statistics
