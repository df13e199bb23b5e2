"""Encoders: MONAI ResNet / DenseNet for DICOM images (2D) and volumes (3D), GroupNorm so the
sub-batches of present rows (even of 1) behave. The pretrained torchvision / torchxrayvision image
encoders are in ``image_encoders``, the BERT-like text encoder in ``text_encoder``.

Pretrained weights are only ever read from local files (nothing is downloaded):

- ``weights = "file"`` in the model config (the core's loader: SHA-256 recorded in
  ``weights_sha256``) for every encoder; the torchvision / torchxrayvision encoders and
  ``bert_text`` map their library's key layout themselves (``load_pretrained``) and refuse a file
  of another architecture or format, naming the file and what was expected;
- ``xrv_densenet121``: also ``weights_name=`` (torchxrayvision's name, read from its cache folder
  ``~/.torchxrayvision/models_data/``) or ``path=``;
- ``bert_text``: ``path=`` a Hugging Face model folder.

Every encoder that loaded weights exposes ``weights_source`` (the file or folder) and
``weights_sha256`` (the file's SHA-256, or ``pretrained.folder_digest`` of a folder); the
``path_sha256`` option makes a build refuse another file or folder than the one expected.

``blocks()`` (for ``train = "last:N"``) lists each encoder's stages, input to output, the
projection to ``out_dim`` last.
"""

from __future__ import annotations

from torch import Tensor, nn

from mmdomain.models.encoders import cells_as_tokens


def _norm(channels_hint: int = 8) -> tuple:
    return ("group", {"num_groups": channels_hint})


def _with_params(modules: list[nn.Module]) -> list[nn.Module]:
    return [m for m in modules if any(True for _ in m.parameters())]


class MonaiResNetEncoder(nn.Module):
    def __init__(self, modality, out_dim: int = 128, layers: tuple[int, ...] = (1, 1, 1, 1),
                 widths: tuple[int, ...] = (16, 32, 64, 128), groups: int = 8):
        super().__init__()
        from monai.networks.nets import ResNet

        dims = 3 if modality.kind == "volume" else 2
        self.out_dim = out_dim
        self.net = ResNet("basic", list(layers), list(widths), spatial_dims=dims, n_input_channels=modality.channels or 1,
                          conv1_t_stride=2, num_classes=out_dim, norm=_norm(groups))

    def blocks(self) -> list[nn.Module]:
        """The stem (conv1 + its norm), layer1..layer4, the final ``fc`` (projection to out_dim)."""
        n = self.net
        return [nn.Sequential(n.conv1, n.bn1), n.layer1, n.layer2, n.layer3, n.layer4, n.fc]

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def tokens(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """layer4's cells as tokens, ``fc`` applied to each (their mean is ``forward``'s embedding),
        for the token-level fusion head; the stages are MONAI ResNet's own, in its forward's order."""
        n = self.net
        h = n.act(n.bn1(n.conv1(x)))
        if not n.no_max_pool:
            h = n.maxpool(h)
        return cells_as_tokens(n.fc, n.layer4(n.layer3(n.layer2(n.layer1(h)))), dense=False)


class MonaiDenseNetEncoder(nn.Module):
    def __init__(self, modality, out_dim: int = 128, init_features: int = 16, growth_rate: int = 8,
                 blocks: tuple[int, ...] = (2, 2, 2, 2), groups: int = 4):
        super().__init__()
        from monai.networks.nets import DenseNet

        dims = 3 if modality.kind == "volume" else 2
        self.out_dim = out_dim
        self.net = DenseNet(dims, modality.channels or 1, out_dim, init_features=init_features,
                            growth_rate=growth_rate, block_config=tuple(blocks), norm=_norm(groups))

    def blocks(self) -> list[nn.Module]:
        """The stem (conv0 + norm0), each dense block with the transition after it (the last with
        the final norm), the classification layers (projection to out_dim)."""
        f = dict(self.net.features.named_children())
        out: list[nn.Module] = [nn.Sequential(f["conv0"], f["norm0"])]
        i = 1
        while f"denseblock{i}" in f:
            after = f.get(f"transition{i}", f.get("norm5"))
            out.append(nn.Sequential(f[f"denseblock{i}"], *([after] if after is not None else [])))
            i += 1
        return _with_params(out + [self.net.class_layers])

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
