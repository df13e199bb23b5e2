"""Pretrained encoders from local files only: torchvision ResNet / DenseNet files, torchxrayvision's
pickled DenseNet-121 (without torchxrayvision), MONAI state dicts, a Hugging Face BERT folder and
its tokenizer.

Every weight file here is written by the test with random values in the library's own format,
key names and file names (torchvision models built with ``weights=None``; torchxrayvision's
classes re-declared under their module path and pickled whole, in the zip and the legacy
format; ``save_pretrained`` for Hugging Face). The network is unavailable throughout: socket
connections and ``urlopen`` raise.
"""

from __future__ import annotations

import re
import sys
import types
import warnings
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from mmdomain import Collate, ConfigError, Sample, get_registry
from mmdomain.config import ModelConfig, parse
from mmdomain.models.compose import build_model
from mmdomain.models.trainable import count_parameters
from mmdomain.models.weights import sha256_of
from mmdomain_medical.pretrained import FrozenStatsBatchNorm2d, folder_digest
from mmdomain_medical.xrv_weights import (XRV_DENSENET_FILES, convert_xrv_weights,
                                          read_torch_model_file)

SIZE = 32


pytestmark = pytest.mark.usefixtures("no_network")  # conftest: any connection attempt fails the test


def _randomise_bn(model: nn.Module) -> nn.Module:
    """Running statistics away from their defaults, so equality checks mean something."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.num_batches_tracked.fill_(7)
    return model


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """torchvision's own files (names and key layouts as published), random values."""
    import torchvision

    root = tmp_path_factory.mktemp("tv")
    torch.manual_seed(0)
    out = {}
    for arch, name in (("resnet18", "resnet18-f37072fd.pth"), ("resnet50", "resnet50-0676ba61.pth")):
        sd = _randomise_bn(getattr(torchvision.models, arch)(weights=None)).state_dict()
        torch.save(sd, root / name)
        out[arch] = root / name
    # densenet121-a639ec97.pth: the old dotted key names (norm.1, conv.2) and no step counters
    sd = _randomise_bn(torchvision.models.densenet121(weights=None)).state_dict()
    old = OrderedDict((re.sub(r"(denselayer\d+\.(?:norm|conv))([12])\.", r"\1.\2.", k), v)
                      for k, v in sd.items() if not k.endswith("num_batches_tracked"))
    assert "features.denseblock1.denselayer1.norm.1.weight" in old
    torch.save(old, root / "densenet121-a639ec97.pth")
    out["densenet121"] = root / "densenet121-a639ec97.pth"
    out["densenet121_sd"] = sd
    return out


def _config(encoder: dict, modality: str = "dicom_image", tokenizer: dict | None = None) -> ModelConfig:
    data = {"modalities": [modality], "encoders": {modality: encoder},
            "fusion": {"name": "concat", "options": {"out_dim": 8}},
            "task": {"name": "multilabel", "options": {"num_labels": 2}}}
    if tokenizer:
        data["tokenizers"] = {modality: tokenizer}
    return parse(ModelConfig, data)


def _image_batch(n: int = 3, present: list[bool] | None = None):
    present = present or [True] * n
    g = torch.Generator().manual_seed(1)
    samples = [Sample({"dicom_image": torch.rand(1, SIZE, SIZE, generator=g)} if p else {}, torch.tensor([1.0, 0.0]))
               for p in present]
    return Collate(["dicom_image"])(samples)


def _check_runs(model, batch, out_dim: int) -> None:
    enc = model.encoders[model.modalities[0]]
    x = batch.inputs[model.modalities[0]]
    with torch.no_grad():
        y = enc.eval()(x)
    assert y.shape == (len(x), out_dim) and torch.isfinite(y).all()
    model.train()
    out = model(batch)
    assert out.output.shape == (len(batch), 2) and torch.isfinite(out.output).all()


