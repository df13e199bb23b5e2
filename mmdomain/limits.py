"""Ceilings on what a config file or a checkpoint header may ask for, in one place.

Checked before anything is allocated, so a hostile or corrupted file (``out_dim = 10**9``, a
50,000-deep list, a YAML alias bomb) is a clear error, not a multi-GB allocation or a hang.
The ceilings sit far above every real model the plugins build: BERT-base (vocabulary 30,522,
hidden 768, 512 positions), XLM-R-large's 250,002 x 1,024 embedding, DenseNet-121/161
(blocks 6-12-24-16 / 6-12-36-24), ResNet-152 (layers 3-8-36-3), 224-pixel inputs.

- ``SIZE_LIMITS``: integer options (or lists of them) of any component, by option name;
  each must be an int in ``[1, ceiling]``.
- ``LENGTH_LIMITS``: list options, by name: at most that many entries.
- ``TENSOR_ELEMENTS`` / ``COMPONENT_ELEMENTS``: what one tensor, and all tensors one component
  creates, may hold while it is built (``allocation_guard``); this catches products of
  in-range sizes (``out_dim = 65536`` with ``num_classes = 65536``) and any plugin option name
  not listed here.
- ``CONFIG_*``: config files (size, nesting, nodes after YAML aliases are expanded).
- ``DICOM_*``, ``SR_*``, ``REPORT_*``: medical files (declared image sizes, inflated bytes, file
  and report sizes), checked by the medical plugin before it decodes, inflates or parses.
"""

from __future__ import annotations

import contextlib
import math
import operator
from typing import Any, Callable, Iterable, Iterator, Mapping

DIM = 65_536  # feature widths, channels, classes / labels
COUNT = 1_024  # layers, blocks, heads, depth
VOCAB = 4_194_304  # 2**22: hashing buckets, vocabulary sizes
TOKENS = 65_536  # sequence lengths
PIXELS = 16_384  # image / patch side lengths

SIZE_LIMITS: dict[str, int] = {
    **dict.fromkeys(("out_dim", "width", "widths", "dim", "hidden", "hidden_size", "embed_dim", "proj_dim",
                     "in_channels", "init_features", "growth_rate", "groups", "num_classes", "num_labels"), DIM),
    **dict.fromkeys(("depth", "layers", "blocks", "heads"), COUNT),
    **dict.fromkeys(("buckets", "max_size"), VOCAB),
    "vocab_size": VOCAB + 1_024,  # a tokenizer's buckets / words plus its special tokens
    **dict.fromkeys(("max_length", "max_text_length"), TOKENS),
    **dict.fromkeys(("size", "image_size", "patch_size"), PIXELS),
}
LENGTH_LIMITS: dict[str, int] = {"vocab": VOCAB, "labels": DIM, "pos_weight": DIM}
#: dataset options that size every sample (checked in ``DataConfig.options``)
DATA_SIZE_KEYS = ("image_size", "patch_size")

TENSOR_ELEMENTS = 2**28  # 268M elements (1 GiB of float32); XLM-R-large's embedding is 256M
COMPONENT_ELEMENTS = 2**30  # 1.07G elements (4 GiB of float32); BERT-large has 340M parameters

CONFIG_BYTES = 1_048_576  # 1 MiB
CONFIG_DEPTH = 64  # nested tables / lists
CONFIG_NODES = 1_000_000  # values after YAML aliases and merge keys are expanded
CHECKPOINT_HEADER_BYTES = 100_000_000  # safetensors' own ceiling on its JSON header
CHECKPOINT_CONFIG_NODES = 2 * VOCAB  # values in a header's model config (a fitted vocabulary is one per word)

# -- medical files (DICOM images and reports), checked before anything is decoded, inflated or parsed ------
# Read at call time (``mmdomain.limits.DICOM_FRAMES = ...`` raises one for a site). A real chest radiograph is
# ~3000 x 3000 (a long-leg one ~7000 x 3500, a mammogram 4096 x 5900); a 512 x 512 x 1024 CT volume is
# 2**28 values, at the decoded-size ceiling.
DICOM_FRAME_PIXELS = 2**26  # Rows x Columns of one frame (8192 x 8192)
DICOM_FRAMES = 65_536  # Number of Frames
DICOM_DECODED_BYTES = 2**30  # the decoded image as float32 (what the reader returns): 2**28 values
DICOM_INFLATED_BYTES = 2**29  # a Deflated Explicit VR Little Endian data set, once inflated
DICOM_FILE_BYTES = 2**30 + 2**24  # a DICOM file read into memory (the largest native image plus its header)
SR_FILE_BYTES = 2**24  # a DICOM structured report (reports are kilobytes)
SR_ITEMS = 100_000  # content items walked in one structured report
REPORT_FILE_BYTES = 2**20  # a text report file, or a manifest's report text (MIMIC-CXR's are < 10 KB)
REPORT_XML_BYTES = 2**22  # an OpenI XML report file
REPORT_XML_NODES = 100_000  # markup ("<") in one XML report, counted before it is parsed


class LimitError(ValueError):
    """A value beyond a ceiling here; callers turn it into ConfigError / CheckpointError."""


