"""Fusion training step vs the sum of its encoders' forward+backward, same batch, same run.

Target (issue #7): every head <= 1.15x its encoders; cross-attention <= 1.10x late fusion.
Target (issue #14): the token-level head's whole training step <= 1.3x the late-fusion model's at
16x16 image tokens + 128 text tokens (the image encoder at depth 3 on the 128 px image, the same
encoders for both models, side by side in one run).
The batch mixes availability (some samples lack the image, some the text), as real data does.

    ./dev bench fusion_step [--batch 32] [--size 128] [--repeats 7]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from harness import Bench, peak_rss_mb  # noqa: E402

from mmdomain import ModalitySpec, hookimpl  # noqa: E402
from mmdomain.config import ModelConfig  # noqa: E402
from mmdomain.data import Batch  # noqa: E402
from mmdomain.models import build_model  # noqa: E402
from mmdomain.plugins import PluginManager  # noqa: E402

HEADS = ["concat", "late", "gated", "cross_attention", "hemis"]


class BenchModalities:
    @hookimpl
    def register_modalities(self, register):
        register(ModalitySpec("image", "image", channels=1))
        register(ModalitySpec("text", "text"))


def make_batch(n: int, size: int, tokens: int) -> Batch:
    g = torch.Generator().manual_seed(0)
    present_img = torch.rand(n, generator=g) > 0.15
    present_txt = (torch.rand(n, generator=g) > 0.15) | ~present_img
    image = torch.randn(n, 1, size, size, generator=g) * present_img[:, None, None, None]
    ids = torch.randint(1, 4000, (n, tokens), generator=g) * present_txt[:, None]
    return Batch({"image": image, "text": ids}, {"image": present_img, "text": present_txt},
                 torch.randint(0, 4, (n,), generator=g))


def model_for(registry, head: str, depth: int = 4, max_text_length: int = 128):
    # the token-level head at its own defaults (dim 64, no MLP): what a user gets from `fusion = "token_attention"`
    options = {"dim": 256} if head == "cross_attention" else {} if head == "token_attention" else {"out_dim": 256}
    cfg = ModelConfig(modalities=["image", "text"],
                      encoders={"image": {"name": "cnn", "options": {"out_dim": 256, "width": 32, "depth": depth}},
                                "text": {"name": "tiny_transformer", "options": {"out_dim": 256}}},
                      tokenizers={"text": {"name": "hashing", "options": {"buckets": 4095}}},
                      fusion={"name": head, "options": options}, max_text_length=max_text_length,
                      task={"name": "multiclass", "options": {"num_classes": 4}})
    torch.manual_seed(0)
    return build_model(cfg, registry)


def training_step(model, batch: Batch):
    """One forward + loss + backward of ``model`` on ``batch``, gradients cleared (the timed unit)."""
    def run():
        out = model(batch)
        model.loss(out, batch).backward()
        model.zero_grad(set_to_none=True)
    return run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    manager = PluginManager(load_entry_points=False)
    manager.register(BenchModalities(), name="bench")
    registry = manager.registry
    batch = make_batch(args.batch, args.size, args.tokens)
    bench = Bench("fusion_step", "steps/s")
    medians = {}
    for head in HEADS:
        model = model_for(registry, head).train()

        def encoders_only(model=model):
            emb = model.encode(batch)
            sum(e.float().pow(2).mean() for e in emb.values()).backward()
            model.zero_grad(set_to_none=True)

        row = bench.compare(f"{head}: step / encoders", anchor=("encoders", encoders_only),
                            ours=(head, training_step(model, batch)),
                            items=1, repeats=args.repeats, higher_is_better=False, target="<= 1.15")
        medians[head] = row["ours_value"]
    bench.record("cross_attention / late (step time)", ratio=round(medians["cross_attention"] / medians["late"], 3),
                 target="<= 1.10")
    tokens_batch = make_batch(args.batch, args.size, 128)
    token_model = model_for(registry, "token_attention", depth=3).train()
    late_model = model_for(registry, "late", depth=3).train()
    cells = token_model.encode_tokens(token_model.tokenize(tokens_batch))[1]["image"][0].shape[1]
    bench.compare(f"token_attention / late (step, {cells} image + 128 text tokens)",
                  anchor=("late", training_step(late_model, tokens_batch)),
                  ours=("token_attention", training_step(token_model, tokens_batch)), items=1,
                  repeats=args.repeats, higher_is_better=False, target="<= 1.30")
    bench.record("peak RSS of training steps", peak_rss_mb=round(peak_rss_mb(), 1),
                 batch=args.batch, image=f"1x{args.size}x{args.size}", tokens=args.tokens)
    bench.finish()


if __name__ == "__main__":
    main()
