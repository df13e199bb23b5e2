"""open_clip image / text towers of one pretrained pair, from a local model folder only.

Every folder here is written by the test in the layout of open_clip's Hugging Face repositories:
``open_clip_config.json`` (``model_cfg`` + ``preprocess_cfg``) and the pair's weights with random
values under open_clip's own key names, from ``open_clip.create_model(...).state_dict()``, as
``open_clip_pytorch_model.bin`` (torch pickle) or ``open_clip_model.safetensors``. The tokenizer is
open_clip's ``SimpleTokenizer`` (its BPE vocabulary ships inside the open_clip package) or, for a
Hugging Face text tower, the folder's own tokenizer files. The network is unavailable throughout:
socket connections and ``urlopen`` raise, and the Hugging Face libraries are offline.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import open_clip
import pytest
import torch
from safetensors.torch import load_file, save_file

from mmdomain import Collate, ConfigError, Sample, get_registry
from mmdomain.config import ModelConfig, parse
from mmdomain.models.compose import build_model
from mmdomain.models.trainable import count_parameters


SIZE = 32
MODEL_CFG = {"embed_dim": 32,
             "vision_cfg": {"image_size": SIZE, "patch_size": 8, "width": 64, "layers": 2, "head_width": 32},
             "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}}
PREPROCESS = {"mean": [0.5, 0.45, 0.4], "std": [0.25, 0.26, 0.27], "interpolation": "bicubic",
              "resize_mode": "shortest"}


pytestmark = pytest.mark.usefixtures("no_network")  # conftest: any connection attempt fails the test


def _write_folder(folder: Path, model_cfg: dict, seed: int = 0, fmt: str = "bin") -> Path:
    """An open_clip model folder: its config, and the random weights of the model it describes in
    open_clip's exact key names and file names; returns the weight file."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": PREPROCESS}))
    torch.manual_seed(seed)
    model = open_clip.create_model(f"local-dir:{folder}", load_weights=False, pretrained_text=False)
    state = model.state_dict()
    if fmt == "bin":
        torch.save(state, folder / "open_clip_pytorch_model.bin")
        return folder / "open_clip_pytorch_model.bin"
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "open_clip_model.safetensors"))
    return folder / "open_clip_model.safetensors"


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("openclip")
    return {"bin": _write_folder(root / "tiny-clip", MODEL_CFG),
            "safetensors": _write_folder(root / "tiny-clip-safe", MODEL_CFG, seed=1, fmt="safetensors")}


def _state(file: Path) -> dict[str, torch.Tensor]:
    return load_file(str(file)) if file.suffix == ".safetensors" else torch.load(file, weights_only=True)


def _sha(file: Path) -> str:
    return hashlib.sha256(file.read_bytes()).hexdigest()


def _encoders(folder: Path, **options):
    from mmdomain_medical.openclip_encoders import OpenClipTokenizer

    reg = get_registry()
    tok = reg.tokenizer("openclip_tokenizer").build(path=str(folder))
    assert isinstance(tok, OpenClipTokenizer)
    img = reg.encoder("openclip_image").build(reg.modality("dicom_image"), path=str(folder), out_dim=16, **options)
    txt = reg.encoder("openclip_text").build(reg.modality("report"), vocab_size=tok.vocab_size, pad_id=tok.pad_id,
                                             path=str(folder), out_dim=16, **options)
    return img, txt, tok


def _config(folder: Path, image: dict | None = None, text: dict | None = None) -> ModelConfig:
    opts = {"path": str(folder), "out_dim": 16}
    return parse(ModelConfig, {
        "modalities": ["dicom_image", "report"],
        "encoders": {"dicom_image": {"name": "openclip_image", "options": opts, **(image or {})},
                     "report": {"name": "openclip_text", "options": opts, **(text or {})}},
        "tokenizers": {"report": {"name": "openclip_tokenizer", "options": {"path": str(folder)}}},
        "fusion": {"name": "concat", "options": {"out_dim": 8}},
        "task": {"name": "multilabel", "options": {"num_labels": 2}}})


