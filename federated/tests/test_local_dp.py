from mmdomain_federated.inprocess import LocalGrid
from mmdomain_federated.server_app import run_server


def test_local_dp_sgd_reports_epsilon_per_site(settings_for, tmp_path):
    s = settings_for(num_server_rounds=1, local_dp=True, local_noise_multiplier=1.0, local_clip_norm=1.0,
                     max_steps=2, batch_size=8)
    summary = run_server(LocalGrid(2, s.as_run_config()), s, tmp_path)
    assert summary["rounds"] == 1
    eps = summary["history"][0]["local-epsilon"]
    assert len(eps) == 2 and all(0 < e < 100 for e in eps.values())


@__import__("pytest").mark.gpu
def test_gpu_path_skips_cleanly_without_cuda(settings_for, registry):
    import pytest
    import torch
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU here")
    from mmdomain_federated import task
    s = settings_for(device="cuda")
    m = task.build(s, registry)
    data = task.load_site(s, {"partition-id": 0, "num-partitions": 2}, registry, "train")
    assert task.train_site(m, data, s)["train-samples"] > 0
    assert next(m.parameters()).is_cuda
