"""Device / precision resolution and bf16 autocast on CPU."""

from __future__ import annotations

import pytest
import torch

from napari_girnet.core.colearn import CoLearner
from napari_girnet.core.config import RuntimeConfig, preset
from napari_girnet.core.model import GIRNet
from napari_girnet.core.runtime import cpu_has_native_bf16, resolve_runtime


def test_auto_precision_follows_the_hardware():
    rt = resolve_runtime(RuntimeConfig(device="cpu", precision="auto"))
    assert rt.device.type == "cpu"
    assert rt.precision == ("bf16" if cpu_has_native_bf16() else "fp32")
    assert rt.channels_last  # auto: on for CPU
    assert not resolve_runtime(RuntimeConfig(device="cpu", channels_last="off")).channels_last


def test_unavailable_choices_fail_clearly():
    with pytest.raises(ValueError, match="fp16"):
        resolve_runtime(RuntimeConfig(device="cpu", precision="fp16"))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_runtime(RuntimeConfig(device="cuda"))


def test_bf16_autocast_step_on_cpu_is_finite_and_fields_stay_fp32():
    cfg = preset(
        "test", data={"shape": (16, 16, 16)}, runtime={"precision": "bf16", "channels_last": "on"}
    )
    torch.manual_seed(0)
    model = GIRNet(cfg)
    scan = torch.rand(1, 1, 16, 16, 16)
    learner = CoLearner(model, lambda step: (scan, scan.clone()), cfg)
    assert learner.runtime.precision == "bf16"
    report = learner.train_step()
    assert report.phase == "reg" and torch.isfinite(torch.tensor(report.loss))
    with learner.runtime.autocast():
        fields = model.register(learner.runtime.prepare(scan), learner.runtime.prepare(scan))
    assert fields.phi_ts.dtype == torch.float32