def _batch(n: int = 3):
    g = torch.Generator().manual_seed(1)
    texts = ["no acute cardiopulmonary process", None, "small left pleural effusion " * 20]
    samples = [Sample({"dicom_image": torch.rand(1, 40, 48, generator=g),
                       **({"report": texts[i % 3]} if texts[i % 3] else {})}, torch.tensor([1.0, 0.0]))
               for i in range(n)]
    return Collate(["dicom_image", "report"])(samples)


# -- loading ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["bin", "safetensors"])
def test_both_towers_of_the_pair_load_offline(pair, fmt, caplog):
    file = pair[fmt]
    saved = _state(file)
    with caplog.at_level(logging.INFO):
        img, txt, tok = _encoders(file.parent)
    assert not [r for r in caplog.records if "open_clip" in r.pathname]  # no "Model initialized randomly"
    # the file's tensors, in open_clip's key names: visual.* for the image tower, CLIP's top-level text keys
    assert img.visual.state_dict().keys() == {k[7:] for k in saved if k.startswith("visual.")}
    assert all(torch.equal(v, saved[f"visual.{k}"]) for k, v in img.visual.state_dict().items())
    assert all(torch.equal(v, saved[k]) for k, v in txt.text.state_dict().items())
    # one file, one digest, for both towers
    assert img.weights_sha256 == txt.weights_sha256 == _sha(file)
    assert img.weights_source == txt.weights_source == str(file)
    # the model's own tokenizer: CLIP's BPE, start and end tokens, the end kept when a text is cut
    sot, eot = tok.tok.sot_token_id, tok.tok.eot_token_id
    ids = tok(["No acute process.", "word " * 100], 128)
    assert ids.shape == (2, 24) and tok.vocab_size == 49408 and tok.pad_id == 0
    assert ids[0, 0] == sot and eot in ids[0].tolist() and ids[1, -1] == eot
    if fmt == "safetensors":
        return
    # the towers compute what open_clip's own model, loaded by open_clip from the same folder, computes
    ref = open_clip.create_model(f"local-dir:{file.parent}").eval()
    x = torch.rand(2, 1, SIZE, SIZE)
    mean, std = torch.tensor(PREPROCESS["mean"]).view(1, 3, 1, 1), torch.tensor(PREPROCESS["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(txt.text.eval()(ids), ref.encode_text(ids), atol=1e-5)
        rgb = (x.expand(-1, 3, -1, -1) - mean) / std  # grey shown as R = G = B, the folder's mean / std
        assert torch.allclose(img.visual.eval()(img.prepare(x)), ref.encode_image(rgb), atol=1e-5)
        short = tok(["No acute process."], 8)  # padded to the tower's context length inside the encoder
        assert short.shape == (1, 8) and torch.allclose(txt.eval()(short), txt(tok(["No acute process."], 24)),
                                                        atol=1e-5)
        y = img.eval()(torch.rand(3, 1, 40, 48))  # another size: the folder's resize (shortest side + crop)
    assert y.shape == (3, 16) and torch.isfinite(y).all()


def test_digest_recorded_and_checked(pair):
    file = pair["bin"]
    folder, digest = file.parent, _sha(file)
    img, txt, tok = _encoders(folder, path_sha256=digest)
    assert img.weights_sha256 == txt.weights_sha256 == digest
    with pytest.raises(ConfigError, match="config expects") as e:
        _encoders(folder, path_sha256="0" * 64)
    assert str(file) in str(e.value)
    model = build_model(_config(folder), get_registry())
    assert {c.weights_sha256 for c in model.config.encoders.values()} == {digest}
    other = model.config.model_copy(deep=True)
    other.encoders["report"].weights_sha256 = "0" * 64  # a site whose folder holds another file
    with pytest.raises(ConfigError, match=r"encoders\.report: .*another set of weights"):
        build_model(other, get_registry())
    with pytest.raises(ConfigError, match="another tokenizer"):
        get_registry().tokenizer("openclip_tokenizer").build(path=str(folder), path_sha256="0" * 64)
    assert get_registry().tokenizer("openclip_tokenizer").build(path=str(folder), path_sha256=tok.digest).digest \
        == tok.digest


# -- refusals ---------------------------------------------------------------------------------------
def _refused(folder: Path, match: str, *names: object) -> str:
    reg = get_registry()
    for name in ("openclip_image", "openclip_text"):
        extra = {"vocab_size": 49408} if name == "openclip_text" else {}
        with pytest.raises(ConfigError, match=match) as e:
            reg.encoder(name).build(reg.modality("report" if extra else "dicom_image"), path=str(folder), **extra)
        assert all(str(n) in str(e.value) for n in names), str(e.value)
    return str(e.value)


def test_missing_folder_config_and_weights(pair, tmp_path):
    absent = tmp_path / "models" / "clip-vit-b-32"
    msg = _refused(absent, "not a local open_clip model folder", absent, "open_clip_config.json",
                   f"--local-dir {absent}")
    assert "hf download" in msg and "nothing is downloaded" in msg
    with pytest.raises(ConfigError, match="not a local open_clip model folder"):
        get_registry().tokenizer("openclip_tokenizer").build(path=str(absent))
    folder = tmp_path / "no-config"
    folder.mkdir()
    _refused(folder, "not found", folder / "open_clip_config.json")
    (folder / "open_clip_config.json").write_text("{not json")
    _refused(folder, "not valid JSON", folder / "open_clip_config.json", "model_cfg")
    (folder / "open_clip_config.json").write_text(json.dumps({"embed_dim": 32}))
    _refused(folder, "holds no open_clip model config", folder / "open_clip_config.json")
    shutil.copy(pair["bin"].parent / "open_clip_config.json", folder)
    _refused(folder, "no weight file", folder / "open_clip_model.safetensors", folder / "open_clip_pytorch_model.bin")


def test_wrong_architecture_and_format(pair, tmp_path):
    # weights of a pair whose image tower is narrower, read with the config of the tiny pair
    wide = {**MODEL_CFG, "vision_cfg": {**MODEL_CFG["vision_cfg"], "width": 32}}
    other = _write_folder(tmp_path / "other", wide)
    shutil.copy(pair["bin"].parent / "open_clip_config.json", other.parent)
    msg = _refused(other.parent, "does not fit the open_clip model", other, "ViT image 32, patch 8, width 64",
                   "visual.class_embedding has shape (32,) in the file, (64,) in the encoder")
    assert "open_clip_config.json" in msg
    # the whole pair is checked: a file whose TEXT tower differs is refused by the image encoder too
    deeper = _write_folder(tmp_path / "deeper", {**MODEL_CFG, "text_cfg": {**MODEL_CFG["text_cfg"], "layers": 3}},
                           fmt="safetensors")
    shutil.copy(pair["bin"].parent / "open_clip_config.json", deeper.parent)
    _refused(deeper.parent, r"transformer\.resblocks\.2\..* not expected", deeper, "2 layers")
    # a weight file of no known format
    junk = tmp_path / "junk"
    junk.mkdir()
    shutil.copy(pair["bin"].parent / "open_clip_config.json", junk)
    (junk / "open_clip_pytorch_model.bin").write_bytes(b"<html>404 not found</html>")  # a failed download
    _refused(junk, "not a readable weights file: not a torch weights file", junk / "open_clip_pytorch_model.bin",
             "open_clip state dict")
    torch.save({"visual.proj": _Pickled()}, junk / "open_clip_pytorch_model.bin")  # code to run on load
    _refused(junk, "holds Python objects other than tensors", junk / "open_clip_pytorch_model.bin")
    (junk / "open_clip_model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{bad json")
    _refused(junk, "not a readable weights file", junk / "open_clip_model.safetensors", "open_clip state dict")
    (junk / "open_clip_model.safetensors").write_bytes(b"PK\x03\x04 a zip, not safetensors")
    _refused(junk, "not a safetensors file", junk / "open_clip_model.safetensors")


class _Pickled:
    """An object a pickle would rebuild by running this module's code."""


# -- in a model -------------------------------------------------------------------------------------
def test_fusion_model_forward_backward(pair):
    folder = pair["safetensors"].parent
    model = build_model(_config(folder, image={"train": "last:2"}), get_registry())
    batch = _batch(3)
    model.train()
    out = model(batch)
    assert out.output.shape == (3, 2) and torch.isfinite(out.output).all()
    model.loss(out, batch).backward()
    img, txt = model.encoders["dicom_image"], model.encoders["report"]
    assert img.proj.weight.grad is not None and img.visual.transformer.resblocks[1].mlp.c_fc.weight.grad is not None
    assert img.visual.transformer.resblocks[0].mlp.c_fc.weight.grad is None  # frozen by last:2
    assert txt.text.token_embedding.weight.grad is not None and torch.isfinite(txt.proj.weight.grad).all()


def _trainable(enc) -> set[str]:
    return {k for k, p in enc.named_parameters() if p.requires_grad}


def test_train_policies(pair):
    from mmdomain.models.trainable import apply_policy

    folder = pair["bin"].parent
    reg = get_registry()

    def encoders(image: str, text: str):
        model = build_model(_config(folder, image={"train": image}, text={"train": text}), reg)
        return model, model.encoders["dicom_image"], model.encoders["report"]

    model, img, txt = encoders("none", "last:1")
    assert count_parameters(img)[0] == 0 and model.frozen == {"dicom_image"}
    assert _trainable(txt) == {"proj.weight", "proj.bias"}
    # blocks: the stem, each transformer block (the last with the final norm and the tower's projection), proj
    assert len(img.blocks()) == len(txt.blocks()) == 1 + 2 + 1
    apply_policy(img, "last:4")
    assert count_parameters(img)[0] == count_parameters(img)[1]
    apply_policy(img, "norms")
    assert "visual.ln_pre.weight" in _trainable(img) and "visual.conv1.weight" not in _trainable(img)
    apply_policy(txt, "norms")
    assert "text.transformer.resblocks.0.ln_1.weight" in _trainable(txt) and "text.positional_embedding" \
        not in _trainable(txt)
    model, img, txt = encoders("last:2", "last:2")
    assert _trainable(img) == ({f"visual.transformer.resblocks.1.{k}" for k in
                                dict(img.visual.transformer.resblocks[1].named_parameters())}
                               | {"visual.ln_post.weight", "visual.ln_post.bias", "visual.proj", "proj.weight",
                                  "proj.bias"})
    assert {k for k in _trainable(txt) if not k.startswith("text.transformer.resblocks.1.")} == {
        "text.ln_final.weight", "text.ln_final.bias", "text.text_projection", "proj.weight", "proj.bias"}
    apply_policy(img, "lora:2")  # (what build_model does with train = "lora:2")
    apply_policy(txt, "lora:2")
    assert _trainable(img) and all("lora_" in k for k in _trainable(img) | _trainable(txt))
    batch = _batch(2)
    model.train()
    out = model(batch)
    model.loss(out, batch).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for k, p in img.named_parameters() if "lora_B" in k)


def test_random_architecture_without_a_folder():
    reg = get_registry()
    img = reg.encoder("openclip_image").build(reg.modality("dicom_image"))
    txt = reg.encoder("openclip_text").build(reg.modality("report"), vocab_size=100, pad_id=0)
    assert img.weights_sha256 is None is txt.weights_sha256 and img.weights_source is None
    assert img.eval()(torch.rand(2, 1, 64, 64)).shape == (2, 128)
    assert txt.eval()(torch.randint(1, 100, (2, 12))).shape == (2, 128)
    with pytest.raises(ConfigError, match="give path="):
        reg.tokenizer("openclip_tokenizer").build()
    # project=false: the tower's own embedding (the pair's shared space), no projection block
    own = reg.encoder("openclip_image").build(reg.modality("dicom_image"), out_dim=64, project=False)
    assert own.eval()(torch.rand(1, 1, 32, 32)).shape == (1, 64) and len(own.blocks()) == 1 + 2
    with pytest.raises(ConfigError, match="set out_dim = 64"):
        reg.encoder("openclip_text").build(reg.modality("report"), vocab_size=100, project=False)


# -- a Hugging Face text tower (BiomedCLIP's layout) -----------------------------------------------
WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "no", "acute", "process", "pleural", "effusion", "small",
         "left", "##s"]