# -- torchvision ResNet -----------------------------------------------------------------------------
def test_torchvision_resnet18_file_frozen(files):
    path = files["resnet18"]
    sd = torch.load(path, weights_only=True)
    cfg = _config({"name": "torchvision_resnet", "options": {"arch": "resnet18", "out_dim": 16},
                   "weights": str(path), "train": "none"})
    model = build_model(cfg, get_registry())
    enc = model.encoders["dicom_image"]
    assert model.config.encoders["dicom_image"].weights_sha256 == sha256_of(path) == enc.weights_sha256
    assert enc.weights_source == str(path)
    # grey input: the RGB kernels summed (default grey="sum"); everything else exactly the file's
    assert torch.equal(enc.net.conv1.weight, sd["conv1.weight"].sum(1, keepdim=True))
    assert torch.equal(enc.net.layer1[0].conv1.weight, sd["layer1.0.conv1.weight"])
    assert torch.equal(enc.net.layer4[1].bn2.running_var, sd["layer4.1.bn2.running_var"])
    assert torch.equal(enc.net.bn1.bias, sd["bn1.bias"])
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in enc.modules())
    assert count_parameters(enc)[0] == 0 and "dicom_image" in model.frozen
    # a sub-batch of one present row (BatchNorm at a 1x1 map) trains and leaves the statistics alone
    before = enc.net.layer4[1].bn2.running_mean.clone()
    _check_runs(model, _image_batch(3, [True, False, False]), 16)
    assert torch.equal(enc.net.layer4[1].bn2.running_mean, before)
    # the weights' own normalisation is inside: grey uses the ImageNet channel means
    assert torch.allclose(enc.scale(torch.full((1, 1, 2, 2), 0.449)), torch.zeros(1, 1, 2, 2), atol=1e-6)


def test_torchvision_resnet_grey_mean_rgb_and_lora(files):
    path = files["resnet18"]
    sd = torch.load(path, weights_only=True)
    reg = get_registry()
    cfg = _config({"name": "torchvision_resnet", "options": {"grey": "mean", "out_dim": 8},
                   "weights": str(path), "train": "lora:2"})
    model = build_model(cfg, reg)
    enc = model.encoders["dicom_image"]
    base = dict(enc.named_parameters())
    conv1 = next(v for k, v in base.items() if k.startswith("net.conv1.") and "weight" in k and "lora" not in k)
    assert torch.allclose(conv1, sd["conv1.weight"].mean(1, keepdim=True))
    trainable = [k for k, p in enc.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in k for k in trainable)
    _check_runs(model, _image_batch(2), 8)
    # an RGB modality keeps the file's first convolution as it is, and ImageNet's per-channel statistics
    from mmdomain_medical.image_encoders import TorchvisionResNetEncoder

    rgb = TorchvisionResNetEncoder(types.SimpleNamespace(name="rgb", kind="image", channels=3), out_dim=8)
    rgb.load_pretrained(sd, path)
    assert torch.equal(rgb.net.conv1.weight, sd["conv1.weight"])
    assert rgb.mean.flatten().tolist() == pytest.approx([0.485, 0.456, 0.406])
    y = rgb.eval()(torch.rand(2, 3, SIZE, SIZE))
    assert y.shape == (2, 8) and torch.isfinite(y).all()


def test_torchvision_resnet_refuses_other_architectures_and_formats(files, tmp_path):
    reg = get_registry()

    def build(arch: str, weights: Path):
        return build_model(_config({"name": "torchvision_resnet", "options": {"arch": arch}, "weights": str(weights)}),
                           reg)

    with pytest.raises(ConfigError, match=r"resnet50 weights given to a resnet18 encoder.*layer1\.0\.conv3\.weight "
                                          r"not expected.*use arch = \"resnet50\"") as e:
        build("resnet18", files["resnet50"])
    assert str(files["resnet50"]) in str(e.value)
    with pytest.raises(ConfigError, match=r"resnet18 weights given to a resnet50 encoder.*missing") as e:
        build("resnet50", files["resnet18"])
    assert str(files["resnet18"]) in str(e.value)
    with pytest.raises(ConfigError, match="is not torchvision ResNet weights") as e:  # a DenseNet file
        build("resnet18", files["densenet121"])
    assert str(files["densenet121"]) in str(e.value)
    junk = tmp_path / "resnet18-f37072fd.pth"
    junk.write_text("not a weights file")
    with pytest.raises(ConfigError, match="not a readable weights file") as e:
        build("resnet18", junk)
    assert str(junk) in str(e.value)
    missing = tmp_path / "nowhere" / "resnet18-f37072fd.pth"
    with pytest.raises(ConfigError, match="not found") as e:
        build("resnet18", missing)
    assert str(missing) in str(e.value)
    with pytest.raises(ConfigError, match="arch="):
        build("resnet19", files["resnet18"])


