"""The S2 and S1 encoders' token sequences (EncoderSpec.supports_tokens): patch cells for the
token-level fusion head, one S1 cell able to attend to every S2 cell."""

import torch

from mmdomain import get_registry
from mmdomain.config import ModelConfig, parse
from mmdomain.data.sample import Batch
from mmdomain.models import build_model
from mmdomain_remote_sensing.plugin import DEFAULT_MODEL


def test_s2_and_s1_cells_pool_to_the_embeddings_and_feed_the_token_head():
    registry = get_registry()
    torch.manual_seed(0)
    for name, modality, channels in (("s2_cnn", "s2", 12), ("sar_cnn", "s1", 2)):
        enc = registry.encoder(name).build(registry.modality(modality)).eval()
        x = torch.randn(2, channels, 32, 32) * 5 - (15 if modality == "s1" else -50)
        with torch.no_grad():
            seq, valid = enc.tokens(x)
            assert seq.shape == (2, 16, enc.out_dim) and valid.all()  # 32 px, 3 stride-2 stages: 4x4 cells
            torch.testing.assert_close(seq.mean(1), enc(x), rtol=1e-4, atol=1e-5)
    data = {**DEFAULT_MODEL, "fusion": {"name": "token_attention", "options": {"dim": 32, "heads": 4}}}
    model = build_model(parse(ModelConfig, data), registry).eval()
    has_s1 = torch.tensor([True, False, True])
    batch = Batch({"s2": torch.rand(3, 12, 32, 32) * 3000, "s1": torch.randn(3, 2, 32, 32) * 3 - 15},
                  {"s2": torch.tensor([True, True, False]), "s1": has_s1}, None)
    model.fusion.record_attention = True
    with torch.no_grad():
        out = model(batch).output
    assert torch.isfinite(out).all()
    maps = model.fusion.last_attention
    assert maps["s1->s2"].shape == (3, 16, 16) and torch.all(maps["s2->s1"][~has_s1] == 0)