@pytest.fixture(scope="module")
def hf_pair(tmp_path_factory):
    """A pair whose text tower is a (tiny) BERT: its config.json and tokenizer files in the folder,
    as for BiomedCLIP; the config names a hub model the test never reaches."""
    from transformers import BertConfig, BertTokenizerFast

    folder = tmp_path_factory.mktemp("openclip-hf") / "tiny-biomedclip"
    folder.mkdir()
    BertConfig(vocab_size=len(WORDS), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
               intermediate_size=64, max_position_embeddings=32).save_pretrained(folder)
    BertTokenizerFast(vocab={w: i for i, w in enumerate(WORDS)}, do_lower_case=True).save_pretrained(folder)
    text_cfg = {"hf_model_name": "example-org/tiny-pubmedbert", "hf_tokenizer_name": "example-org/tiny-pubmedbert",
                "hf_proj_type": "linear", "hf_pooler_type": "cls_last_hidden_state_pooler", "context_length": 16}
    cfg = {**MODEL_CFG, "text_cfg": text_cfg}
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": PREPROCESS}))
    torch.manual_seed(2)
    model = open_clip.create_model(f"local-dir:{folder}", load_weights=False, pretrained_text=False,
                                   text_cfg={**text_cfg, "hf_model_name": str(folder), "hf_model_pretrained": False})
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    return folder


