"""The medical plugin: everything it contributes, through mmdomain's hooks.

The callbacks import the plugin's modules only when they are called: loading this module
(the registry loads every plugin) must not pull in pydicom, MONAI or transformers.
"""

from __future__ import annotations

from pathlib import Path

from mmdomain import (DatasetSpec, EncoderSpec, ModalitySpec, SyntheticSpec, TokenizerSpec, hookimpl)
from mmdomain.data import declared_options
from mmdomain.registry import lazy

from .facts import CHEXPERT_LABELS, DICOM_SUFFIXES

# Federated-safe default: the core ``hashing`` tokenizer gives identical ids at every site.
DEFAULT_MODEL = {
    "modalities": ["dicom_image", "report"],
    "encoders": {"dicom_image": {"name": "monai_resnet", "options": {"out_dim": 128}},
                 "report": {"name": "bert_text", "options": {"out_dim": 128}}},
    "tokenizers": {"report": {"name": "hashing", "options": {"buckets": 4096}}},
    "fusion": {"name": "concat", "options": {"out_dim": 128}},
    "task": {"name": "multilabel", "options": {"num_labels": len(CHEXPERT_LABELS), "labels": list(CHEXPERT_LABELS)}},
    "modality_dropout": 0.1,
    "max_text_length": 64,
    # fusion beats its best single modality at the demo's hospitals with these (issue #14;
    # bench/fusion_balance.py: alpha chosen on a held-out generator seed)
    "balance": {"aux_weight": 1.0, "modulation": "ogm-ge", "alpha": 4.0},
}


def _load_image(path: Path):
    from .dicom_read import image_tensor

    return image_tensor(Path(path), size=128)


def _load_volume(path: Path):
    from .dicom_read import read_dicom, volume_tensor
    from .series import load_series

    path = Path(path)
    return volume_tensor(load_series(path) if path.is_dir() else read_dicom(path))


def _load_report(path: Path) -> str:
    from .reports import read_text_report, scrub_text
    from .sr import read_sr

    from .dicom_parse import regular_file

    path = Path(path)
    if path.suffix.lower() not in DICOM_SUFFIXES:
        regular_file(path, "REPORT_FILE_BYTES")  # a FIFO, device or huge file: refused before it is opened
    return scrub_text(read_sr(path) if path.suffix.lower() in DICOM_SUFFIXES else read_text_report(path))


def _build_dataset(root, split="train", **options):
    from .dataset import MedicalDataset

    return MedicalDataset(root, split, **{**declared_options(root), **options})


def _describe(dataset):
    from .dataset import describe

    return describe(dataset)


def _lazy(module: str, name: str):
    """This plugin's ``module``'s ``name``, imported when first called (the core's ``lazy``)."""
    return lazy(f"{__package__}.{module}:{name}")


_resnet = _lazy("encoders", "MonaiResNetEncoder")
_densenet = _lazy("encoders", "MonaiDenseNetEncoder")
_bert = _lazy("text_encoder", "BertTextEncoder")
#: torchvision ResNet / DenseNet for torchvision's ImageNet weight files (``weights = "resnet18-f37072fd.pth"``)
_tv_resnet = _lazy("image_encoders", "TorchvisionResNetEncoder")
_tv_densenet = _lazy("image_encoders", "TorchvisionDenseNetEncoder")
#: torchxrayvision's DenseNet-121 chest X-ray weights (its cache folder, a file, or ``weights=``)
_xrv_densenet = _lazy("image_encoders", "XrvDenseNetEncoder")
_hf_tokenizer = _lazy("hf_tokenizer", "HFTokenizer")
#: the image and text towers of one open_clip pair, and its tokenizer, from one local folder (path=)
_openclip_image = _lazy("openclip_encoders", "OpenClipImageEncoder")
_openclip_text = _lazy("openclip_encoders", "OpenClipTextEncoder")
_openclip_tokenizer = _lazy("openclip_encoders", "OpenClipTokenizer")


def _wordpiece(**options):
    from .tokenizer import WordPieceTokenizer

    return WordPieceTokenizer(**options)


def _wordpiece_fit(texts, **options):
    from .tokenizer import WordPieceTokenizer

    return WordPieceTokenizer.fit(texts, **options)


@hookimpl
def register_modalities(register):
    register(ModalitySpec("dicom_image", "image", channels=1, loader=_load_image, extensions=DICOM_SUFFIXES,
                          description="2D DICOM image (CR/DX), de-identified, [0,1], MONOCHROME1 inverted",
                          # a chest film is read in one orientation: the heart is on the left, effusions
                          # are basal, and a crop that loses the costophrenic angles loses the finding
                          views={"flip": False, "rotate90": False, "crop_scale": 0.8}))
    register(ModalitySpec("dicom_volume", "volume", channels=1, loader=_load_volume,
                          description="CT/MR series or multi-frame DICOM as [1, D, H, W]"))
    register(ModalitySpec("report", "text", loader=_load_report,
                          description="radiology report text, PHI-scrubbed; sections chosen by report_sections"))


