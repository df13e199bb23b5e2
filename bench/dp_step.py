"""A private (local DP-SGD) training step vs a plain one, per dataset default model, same batch,
same run: how much per-sample gradients cost, with every parameter trained and with the encoders
frozen (only fusion + task private, as with pretrained encoders).

Target (issue #13): a private step <= 2.5x a plain one for every default model. The private step
is the federated layer's own (``local_dp.PerSampleGradients``): Opacus hooks when every trainable
layer has a rule and the hooks run, else torch.func's vmap over the whole model, else one sample at a
time (which ran is printed). ``--paths`` also times each path that can run on the model.

    ./dev bench dp_step [--batch 32] [--repeats 5] [--datasets medical,s2s1_scenes,toy]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from harness import Bench, peak_rss_mb  # noqa: E402

from mmdomain.data import Collate  # noqa: E402
from mmdomain.plugins import get_registry  # noqa: E402
from mmdomain_federated import local_dp, task  # noqa: E402
from mmdomain_federated.settings import Settings  # noqa: E402
from opacus.optimizers import DPOptimizer  # noqa: E402


def site_batch(registry, dataset: str, root: Path, n: int):
    gen = registry.synthetic_for(dataset)
    site = gen.generate(root / dataset, num_sites=1, seed=0, **gen.quick_options)[0]
    ds = registry.dataset(dataset).build(site, split="all") if dataset != "s2s1_scenes" else \
        registry.dataset(dataset).build(site, split="train")
    samples = [ds[i % len(ds)] for i in range(n)]
    return samples


def steps(model, batch, settings):
    """(plain step, private step, which per-sample path) on ``batch``."""
    params = [p for p in model.parameters() if p.requires_grad]
    plain_opt = torch.optim.AdamW(params, lr=1e-4)

    hooks = {"on": lambda: None, "off": lambda: None}

    def plain():
        hooks["off"]()  # the plain step runs without Opacus' hooks
        plain_opt.zero_grad(set_to_none=True)
        model.loss(model(batch), batch).backward()
        plain_opt.step()
        hooks["on"]()

    dp = DPOptimizer(torch.optim.AdamW(params, lr=1e-4), noise_multiplier=1.0, max_grad_norm=1.0,
                     expected_batch_size=len(batch))
    per_sample = local_dp.PerSampleGradients(model)

    def private():
        dp.zero_grad(set_to_none=True)
        per_sample(batch, dp, dp.params)
        local_dp._noised_step(model, dp, dp.params, len(batch), None)

    private()  # the first batch settles the path
    if per_sample.hooked is not None:
        hooks["off"], hooks["on"] = per_sample.hooked.disable_hooks, per_sample.hooked.enable_hooks
    return plain, private, per_sample.path, dp, hooks


def forced(model, batch, dp, path: str, hooks):
    """A private step by ``path`` alone (``vmap`` or ``one-at-a-time``), for the side-by-side rows."""
    def step():
        hooks["off"]()
        try:
            dp.zero_grad(set_to_none=True)
            if path == "vmap":
                local_dp.vectorised(model, batch, dp.params)
            else:
                local_dp.one_sample_at_a_time(model, batch, dp.params)
            local_dp._noised_step(model, dp, dp.params, len(batch), None)
        finally:
            hooks["on"]()
    return step


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--datasets", default="medical,s2s1_scenes,toy")
    ap.add_argument("--paths", action="store_true", help="also time vmap and one-at-a-time against the plain step")
    args = ap.parse_args()
    registry = get_registry()
    bench = Bench("dp_step", "s/step")
    with tempfile.TemporaryDirectory(prefix="dp-step-") as tmp:
        for dataset in args.datasets.split(","):
            samples = site_batch(registry, dataset, Path(tmp), args.batch)
            modalities = list(registry.dataset(dataset).default_model["modalities"])
            for label, train in (("all parameters", ""), ("encoders frozen", ";".join(f"{m}=none" for m in modalities))):
                settings = Settings.from_run_config({"dataset": dataset, "local-dp": True, "encoder-train": train})
                model = task.build(settings, registry).train()
                batch = model.tokenize(Collate(model.modalities)(samples))
                plain, private, path, dp, hooks = steps(model, batch, settings)
                trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
                bench.compare(f"{dataset}, {label}: private / plain", anchor=("plain", plain),
                              ours=("private", private), items=1, repeats=args.repeats, higher_is_better=False,
                              target="<= 2.5", extra={"per_sample_path": path, "trainable_parameters": trainable})
                print(f"    per-sample gradients: {path}; {trainable:,} trainable parameters", flush=True)
                for other in (("vmap", "one-at-a-time") if args.paths else ()):
                    try:
                        forced(model, batch, dp, other, hooks)()
                    except local_dp.NotVectorisable as exc:
                        print(f"    {other}: cannot run on this model ({exc})", flush=True)
                        continue
                    if other != path:
                        bench.compare(f"{dataset}, {label}, {other} forced: private / plain", anchor=("plain", plain),
                                      ours=(other, forced(model, batch, dp, other, hooks)), items=1, repeats=args.repeats,
                                      higher_is_better=False, extra={"per_sample_path": other})
    bench.record("peak RSS", peak_rss_mb=round(peak_rss_mb(), 1), batch=args.batch)
    bench.finish()


if __name__ == "__main__":
    main()