def check_options(options: Mapping[str, Any], where: str = "", names: Iterable[str] | None = None) -> None:
    """Raise ``LimitError`` for a size option out of ``[1, ceiling]`` or a list option too long.
    ``names`` restricts the check to those keys (default: every key in ``SIZE_LIMITS``)."""
    keys = SIZE_LIMITS if names is None else {k: SIZE_LIMITS[k] for k in names}
    for key, value in options.items():
        at = f"{where}: {key}" if where else str(key)
        if key in keys and value is not None:
            ceiling = keys[key]
            values = value if isinstance(value, (list, tuple)) else [value]
            if isinstance(value, (list, tuple)) and len(values) > COUNT:
                raise LimitError(f"{at} has {len(values)} entries; at most {COUNT}")
            for v in values:
                if isinstance(v, bool) or not isinstance(v, int):
                    raise LimitError(f"{at} must be a positive integer, got {_short(v)}")
                if not 1 <= v <= ceiling:
                    raise LimitError(f"{at} = {_short(v)} is out of range; it must be between 1 and {ceiling:,}")
        elif names is None and key in LENGTH_LIMITS and isinstance(value, (list, tuple)) \
                and len(value) > LENGTH_LIMITS[key]:
            raise LimitError(f"{at} has {len(value):,} entries; at most {LENGTH_LIMITS[key]:,}")


def _short(value: Any, n: int = 60) -> str:
    import reprlib

    text = reprlib.repr(value)
    return text if len(text) <= n else text[: n - 3] + "..."


def extent(root: Any, children: Callable[[Any], Iterable[Any]], *, max_depth: int = CONFIG_DEPTH,
           max_nodes: int = CONFIG_NODES) -> tuple[int, int]:
    """``(nodes, depth)`` of a tree whose nodes may be shared (YAML aliases), counting a shared
    node once per place it appears, without ever expanding it: each distinct node is visited
    once. Raises ``LimitError`` beyond ``max_depth`` / ``max_nodes`` or on a cycle."""
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            on_path.discard(key)
            kids = list(children(node))
            size[key] = 1 + sum(size[id(k)] for k in kids)
            depth[key] = 1 + max((depth[id(k)] for k in kids), default=0)
            if depth[key] > max_depth:
                raise LimitError(f"nests deeper than {max_depth} levels")
            if size[key] > max_nodes:
                raise LimitError(f"holds more than {max_nodes:,} values once its aliases are expanded")
            continue
        if key in size:
            continue
        if len(on_path) >= max_depth:
            raise LimitError(f"nests deeper than {max_depth} levels")
        on_path.add(key)
        stack.append((node, True))
        for kid in children(node):
            if id(kid) in on_path:
                raise LimitError("refers to itself (a recursive alias)")
            if id(kid) not in size:
                stack.append((kid, False))
    return size[id(root)], depth[id(root)]


def data_children(node: Any) -> Iterable[Any]:
    """Children of parsed JSON / TOML / YAML data, for ``extent``."""
    if isinstance(node, dict):
        return [*node.keys(), *node.values()]
    if isinstance(node, (list, tuple)):
        return node
    return ()


# -- allocations while a component is built -----------------------------------------------------------------

_FACTORIES = ("empty", "zeros", "ones", "rand", "randn", "full", "eye")


def _numel(name: str, args: tuple, kwargs: dict) -> int | None:
    if name == "eye":
        n = args[0] if args else kwargs.get("n")
        m = args[1] if len(args) > 1 else kwargs.get("m")
        size: Any = (n,) if m is None else (n, m)
    elif name == "full":
        size = kwargs.get("size", args[0] if args else ())
    else:
        size = kwargs.get("size")
        if size is None:
            size = args[0] if len(args) == 1 and isinstance(args[0], (list, tuple)) else args
    try:
        dims = [operator.index(d) for d in (size if isinstance(size, (list, tuple)) else (size,))]
    except TypeError:
        return None  # symbolic or unusual sizes: left to torch
    if any(d < 0 for d in dims):
        raise LimitError(f"a negative size {tuple(dims)}")
    return math.prod(dims)


@contextlib.contextmanager
def allocation_guard(where: str, *, tensor_elements: int = TENSOR_ELEMENTS,
                     total_elements: int = COMPONENT_ELEMENTS) -> Iterator[None]:
    """Refuse, before torch allocates it, a tensor (or a running total of tensors) created by
    ``torch.empty/zeros/ones/rand/randn/full/eye`` inside the block beyond the ceilings: what
    ``nn.Linear``, ``nn.Embedding``, convolutions and norms allocate their weights with.
    Raises ``LimitError`` naming ``where``."""
    import torch
    from torch.overrides import TorchFunctionMode

    factories = {getattr(torch, n): n for n in _FACTORIES}
    total = 0

    class _Guard(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            nonlocal total
            kwargs = kwargs or {}
            name = factories.get(func)
            if name is not None:
                try:
                    n = _numel(name, args, kwargs)
                except LimitError as exc:
                    raise LimitError(f"{where}: {exc}") from None
                if n is not None:
                    if n > tensor_elements:
                        raise LimitError(f"{where} would allocate a tensor of {n:,} elements; the ceiling is "
                                         f"{tensor_elements:,} (a size option far too large?)")
                    total += n
                    if total > total_elements:
                        raise LimitError(f"{where} would allocate more than {total_elements:,} elements in all "
                                         f"(a size option far too large?)")
            return func(*args, **kwargs)

    with _Guard():
        yield
