"""Instance optimisation of the registration, fixed guides and the SegNet start bias."""

from __future__ import annotations

import pytest
import torch

from napari_girnet.core.colearn import CoLearner
from napari_girnet.core.config import preset
from napari_girnet.core.instance import refine_registration
from napari_girnet.core.model import GIRNet
from napari_girnet.core.spatial import integrate, warp


def _pair(shape=(32, 32, 32)):
    g = torch.Generator().manual_seed(0)
    coarse = torch.rand((1, 1, 5, 5, 5), generator=g)
    atlas = torch.nn.functional.interpolate(
        coarse, size=shape, mode="trilinear", align_corners=True
    )
    v = torch.nn.functional.interpolate(
        torch.randn((1, 3, 3, 3, 3), generator=g), size=shape, mode="trilinear", align_corners=True
    )
    true_phi_ts = integrate(v / v.abs().max() * 2.0)
    return warp(atlas, true_phi_ts), atlas, true_phi_ts


def test_instance_optimisation_recovers_a_known_deformation():
    scan, atlas, truth = _pair()
    torch.manual_seed(0)
    model = GIRNet(preset("test", loss={"reg_window": 5}))
    with torch.no_grad():
        start = (model.register(scan, atlas).phi_ts - truth).norm(dim=1)[..., 6:-6, 6:-6, 6:-6]
    res = refine_registration(model, scan, atlas, steps=40, lr=0.2, target=scan)
    end = (res.fields.phi_ts - truth).norm(dim=1)[..., 6:-6, 6:-6, 6:-6]
    assert res.loss_after < res.loss_before
    assert end.mean() < 0.6 * start.mean()
    assert res.fields.phi_ts.requires_grad is False
    pred = model.predict(scan, atlas, fields=res.fields)
    torch.testing.assert_close(pred.phi_ts, res.fields.phi_ts)
    with pytest.raises(ValueError, match="one pair"):
        refine_registration(model, scan.expand(2, -1, -1, -1, -1), atlas, steps=1)


def test_zero_steps_keeps_the_network_registration():
    scan, atlas, _ = _pair()
    model = GIRNet(preset("test"))
    res = refine_registration(model, scan, atlas, steps=0, target=scan)
    with torch.no_grad():
        torch.testing.assert_close(res.fields.phi_ts, model.register(scan, atlas).phi_ts)


def test_a_fixed_guide_from_the_sampler_replaces_regnet_in_seg_and_inp_steps(monkeypatch):
    scan, atlas, truth = _pair()
    guide = warp(atlas, truth)
    cfg = preset("test", schedule={"steps": 4, "k_reg": 0})
    model = GIRNet(cfg)

    def no_regnet(*args, **kwargs):
        raise AssertionError("RegNet must not run when the sampler gives a guide")

    monkeypatch.setattr(model, "atlas_to_scan_field", no_regnet)
    learner = CoLearner(model, lambda step: (scan, atlas, guide), cfg)
    phases = [r.phase for r in learner.steps()]
    assert phases == ["seg", "seg", "inp", "inp", "finished"]


def test_segnet_start_bias_sets_the_initial_lesion_probability():
    ref = GIRNet(preset("test", net={"seg_init_bias": 0.0}))
    low = GIRNet(preset("test"))  # CPU presets start from "no lesion" (bias -3)
    x = torch.rand(1, 1, 32, 32, 32)
    with torch.no_grad():
        assert ref.segment(x).mean().item() == pytest.approx(0.5, abs=0.05)
        assert low.segment(x).mean().item() == pytest.approx(
            torch.sigmoid(torch.tensor(-3.0)).item(), abs=0.02
        )
