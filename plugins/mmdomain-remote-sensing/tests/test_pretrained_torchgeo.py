"""``torchgeo_resnet``: torchgeo's pretrained weights from the local torch hub cache, never downloaded.

The weight files here are random-valued, in the exact format, key names and file names torchgeo
uses (``timm.create_model(meta["model"], in_chans=meta["in_chans"])``'s state dict saved under the
file name at the end of the enum's url), in a temporary ``$TORCH_HOME/hub/checkpoints/``.
"""

import copy
import hashlib
import socket

import pytest
import timm
import torch
import torchvision.models._api as tv_api
from mmdomain_remote_sensing.bands import S2_BANDS
from mmdomain_remote_sensing.models import DEFAULT_MODEL
from mmdomain_remote_sensing.pretrained import TorchGeoResNet, digest_hex, hub_path

from mmdomain import ConfigError, get_registry
from mmdomain.config import ModelConfig, parse
from mmdomain.data.sample import Batch
from mmdomain.models.compose import build_model
from mmdomain.models.trainable import count_parameters

S2_ALL = "ResNet18_Weights.SENTINEL2_ALL_MOCO"
S2_RGB = "ResNet18_Weights.SENTINEL2_RGB_MOCO"
S1_MOCO = "ResNet50_Weights.SENTINEL1_GRD_MOCO"


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    """A private, empty torch hub dir, and every way to the network closed."""
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # get_dir() then follows $TORCH_HOME

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(tv_api.WeightsEnum, "get_state_dict", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    return home / "hub" / "checkpoints"


def write_weights(name, in_chans=None, arch=None, fc=True, seed=0):
    """A random torchgeo-format file for ``name`` at its hub path; returns (path, state dict)."""
    from mmdomain_remote_sensing.pretrained import _weights_enum

    w = _weights_enum(name)
    torch.manual_seed(seed)
    net = timm.create_model(arch or w.meta["model"], pretrained=False, in_chans=in_chans or w.meta["in_chans"])
    with torch.no_grad():  # non-trivial BatchNorm statistics too
        for k, v in net.state_dict().items():
            if v.is_floating_point():
                v.copy_(torch.rand_like(v) * 0.1 + (0.5 if "running_var" in k else 0.0))
    state = net.state_dict()
    if not fc:
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    path = hub_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path, state


def model_config(s2=None, s1=None):
    cfg = copy.deepcopy(DEFAULT_MODEL)
    if s2:
        cfg["encoders"]["s2"] = s2
    if s1:
        cfg["encoders"]["s1"] = s1
    return parse(ModelConfig, cfg)


def batch(n=3, size=32, s2_channels=12):
    torch.manual_seed(1)
    inputs = {"s2": torch.rand(n, s2_channels, size, size) * 0.4, "s1": torch.randn(n, 2, size, size) * 5 - 15}
    return Batch(inputs, {m: torch.ones(n, dtype=torch.bool) for m in inputs}, None, {})


def test_hub_path_is_torch_hub_checkpoints_plus_the_url_file_name(offline):
    assert hub_path(S2_ALL) == offline / "resnet18_sentinel2_all_moco-59bfdff9.pth"
    assert hub_path(S1_MOCO).name == "resnet50_sentinel1_all_moco-906e4356.pth"  # GRD_MOCO is an alias


def test_13_band_l1c_weights_refuse_l2a_without_b10_unless_filled(offline):
    path, state = write_weights(S2_ALL)
    with pytest.raises(ConfigError, match="B10") as exc:
        build_model(model_config(s2={"name": "torchgeo_resnet", "options": {"weights": S2_ALL}}), get_registry())
    assert "B01, B02" in str(exc.value) and "B8A" in str(exc.value)  # both band lists named

    cfg = model_config(s2={"name": "torchgeo_resnet", "train": "none",
                           "options": {"weights": S2_ALL, "out_dim": 48, "fill_missing": "zeros"}})
    model = build_model(cfg, get_registry())
    enc = model.encoders["s2"]
    own = enc.net.state_dict()
    for k, v in state.items():  # every tensor of the file, the classifier dropped
        if k.startswith("fc."):
            assert k not in own
        else:
            assert torch.equal(own[k], v), k
    assert enc.filled == ("B10",)
    assert enc.weights_sha256 == hashlib.sha256(path.read_bytes()).hexdigest() == digest_hex(enc)
    assert "encoders.s2.weights_digest" in model.state_dict()  # travels in every checkpoint
    assert count_parameters(enc)[0] == 0 and "s2" in model.frozen
    b = batch()
    x = enc.prepare(b.inputs["s2"])
    assert x.shape[1] == 13 and torch.all(x[:, 10] == 0)  # B10 is a constant 0 after normalisation
    # B11 of the weights (channel 11) is our B11 (channel 10), DN/10000 = reflectance (dn_offset 0)
    assert torch.allclose(x[:, 11], b.inputs["s2"][:, 10], atol=1e-6)
    emb = model.encode(b)
    assert emb["s2"].shape == (3, 48) and torch.isfinite(emb["s2"]).all()


def test_band_order_follows_the_weights_and_last_1_trains_only_the_projection(offline):
    write_weights(S2_RGB, fc=False)  # a file without the classifier loads too
    bands = ["B08", "B02", "B03", "B04"]
    cfg = model_config(s2={"name": "torchgeo_resnet", "train": "last:1",
                           "options": {"weights": S2_RGB, "out_dim": 16, "bands": bands, "dn_offset": 1000}})
    model = build_model(cfg, get_registry())
    enc = model.encoders["s2"]
    assert [n for n, p in enc.named_parameters() if p.requires_grad] == ["head.weight", "head.bias"]
    model.train()
    assert not enc.net.bn1.training and enc.head.training  # frozen BatchNorm keeps its statistics
    x = torch.rand(2, 4, 32, 32) * 0.3
    expected = (x[:, [3, 2, 1]] * 10000 + 1000) / 10000  # B4, B3, B2 as DN (offset 1000), / 10000
    assert torch.allclose(enc.prepare(x), expected, atol=1e-5)
    y = enc(x)
    assert y.shape == (2, 16) and torch.isfinite(y).all()
    y.sum().backward()
    assert enc.head.weight.grad is not None and enc.net.conv1.weight.grad is None
    with pytest.raises(ConfigError, match="4 bands"):
        enc(torch.rand(2, 12, 32, 32))


def test_s1_grd_weights_take_clipped_db_with_their_statistics(offline):
    _, state = write_weights(S1_MOCO)
    cfg = model_config(s1={"name": "torchgeo_resnet", "train": "none", "options": {"weights": S1_MOCO, "out_dim": 8}})
    model = build_model(cfg, get_registry())
    enc = model.encoders["s1"]
    assert torch.equal(enc.net.conv1.weight, state["conv1.weight"])
    db = torch.tensor([-50.0, -12.59, 0.0, 20.0]).view(1, 1, 2, 2).repeat(1, 2, 1, 1)
    x = enc.prepare(db)
    clipped = db.clamp(-40, 10)
    assert torch.allclose(x[:, 0], (clipped[:, 0] + 12.59) / 5.26, atol=1e-5)
    assert torch.allclose(x[:, 1], (clipped[:, 1] + 20.26) / 5.91, atol=1e-5)
    emb = model.encode(batch(n=2))
    assert emb["s1"].shape == (2, 8) and torch.isfinite(emb["s1"]).all()


def test_missing_file_names_the_path_and_the_url_and_downloads_nothing(offline):
    cfg = model_config(s2={"name": "torchgeo_resnet", "options": {"weights": S2_RGB}})
    with pytest.raises(ConfigError) as exc:
        build_model(cfg, get_registry())
    msg = str(exc.value)
    assert str(offline / "resnet18_sentinel2_rgb_moco-e3a335e3.pth") in msg
    assert "https://" in msg and "download" in msg and "copy it to" in msg


def test_wrong_channels_garbage_file_wrong_digest_and_wrong_bands_are_clear(offline, tmp_path):
    path, _ = write_weights(S2_ALL, in_chans=12)  # a 12-channel file under the 13-band name
    opts = {"weights": S2_ALL, "fill_missing": "zeros"}
    with pytest.raises(ConfigError, match="13 input channels") as exc:
        TorchGeoResNet(get_registry().modality("s2"), **opts)
    assert str(path) in str(exc.value) and "conv1.weight" in str(exc.value)

    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a torch file")
    with pytest.raises(ConfigError, match="garbage.pth"):
        TorchGeoResNet(get_registry().modality("s2"), weights_path=str(garbage), **opts)

    other = tmp_path / "other.pth"
    torch.save(timm.create_model("resnet50", in_chans=13).state_dict(), other)
    with pytest.raises(ConfigError, match="other.pth.*resnet18"):
        TorchGeoResNet(get_registry().modality("s2"), weights_path=str(other), **opts)

    write_weights(S2_RGB)
    with pytest.raises(ConfigError, match="SHA-256"):
        TorchGeoResNet(get_registry().modality("s2"), weights=S2_RGB, weights_sha256="0" * 64)
    with pytest.raises(ConfigError, match="B04, B03, B02.*B08, B11"):
        TorchGeoResNet(get_registry().modality("s2"), weights=S2_RGB, bands=["B08", "B11"])
    with pytest.raises(ConfigError, match="unknown Sentinel-2"):
        TorchGeoResNet(get_registry().modality("s2"), weights=S2_RGB, bands=["B10"])
    with pytest.raises(ConfigError, match="no member"):
        TorchGeoResNet(get_registry().modality("s2"), weights="ResNet18_Weights.SENTINEL2_NOPE")


def test_weights_without_a_reflectance_or_db_scale_are_refused(offline):
    s2, s1 = get_registry().modality("s2"), get_registry().modality("s1")
    with pytest.raises(ConfigError, match="8-bit"):
        TorchGeoResNet(s2, weights="ResNet18_Weights.SENTINEL2_RGB_SECO")
    with pytest.raises(ConfigError, match="dB or linear"):
        TorchGeoResNet(s1, weights="ResNet50_Weights.SENTINEL1_GRD_CLOSP")
    with pytest.raises(ConfigError, match="Sentinel"):
        TorchGeoResNet(s2, weights="ResNet18_Weights.LANDSAT_TM_TOA_MOCO")


def test_core_weights_path_records_the_digest_in_the_model_config(offline):
    path, state = write_weights(S2_RGB)
    cfg = model_config(s2={"name": "torchgeo_resnet", "weights": str(hub_path(S2_RGB)), "train": "norms",
                           "options": {"weights": S2_RGB, "load": False, "bands": list(S2_BANDS)}})
    model = build_model(cfg, get_registry())
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert model.config.encoders["s2"].weights_sha256 == digest == digest_hex(model.encoders["s2"])
    assert torch.equal(model.encoders["s2"].net.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])
    emb = model.encode(batch(n=2))
    assert emb["s2"].shape == (2, 128) and torch.isfinite(emb["s2"]).all()


def test_no_weights_is_a_random_init_baseline_and_dense_gives_a_map(offline):
    enc = TorchGeoResNet(get_registry().modality("s2"), dense=True, out_dim=8).eval()
    assert digest_hex(enc) is None
    assert enc(torch.rand(2, 12, 64, 64)).shape == (2, 8, 2, 2)