# -- torchvision DenseNet ---------------------------------------------------------------------------
def test_torchvision_densenet121_old_key_file_last_block(files):
    path, sd = files["densenet121"], files["densenet121_sd"]
    cfg = _config({"name": "torchvision_densenet", "options": {"out_dim": 12}, "weights": str(path),
                   "train": "last:1"})
    model = build_model(cfg, get_registry())
    enc = model.encoders["dicom_image"]
    assert model.config.encoders["dicom_image"].weights_sha256 == sha256_of(path)
    layer = enc.net.features.denseblock3.denselayer7
    assert torch.equal(layer.norm1.running_mean, sd["features.denseblock3.denselayer7.norm1.running_mean"])
    assert torch.equal(layer.conv2.weight, sd["features.denseblock3.denselayer7.conv2.weight"])
    assert torch.equal(enc.net.features.conv0.weight, sd["features.conv0.weight"].sum(1, keepdim=True))
    assert len(enc.blocks()) == 6
    assert {k for k, p in enc.named_parameters() if p.requires_grad} == {"proj.weight", "proj.bias"}
    _check_runs(model, _image_batch(2, [False, True]), 12)


def test_densenet_files_are_told_apart(files, tmp_path):
    """torchvision's 3-channel DenseNet and torchxrayvision's 1-channel one refuse each other's files."""
    import torchvision

    reg = get_registry()
    d169 = tmp_path / "densenet169-b2777c0a.pth"
    torch.save(torchvision.models.densenet169(weights=None).state_dict(), d169)
    with pytest.raises(ConfigError, match=r"densenet169 weights given to a densenet121 encoder.*not expected"):
        build_model(_config({"name": "torchvision_densenet", "weights": str(d169)}), reg)
    with pytest.raises(ConfigError, match="torchvision's ImageNet weights: use the torchvision_densenet encoder"):
        build_model(_config({"name": "xrv_densenet121", "options": {"size": None}, "weights": str(files["densenet121"])}),
                    reg)


