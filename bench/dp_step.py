"""A private (local DP-SGD) training step vs a plain one, per dataset default model, same batch,
same run: how much per-sample gradients cost, with every parameter trained and with the encoders
frozen (only fusion + task private, as with pretrained encoders).

Target (issue #13): a private step <= 2.5x a plain one for every default model. The private step
is the federated layer's own: Opacus hooks when every trainable layer has a rule, else one sample
at a time (which of the two ran is printed).

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
from opacus.grad_sample import GradSampleModule  # noqa: E402
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

    def plain():
        plain_opt.zero_grad(set_to_none=True)
        model.loss(model(batch), batch).backward()
        plain_opt.step()

    hooked = None if local_dp.unsupported_layers(model) else GradSampleModule(model)
    dp = DPOptimizer(torch.optim.AdamW(params, lr=1e-4), noise_multiplier=1.0, max_grad_norm=1.0,
                     expected_batch_size=len(batch))
    state = {"hooked": hooked}

    def private():
        dp.zero_grad(set_to_none=True)
        _, state["hooked"] = local_dp._per_sample_gradients(model, state["hooked"], batch, dp, dp.params)
        local_dp._noised_step(model, dp, dp.params, len(batch), None)

    private()  # the first batch decides between hooks and one sample at a time
    return plain, private, ("opacus hooks" if state["hooked"] is not None else "one sample at a time")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--datasets", default="medical,s2s1_scenes,toy")
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
                plain, private, path = steps(model, batch, settings)
                trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
                bench.compare(f"{dataset}, {label}: private / plain", anchor=("plain", plain),
                              ours=("private", private), items=1, repeats=args.repeats, higher_is_better=False,
                              target="<= 2.5", extra={"per_sample_path": path, "trainable_parameters": trainable})
                print(f"    per-sample gradients: {path}; {trainable:,} trainable parameters", flush=True)
    bench.record("peak RSS", peak_rss_mb=round(peak_rss_mb(), 1), batch=args.batch)
    bench.finish()


if __name__ == "__main__":
    main()