def test_hugging_face_text_tower_from_the_folder(hf_pair, tmp_path):
    file = hf_pair / "open_clip_pytorch_model.bin"
    saved = torch.load(file, weights_only=True)
    img, txt, tok = _encoders(hf_pair)
    assert all(torch.equal(v, saved[f"text.{k}"]) for k, v in txt.text.state_dict().items())
    assert img.weights_sha256 == txt.weights_sha256 == _sha(file)
    ids = tok(["Small left pleural effusions"], 64)
    assert ids.shape == (1, 16) and ids[0, :7].tolist() == [WORDS.index(w) for w in
                                                            ("[CLS]", "small", "left", "pleural", "effusion", "##s",
                                                             "[SEP]")]
    assert tok.vocab_size == len(WORDS) and txt.eval()(ids).shape == (1, 16)
    # without the text model's config.json (and no Hugging Face cache of it): said, and how to get it
    bare = tmp_path / "bare"
    shutil.copytree(hf_pair, bare)
    (bare / "config.json").unlink()
    with pytest.raises(ConfigError, match=r"example-org/tiny-pubmedbert.*config\.json.*hf download") as e:
        _encoders(bare)
    assert str(bare) in str(e.value)
    notok = tmp_path / "notok"
    shutil.copytree(hf_pair, notok)
    for f in notok.glob("*"):
        if f.name.startswith(("tokenizer", "vocab", "special_tokens")):
            f.unlink()
    with pytest.raises(ConfigError, match=r"openclip_tokenizer: .*Hugging Face tokenizer .*no vocabulary file.*"
                                          r"hf download") as e:
        get_registry().tokenizer("openclip_tokenizer").build(path=str(notok))
    assert str(notok) in str(e.value)