# -- torchxrayvision --------------------------------------------------------------------------------
def _xrv_module() -> types.ModuleType:
    """torchxrayvision.models' DenseNet classes as that library declares them (module path,
    class names, submodule names), so that a pickled model names exactly its globals."""
    mod = types.ModuleType("torchxrayvision.models")

    class _DenseLayer(nn.Sequential):
        def __init__(self, n_in, growth, bn_size):
            super().__init__()
            self.add_module("norm1", nn.BatchNorm2d(n_in))
            self.add_module("relu1", nn.ReLU(inplace=True))
            self.add_module("conv1", nn.Conv2d(n_in, bn_size * growth, 1, 1, bias=False))
            self.add_module("norm2", nn.BatchNorm2d(bn_size * growth))
            self.add_module("relu2", nn.ReLU(inplace=True))
            self.add_module("conv2", nn.Conv2d(bn_size * growth, growth, 3, 1, 1, bias=False))

    class _DenseBlock(nn.Sequential):
        def __init__(self, n_layers, n_in, bn_size, growth):
            super().__init__()
            for i in range(n_layers):
                self.add_module("denselayer%d" % (i + 1), _DenseLayer(n_in + i * growth, growth, bn_size))

    class _Transition(nn.Sequential):
        def __init__(self, n_in, n_out):
            super().__init__()
            self.add_module("norm", nn.BatchNorm2d(n_in))
            self.add_module("relu", nn.ReLU(inplace=True))
            self.add_module("conv", nn.Conv2d(n_in, n_out, 1, 1, bias=False))
            self.add_module("pool", nn.AvgPool2d(2, 2))

    class DenseNet(nn.Module):
        def __init__(self, growth=32, blocks=(6, 12, 24, 16), init=64, bn_size=4, num_classes=18):
            super().__init__()
            self.features = nn.Sequential(OrderedDict([
                ("conv0", nn.Conv2d(1, init, 7, 2, 3, bias=False)), ("norm0", nn.BatchNorm2d(init)),
                ("relu0", nn.ReLU(inplace=True)), ("pool0", nn.MaxPool2d(3, 2, 1))]))
            n = init
            for i, layers in enumerate(blocks):
                self.features.add_module("denseblock%d" % (i + 1), _DenseBlock(layers, n, bn_size, growth))
                n += layers * growth
                if i != len(blocks) - 1:
                    self.features.add_module("transition%d" % (i + 1), _Transition(n, n // 2))
                    n //= 2
            self.features.add_module("norm5", nn.BatchNorm2d(n))
            self.classifier = nn.Linear(n, num_classes)
            self.register_buffer("op_threshs", None)
            self.pathologies = ["Atelectasis"] * num_classes

    for cls in (_DenseLayer, _DenseBlock, _Transition, DenseNet):
        cls.__module__, cls.__qualname__ = "torchxrayvision.models", cls.__name__
        setattr(mod, cls.__name__, cls)
    return mod


@pytest.fixture(scope="module")
def xrv_files(tmp_path_factory):
    """torchxrayvision's cache folder with its 'all' file as a pickled whole model (legacy
    format, as its published files are), the same model in the zip format, and its state dict."""
    root = tmp_path_factory.mktemp("xrvhome")
    cache = root / ".torchxrayvision" / "models_data"
    cache.mkdir(parents=True)
    mod = _xrv_module()
    pkg = types.ModuleType("torchxrayvision")
    pkg.models = mod
    saved = {k: sys.modules.get(k) for k in ("torchxrayvision", "torchxrayvision.models")}
    sys.modules["torchxrayvision"], sys.modules["torchxrayvision.models"] = pkg, mod
    try:
        torch.manual_seed(3)
        model = _randomise_bn(mod.DenseNet())
        legacy = cache / XRV_DENSENET_FILES["densenet121-res224-all"]
        zipped = root / "xrv-zip.pt"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch cannot keep these test classes' source: fine
            torch.save(model, legacy, _use_new_zipfile_serialization=False)
            torch.save(model, zipped)
        sd = {k: v.clone() for k, v in model.state_dict().items()}
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    assert "torchxrayvision" not in sys.modules
    return {"home": root, "legacy": legacy, "zip": zipped, "sd": sd}


def test_xrv_from_its_cache_folder_without_torchxrayvision(xrv_files, monkeypatch):
    monkeypatch.setenv("HOME", str(xrv_files["home"]))
    sd = xrv_files["sd"]
    cfg = _config({"name": "xrv_densenet121", "options": {"weights_name": "densenet121-res224-all", "size": 64,
                                                          "out_dim": 8}, "train": "none"})
    model = build_model(cfg, get_registry())
    enc = model.encoders["dicom_image"]
    assert "torchxrayvision" not in sys.modules
    assert enc.weights_source == str(xrv_files["legacy"]) and enc.weights_sha256 == sha256_of(xrv_files["legacy"])
    assert torch.equal(enc.net.features.conv0.weight, sd["features.conv0.weight"])  # 1 channel, as is
    assert torch.equal(enc.net.features.denseblock4.denselayer16.norm2.running_var,
                       sd["features.denseblock4.denselayer16.norm2.running_var"])
    assert torch.equal(enc.net.features.norm5.weight, sd["features.norm5.weight"])
    # torchxrayvision's input: [0, 1] -> [-1024, 1024], resized to `size`
    x = enc.prepare(torch.stack([torch.zeros(1, SIZE, SIZE), torch.ones(1, SIZE, SIZE)]))
    assert x.shape == (2, 1, 64, 64) and x[0].max() == -1024 and x[1].min() == 1024
    _check_runs(model, _image_batch(2), 8)
    # the zip format and the short name read the same tensors
    zipped = read_torch_model_file(xrv_files["zip"], "t")
    assert set(zipped) == set(sd) and all(torch.equal(zipped[k], sd[k]) for k in sd)
    from mmdomain_medical.image_encoders import XrvDenseNetEncoder

    m = get_registry().modality("dicom_image")
    short = XrvDenseNetEncoder(m, weights_name="all", size=None)
    assert torch.equal(short.net.features.conv0.weight, sd["features.conv0.weight"])
    with pytest.raises(ConfigError, match="config expects"):
        XrvDenseNetEncoder(m, path=str(xrv_files["zip"]), path_sha256="0" * 64)
    # the default resize is torchxrayvision's 224 x 224
    assert XrvDenseNetEncoder(m).prepare(torch.zeros(1, 1, SIZE, SIZE)).shape == (1, 1, 224, 224)


def test_xrv_missing_file_says_where_and_how(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    reg = get_registry()
    with pytest.raises(ConfigError) as e:
        build_model(_config({"name": "xrv_densenet121", "options": {"weights_name": "densenet121-res224-chex"}}), reg)
    msg = str(e.value)
    expected = tmp_path / ".torchxrayvision" / "models_data" / "chex-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt"
    assert str(expected) in msg and "nothing is downloaded" in msg
    assert "https://github.com/mlmed/torchxrayvision/releases/download/v1/chex-" in msg and "copy it to" in msg
    with pytest.raises(ConfigError, match="unknown weights_name"):
        build_model(_config({"name": "xrv_densenet121", "options": {"weights_name": "resnet50-res512-all"}}), reg)
    with pytest.raises(ConfigError, match="not found"):
        build_model(_config({"name": "xrv_densenet121", "options": {"path": str(tmp_path / "x.pt")}}), reg)


def test_xrv_converted_state_dict_through_weights(xrv_files, tmp_path):
    """A plain state dict (converted once) goes through the core's weights=: SHA-256 in the config."""
    dst = tmp_path / "xrv-all.safetensors"
    digest = convert_xrv_weights(xrv_files["legacy"], dst)
    cfg = _config({"name": "xrv_densenet121", "options": {"size": None, "out_dim": 8}, "weights": str(dst),
                   "train": "last:2"})
    model = build_model(cfg, get_registry())
    enc = model.encoders["dicom_image"]
    assert model.config.encoders["dicom_image"].weights_sha256 == digest == enc.weights_sha256
    assert torch.equal(enc.net.features.transition3.conv.weight, xrv_files["sd"]["features.transition3.conv.weight"])
    trainable = {k.split(".")[2] for k, p in enc.named_parameters() if p.requires_grad and k.startswith("net.")}
    assert trainable == {"denseblock4", "norm5"}
    # the 1-channel file is refused by the ImageNet encoder, naming what it is
    with pytest.raises(ConfigError, match="torchxrayvision's: use the xrv_densenet121 encoder") as e:
        build_model(_config({"name": "torchvision_densenet", "weights": str(dst)}), get_registry())
    assert str(dst) in str(e.value)


def test_pickles_run_no_code(tmp_path):
    """A pickle that would call os.system on load is read as inert data and refused."""
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            import os

            return os.system, (f"touch {marker}",)

    for fmt, zipped in (("legacy", False), ("zip", True)):
        f = tmp_path / f"evil-{fmt}.pt"
        torch.save({"model": Evil()}, f, _use_new_zipfile_serialization=zipped)
        with pytest.raises(ConfigError, match="neither a state dict nor a pickled model|not a readable torch") as e:
            read_torch_model_file(f, "xrv_densenet121")
        assert str(f) in str(e.value)
    assert not marker.exists()


# -- BatchNorm under DP ------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
def test_frozen_stats_batchnorm_gives_exact_per_sample_gradients():
    """Opacus' hooks (strict: no trainable layer with buffers) take per-sample gradients through
    the frozen-statistics BatchNorm, equal to each sample's gradient alone."""
    from opacus.grad_sample import GradSampleModule

    from mmdomain_medical.image_encoders import TorchvisionResNetEncoder

    torch.manual_seed(0)
    enc = TorchvisionResNetEncoder(types.SimpleNamespace(name="g", kind="image", channels=1), out_dim=4)
    _randomise_bn(enc)  # nothing to randomise: no nn.BatchNorm2d left (frozen statistics by default)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in enc.modules())
    for m in enc.modules():
        if isinstance(m, FrozenStatsBatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    x = torch.rand(3, 1, SIZE, SIZE)
    enc.train()
    gsm = GradSampleModule(enc, loss_reduction="sum")
    gsm(x).pow(2).sum().backward()
    bn, conv = enc.net.layer2[0].bn1, enc.net.layer3[1].conv2
    for p in (bn.weight, bn.bias, conv.weight):
        assert p.grad_sample is not None and p.grad_sample.shape[0] == 3
    hooked = [bn.weight.grad_sample.clone(), bn.bias.grad_sample.clone(), conv.weight.grad_sample.clone()]
    gsm.cleanup()
    for i in range(3):  # each sample's gradient on its own
        alone = torch.autograd.grad(enc(x[i:i + 1]).pow(2).sum(), [bn.weight, bn.bias, conv.weight])
        for got, want in zip(hooked, alone):
            assert torch.allclose(got[i], want, atol=1e-5, rtol=1e-3)


def test_batch_mode_keeps_frozen_blocks_statistics(files):
    cfg = _config({"name": "torchvision_resnet", "options": {"bn": "batch", "out_dim": 8},
                   "weights": str(files["resnet18"]), "train": "last:2"})
    model = build_model(cfg, get_registry())
    enc = model.encoders["dicom_image"]
    assert any(type(m) is nn.BatchNorm2d for m in enc.modules())
    frozen, trained = enc.net.layer1[0].bn1.running_mean.clone(), enc.net.layer4[0].bn1.running_mean.clone()
    model.train()
    model(_image_batch(4))
    assert torch.equal(enc.net.layer1[0].bn1.running_mean, frozen)  # frozen block: eval-mode statistics
    assert not torch.equal(enc.net.layer4[0].bn1.running_mean, trained)  # trained block: batch statistics


# -- MONAI -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,last", [("monai_resnet", 1), ("monai_densenet", 2)])
def test_monai_state_dict_and_blocks(tmp_path, name, last):
    reg = get_registry()
    torch.manual_seed(5)
    src = reg.encoder(name).build(reg.modality("dicom_image"), out_dim=8)
    f = tmp_path / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(f))
    model = build_model(_config({"name": name, "options": {"out_dim": 8}, "weights": str(f),
                                 "train": f"last:{last}"}), reg)
    enc = model.encoders["dicom_image"]
    assert model.config.encoders["dicom_image"].weights_sha256 == sha256_of(f)
    assert all(torch.equal(v, src.state_dict()[k]) for k, v in enc.state_dict().items())
    blocks = enc.blocks()
    assert len(blocks) == 6
    trainable = {id(p) for p in enc.parameters() if p.requires_grad}
    assert trainable == {id(p) for b in blocks[-last:] for p in b.parameters()}
    assert {id(p) for p in enc.net.fc.parameters()} <= trainable if name == "monai_resnet" else True
    _check_runs(model, _image_batch(2), 8)


# -- Hugging Face text ---------------------------------------------------------------------------------
WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "fever", "cough", "heart", "failure", "chest", "pain",
         "##s", "and", "with", "no", "effusion"]


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory):
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = tmp_path_factory.mktemp("hf") / "tiny-clinical-bert"
    BertTokenizerFast(vocab={w: i for i, w in enumerate(WORDS)}, do_lower_case=True).save_pretrained(folder)
    cfg = BertConfig(vocab_size=len(WORDS), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    BertModel(cfg).save_pretrained(folder)  # with its pooler, as published models are
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer_config.json").is_file()
    return folder


def _report_batch(texts):
    return Collate(["report"])([Sample({"report": t}, torch.tensor([1.0, 0.0])) for t in texts])


def test_bert_folder_with_its_own_tokenizer(bert_folder):
    from safetensors.torch import load_file

    saved = load_file(str(bert_folder / "model.safetensors"))
    cfg = _config({"name": "bert_text", "options": {"path": str(bert_folder), "out_dim": 16, "pooling": "cls",
                                                    "max_length": 8}, "train": "last:1"},
                  modality="report", tokenizer={"name": "hf_tokenizer", "options": {"path": str(bert_folder)}})
    model = build_model(cfg, get_registry())
    enc, tok = model.encoders["report"], model.tokenizers["report"]
    # the folder's vocabulary and special tokens: [CLS] first, [SEP] last, lower-cased, WordPiece
    ids = tok(["Fever and cough", "chest pains"], 16)
    assert ids[0].tolist() == [WORDS.index(w) for w in ("[CLS]", "fever", "and", "cough", "[SEP]")]
    assert WORDS.index("##s") in ids[1].tolist() and tok.pad_id == 0 and tok.vocab_size == len(WORDS)
    assert enc.weights_sha256 == folder_digest(bert_folder) != tok.digest
    # the core records what the encoder started from, so a checkpoint says it and every site can check it
    assert model.config.encoders["report"].weights_sha256 == enc.weights_sha256
    other = cfg.model_copy(deep=True)
    other.encoders["report"].weights_sha256 = "0" * 64
    with pytest.raises(ConfigError, match=r"encoders\.report: .*another set of weights than the one this model started"):
        build_model(other, get_registry())
    assert tok.digest == folder_digest(bert_folder, only=["tokenizer.json", "tokenizer_config.json"])
    emb = saved.get("embeddings.word_embeddings.weight", saved.get("bert.embeddings.word_embeddings.weight"))
    assert torch.equal(enc.bert.get_input_embeddings().weight, emb)
    assert enc.bert.pooler is None and enc.max_length == 8 and enc.weights_source == str(bert_folder)
    blocks = enc.blocks()
    assert len(blocks) == 1 + 2 + 1 and blocks[0] is enc.bert.embeddings and blocks[-1] is enc.proj
    assert {k for k, p in enc.named_parameters() if p.requires_grad} == {"proj.weight", "proj.bias"}
    model.train()
    out = model(_report_batch(["fever and cough with chest pains and no effusion and heart failure", "no fever"]))
    assert out.output.shape == (2, 2) and torch.isfinite(out.output).all()
    emb_out = enc(tok(["fever", "a much longer report with chest pain and fever and cough and more"], 64))
    assert emb_out.shape == (2, 16) and torch.isfinite(emb_out).all()


def test_bert_digest_and_refusals(bert_folder, tmp_path):
    import shutil

    from mmdomain_medical.text_encoder import BertTextEncoder
    from mmdomain_medical.hf_tokenizer import HFTokenizer

    m = get_registry().modality("report")
    digest = folder_digest(bert_folder)
    assert BertTextEncoder(m, len(WORDS), path=str(bert_folder), path_sha256=digest).weights_sha256 == digest
    copy = tmp_path / "copy"
    shutil.copytree(bert_folder, copy)
    assert folder_digest(copy) == digest
    (copy / "config.json").write_text((copy / "config.json").read_text().replace("0.02", "0.03"))
    assert folder_digest(copy) != digest
    with pytest.raises(ConfigError, match="config expects"):
        BertTextEncoder(m, len(WORDS), path=str(copy), path_sha256=digest)
    tok_digest = HFTokenizer(path=str(bert_folder)).digest
    assert HFTokenizer(path=str(copy), path_sha256=tok_digest).digest == tok_digest  # the tokenizer is unchanged
    (copy / "tokenizer_config.json").write_text((copy / "tokenizer_config.json").read_text().replace("}", ' }'))
    with pytest.raises(ConfigError, match="config expects"):
        HFTokenizer(path=str(copy), path_sha256=tok_digest)
    with pytest.raises(ConfigError, match="not a local folder"):
        HFTokenizer(path=str(tmp_path / "absent"))
    with pytest.raises(ConfigError, match="not a local model directory"):
        BertTextEncoder(m, len(WORDS), path=str(tmp_path / "absent"))
    with pytest.raises(ConfigError, match="pooling"):
        BertTextEncoder(m, len(WORDS), pooling="max")


def test_bert_hf_state_dict_through_weights(bert_folder, tmp_path):
    """weights= a Hugging Face safetensors file into the random-config architecture: SHA-256 recorded;
    another architecture's file refused naming the file and the keys."""
    from safetensors.torch import load_file

    f = bert_folder / "model.safetensors"
    opts = {"layers": 2, "hidden": 32, "heads": 2, "max_length": 64, "out_dim": 8}
    tok = {"name": "hf_tokenizer", "options": {"path": str(bert_folder)}}
    model = build_model(_config({"name": "bert_text", "options": opts, "weights": str(f), "train": "norms"},
                                modality="report", tokenizer=tok), get_registry())
    enc = model.encoders["report"]
    saved = {k.removeprefix("bert."): v for k, v in load_file(str(f)).items()}
    assert model.config.encoders["report"].weights_sha256 == sha256_of(f) == enc.weights_sha256
    assert torch.equal(enc.bert.encoder.layer[1].output.dense.weight, saved["encoder.layer.1.output.dense.weight"])
    with pytest.raises(ConfigError, match=r"encoder\.layer\.1\..* not expected") as e:
        build_model(_config({"name": "bert_text", "options": {**opts, "layers": 1}, "weights": str(f)},
                            modality="report", tokenizer=tok), get_registry())
    assert str(f) in str(e.value)
    assert "torchxrayvision" not in sys.modules


def test_no_weights_anywhere_means_random_architecture_only():
    """Built without any weights the encoders are their architecture with random values (what a
    checkpoint fills), and record no source."""
    reg = get_registry()
    m = reg.modality("dicom_image")
    for name in ("torchvision_resnet", "xrv_densenet121"):
        enc = reg.encoder(name).build(m, **({"size": None} if name == "xrv_densenet121" else {}))
        assert enc.weights_sha256 is None and enc.weights_source is None
        y = enc.eval()(torch.rand(1, 1, SIZE, SIZE))
        assert y.shape == (1, 128) and torch.isfinite(y).all()
