"""The medical default model's modality-balance remedies (issue #14) in federated runs: on for
plain training, dropped where they cannot apply (contrastive pretraining has no target; gradient
modulation couples a batch's samples, which local DP-SGD forbids)."""

from mmdomain_federated import task
from mmdomain_federated.groups import param_group
from mmdomain_federated.settings import Settings


def _config(registry, **extra):
    return task.model_config(Settings.from_run_config({"dataset": "medical", "readiness": False, **extra}), registry)


def test_default_medical_model_balances_except_where_it_cannot(registry):
    plain = _config(registry)
    assert plain.balance.aux_weight > 0 and plain.balance.modulation == "ogm-ge"
    for extra in ({"local-dp": True}, {"task": "contrastive"}):
        assert not _config(registry, **extra).balance.active, extra


def test_each_aux_head_travels_with_its_modality(registry):
    model = task.build(Settings.from_run_config({"dataset": "medical", "readiness": False}), registry)
    aux = [k for k in task.shared_keys(model) if k.startswith("aux_heads.")]
    assert {param_group(k) for k in aux} == {"encoder:dicom_image", "encoder:report"}