@hookimpl
def register_encoders(register):
    register(EncoderSpec("monai_resnet", ("image", "volume"), _resnet, out_dim=128, supports_tokens=True,
                         description="MONAI ResNet (basic blocks 1-1-1-1, widths 16..128, GroupNorm), 2D or 3D"))
    register(EncoderSpec("monai_densenet", ("image", "volume"), _densenet, out_dim=128,
                         description="small MONAI DenseNet (GroupNorm), 2D or 3D"))
    register(EncoderSpec("bert_text", ("text",), _bert, out_dim=128, supports_tokens=True,
                         description="BERT-like encoder: local Hugging Face folder via path= (its tokenizer: "
                                     "hf_tokenizer), else tiny random BertConfig (2x128); pooling mean|cls, "
                                     "max_length; weights= a HF state dict; blocks: embeddings, layers, projection"))
    register(EncoderSpec("torchvision_resnet", ("image",), _tv_resnet, out_dim=128,
                         description="torchvision ResNet (arch resnet18|34|50|101|152) from torchvision's ImageNet "
                                     "weight file (weights=); grey input via the summed RGB conv (grey=sum|mean), "
                                     "ImageNet normalisation inside, BatchNorm statistics frozen (bn=frozen|batch), "
                                     "projection to out_dim"))
    register(EncoderSpec("torchvision_densenet", ("image",), _tv_densenet, out_dim=128,
                         description="torchvision DenseNet (arch densenet121|161|169|201) from torchvision's "
                                     "ImageNet weight file (weights=, old norm.1 keys too); grey, normalisation, "
                                     "bn as torchvision_resnet"))
    register(EncoderSpec("xrv_densenet121", ("image",), _xrv_densenet, out_dim=128,
                         description="torchxrayvision's DenseNet-121 chest X-ray weights, without torchxrayvision: "
                                     "weights_name= from ~/.torchxrayvision/models_data/, path=, or weights= a state "
                                     "dict; inputs scaled to [-1024, 1024] and resized to 224"))
    register(EncoderSpec("openclip_image", ("image",), _openclip_image, out_dim=128,
                         description="open_clip image tower of a local model folder (path=: open_clip_config.json + "
                                     "open_clip_model.safetensors / open_clip_pytorch_model.bin, the whole pair "
                                     "checked); grey as RGB, the folder's resize and mean/std inside, projection to "
                                     "out_dim (project=false: the pair's own space); path_sha256; else tiny random "
                                     "ViT"))
    register(EncoderSpec("openclip_text", ("text",), _openclip_text, out_dim=128,
                         description="open_clip text tower of the same local folder (path=; its tokenizer: "
                                     "openclip_tokenizer), same weights_sha256 as openclip_image; ids cut / padded to "
                                     "its context_length; projection to out_dim; else tiny random text transformer"))


@hookimpl
def register_tokenizers(register):
    register(TokenizerSpec("wordpiece", _wordpiece, fit=_wordpiece_fit,
                           description="WordPiece fitted on the site's scrubbed reports, or path= a local tokenizer"))
    register(TokenizerSpec("hf_tokenizer", _hf_tokenizer,
                           description="a local Hugging Face model folder's own tokenizer (path=; AutoTokenizer, "
                                       "local files only): the vocabulary and special tokens of bert_text's model"))
    register(TokenizerSpec("openclip_tokenizer", _openclip_tokenizer,
                           description="the tokenizer open_clip uses for a local model folder (path=; CLIP's BPE "
                                       "shipped with open_clip, or the folder's Hugging Face tokenizer, local files "
                                       "only): the ids of openclip_text's model, end token kept when cut"))


@hookimpl
def register_datasets(register):
    register(DatasetSpec("medical", ("dicom_image", "report"), _build_dataset, default_model=DEFAULT_MODEL,
                         describe=_describe,
                         description="DICOM chest X-ray + report per study (MIMIC-CXR layout, SR, OpenI XML, "
                                     "manifest); CheXpert 14 labels; options report_sections, uncertain, "
                                     "image_size, window, cache, burned_in"))


@hookimpl
def register_synthetic(register):
    register(SyntheticSpec("medical", "medical", _lazy("synthetic", "generate"), quick_options={"studies_per_site": 24},
                           demo_options={"studies_per_site": 96}, demo_public_options={"studies_per_site": 400},
                           large_options={"studies_per_site": 2000, "image_size": 32, "coupling": 0.8,
                                          "sign_strength": 0.4},
                           description="seeded chest X-ray sites: real DICOM (vendor mix, RLE/J2K), "
                                       "MIMIC-style reports with fake PHI, labels needing image AND text"))


@hookimpl
def detect_modality(path: Path):
    path = Path(path)
    if path.is_dir():
        return None
    if path.suffix.lower() in DICOM_SUFFIXES:
        try:
            from .dicom_parse import quiet_validation, read_header
            from .sr import is_sr

            with quiet_validation():  # a bad VR surfaces in is_sr / NumberOfFrames, not in the read
                ds = read_header(path, stop_before_pixels=True)
                if is_sr(ds):
                    return "report"
                return "dicom_volume" if int(ds.get("NumberOfFrames", 1) or 1) > 1 else "dicom_image"
        except Exception:  # noqa: BLE001 - not ours
            return None
    return None


@hookimpl
def register_commands(cli):
    from .commands import medical

    cli.add_command(medical)
