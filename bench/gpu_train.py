"""bf16 training throughput and model FLOP utilisation (MFU) of a fusion model on a GPU.

Skips cleanly (exit 0, a clear line) where no CUDA GPU is present. Throughput
configuration: a large batch, inputs decoded once and kept on the GPU (the cached-data
path), augmentation (flips + noise) done on the GPU, bf16 autocast, fused AdamW.
MFU = achieved model FLOP/s (counted with torch.utils.flop_counter, fwd+bwd) / peak
dense bf16 FLOP/s of the card (--peak-tflops, default 989 for H100/H200 SXM).

    ./dev bench gpu_train [--batch 256] [--steps 30] [--compile]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from harness import Bench  # noqa: E402
from fusion_step import BenchModalities, make_batch  # noqa: E402

from mmdomain.config import ModelConfig  # noqa: E402
from mmdomain.models import build_model  # noqa: E402
from mmdomain.plugins import PluginManager  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--peak-tflops", type=float, default=989.0)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--fusion", default="cross_attention")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("gpu_train: skipped, no CUDA GPU on this machine (CPU training is measured by fusion_step)")
        return 0
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    manager = PluginManager(load_entry_points=False)
    manager.register(BenchModalities(), name="bench")
    cfg = ModelConfig(modalities=["image", "text"],
                      encoders={"image": {"name": "cnn", "options": {"out_dim": 512, "width": 64, "depth": 5}},
                                "text": {"name": "tiny_transformer", "options": {"out_dim": 512, "layers": 4,
                                                                                  "heads": 8}}},
                      tokenizers={"text": {"name": "hashing", "options": {"buckets": 32767}}},
                      fusion={"name": args.fusion, "options": {"dim": 512} if args.fusion == "cross_attention"
                              else {"out_dim": 512}},
                      task={"name": "multiclass", "options": {"num_classes": 14}})
    device = torch.device("cuda")
    model = build_model(cfg, manager.registry).to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    batch = make_batch(args.batch, args.size, 128).to(device)  # decoded once, cached on the GPU
    step_model = torch.compile(model) if args.compile else model

    def step():
        img = batch.inputs["image"]
        flip = torch.rand(img.shape[0], device=device) < 0.5  # GPU augmentation
        img = torch.where(flip[:, None, None, None], img.flip(-1), img) + 0.01 * torch.randn_like(img)
        b = type(batch)({**batch.inputs, "image": img.contiguous(memory_format=torch.channels_last)},
                        batch.present, batch.target)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = step_model(b)
            loss = model.loss(out, b)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    from torch.utils.flop_counter import FlopCounterMode

    for _ in range(3):
        step()
    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / args.steps
    bench = Bench("gpu_train", "samples/s")
    mfu = flops / dt / (args.peak_tflops * 1e12)
    bench.record("bf16 training", samples_per_s=round(args.batch / dt, 1), step_ms=round(dt * 1e3, 2),
                 tflops=round(flops / dt / 1e12, 1), mfu=round(mfu, 3), target_mfu=">= 0.40",
                 peak_gpu_mem_gb=round(torch.cuda.max_memory_allocated() / 2**30, 2),
                 gpu=torch.cuda.get_device_name(0), batch=args.batch, compile=args.compile)
    bench.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())
