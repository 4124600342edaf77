"""``model.precision`` resolved once per device (``ofgr_core.models.precision``), and part of the feature key."""

from __future__ import annotations

import pytest
import torch

from ofgr_core.common.errors import ConfigError
from ofgr_core.models.precision import precision_name, resolve_autocast

CPU = torch.device("cpu")


@pytest.mark.parametrize(("precision", "amp", "want"), [
    ("fp32", "on", None),
    ("auto", "auto", None),  # CPU: float32 unless asked
    ("auto", "off", None),
    ("auto", "on", torch.bfloat16),
    ("bf16", "auto", torch.bfloat16),
    ("bf16", "on", torch.bfloat16),
])
def test_cpu_resolution(precision, amp, want):
    assert resolve_autocast(precision, amp, CPU) == want


def test_explicit_half_precision_with_amp_off_is_refused():
    with pytest.raises(ConfigError, match="needs autocast but train.amp=off"):
        resolve_autocast("bf16", "off", CPU)


def test_cuda_auto_follows_the_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_autocast("auto", "auto", torch.device("cuda")) == torch.float16
    assert resolve_autocast("fp16", "auto", torch.device("cuda")) == torch.float16
    with pytest.raises(ConfigError, match="no bfloat16"):
        resolve_autocast("bf16", "auto", torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_autocast("auto", "auto", torch.device("cuda")) == torch.bfloat16
    assert resolve_autocast("fp16", "on", torch.device("cuda")) == torch.float16  # as given, not bf16


def test_the_feature_key_names_the_extraction_dtype():
    from ofgr_core.models.factory import create_model
    from ofgr_core.models.timm.config import TimmModelConfig

    torch.manual_seed(0)
    model = create_model(TimmModelConfig(name="test_resnet", freeze="all", head="none"), image_size=32)
    fp32 = model.feature_key()
    model.autocast_dtype = torch.bfloat16
    bf16 = model.feature_key()
    assert fp32["autocast"] == precision_name(None) == "fp32" and bf16["autocast"] == "bf16"
    from ofgr_core.embedding.features import key_digest

    assert key_digest(fp32) != key_digest(bf16)
