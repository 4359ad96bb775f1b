"""GIRNet model: symmetric composition, coarse integration, predictions, config round trip."""

from __future__ import annotations

import pytest
import torch

from napari_girnet.core.config import ConfigError, GIRNetConfig, preset
from napari_girnet.core.model import GIRNet
from napari_girnet.core.spatial import compose, integrate


def test_resize_field_rescales_voxel_units():
    field = torch.zeros(1, 3, 33, 25, 17)
    field[:, 0] = 4.0  # 4 voxels along axis 0 of the fine grid
    coarse = GIRNet._resize_field(field, (17, 13, 9))
    assert coarse[:, 0].mean().item() == pytest.approx(4.0 * 16 / 32)
    back = GIRNet._resize_field(coarse, (33, 25, 17))
    torch.testing.assert_close(back, field)


@pytest.mark.parametrize("k", [1, 2])
def test_register_is_symmetric_composition_of_half_fields(k):
    cfg = preset("test", net={"int_downsize": k})
    torch.manual_seed(0)
    model = GIRNet(cfg)
    scan, atlas = torch.rand(1, 1, 32, 32, 32), torch.rand(1, 1, 32, 32, 32)
    f = model.register(scan, atlas)
    assert f.phi_st.shape == f.phi_ts.shape == (1, 3, 32, 32, 32)
    if k == 1:
        steps = cfg.net.int_steps
        expect = compose(integrate(f.v_t, steps), integrate(-f.v_s, steps))
        torch.testing.assert_close(f.phi_ts, expect)
    torch.testing.assert_close(model.atlas_to_scan_field(scan, atlas), f.phi_ts)


def test_zero_velocity_gives_identity_and_predict_outputs():
    cfg = preset("test", net={"int_downsize": 2})
    model = GIRNet(cfg)
    for p in model.reg.parameters():
        torch.nn.init.zeros_(p)
    scan = torch.rand(2, 1, 32, 32, 32)
    atlas = torch.rand(1, 1, 32, 32, 32)
    pred = model.predict(scan, atlas)
    assert torch.all(pred.phi_ts == 0) and torch.all(pred.jacobian == 1)
    torch.testing.assert_close(pred.atlas_to_scan, atlas.expand(2, -1, -1, -1, -1))
    outside = ~pred.lesion_mask
    torch.testing.assert_close(pred.inpainted[outside], scan[outside])
    with pytest.raises(ValueError, match="same working grid"):
        model.predict(scan, torch.rand(1, 1, 32, 32, 16))


def test_config_json_round_trip_and_strictness():
    cfg = preset("cpu-2mm", schedule={"steps": 7}, runtime={"seed": 3})
    again = GIRNetConfig.from_json(cfg.to_json())
    assert again == cfg
    data = cfg.to_dict()
    data["schedule"]["stpes"] = 3
    with pytest.raises(ConfigError, match="stpes"):
        GIRNetConfig.from_dict(data)
    with pytest.raises(ConfigError, match="unknown preset"):
        preset("gpu-3mm")
    with pytest.raises(ConfigError, match="odd"):
        cfg.override(loss={"reg_window": 8})
    for name in ("cpu-2mm", "gpu-1mm", "2d", "test"):
        assert preset(name).preset == name


def test_reg_form_selects_the_lncc_form_of_the_registration_loss():
    """A flat scan against a flat atlas: GIRNet's form scores it a perfect match, the standard
    form scores it zero (except where the zero padding beyond the border creates contrast);
    an invalid form is a config error."""
    from napari_girnet.core.losses import registration_loss

    cfg = preset("test")
    model = GIRNet(cfg)
    for p in model.reg.parameters():
        torch.nn.init.zeros_(p)
    flat = torch.full((1, 1, 32, 32, 32), 0.5)
    fields = model.register(flat, flat)
    girnet_loss, _ = registration_loss(fields, flat, flat, cfg.loss)
    std_cfg = cfg.override(loss={"reg_form": "standard"}).loss
    std_loss, _ = registration_loss(fields, flat, flat, std_cfg)
    # zero velocities: every regulariser is 0, the loss is -3 (mid + 2 full) LNCC terms
    assert girnet_loss.item() == pytest.approx(-3.0, abs=1e-5)
    assert std_loss.item() > -2.0  # only border windows (zero padding) correlate
    with pytest.raises(ConfigError, match="reg_form"):
        cfg.override(loss={"reg_form": "voxelmorph"})


def test_seeded_model_uses_a_local_generator():
    """``GIRNet(cfg, seed=k)``: weights from ``k``, the global generator left untouched."""
    from napari_girnet.pipeline.models import RANDOM_MODEL, load_model

    cfg = preset("test")
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = GIRNet(cfg, seed=5)
    assert torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(5)
    b = GIRNet(cfg)  # the same draws from a globally seeded generator
    c = GIRNet(cfg, seed=6)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name
    pairs = zip(a.parameters(), c.parameters(), strict=True)
    assert any(not torch.equal(pa, pc) for pa, pc in pairs)
    # register(seed=k) builds the random model from k, not from the preset's seed
    torch.manual_seed(999)
    before = torch.get_rng_state()
    loaded = load_model(None, cfg, seed=5, explicit=True)
    assert torch.equal(torch.get_rng_state(), before)
    assert loaded.description == RANDOM_MODEL and loaded.untrained
    for pa, pl in zip(a.parameters(), loaded.net.parameters(), strict=True):
        assert torch.equal(pa, pl)
    with pytest.raises(ValueError, match="seed"):
        GIRNet(cfg, seed=1.5)  # type: ignore[arg-type]


def test_random_model_request_and_fine_tune_default(monkeypatch, tmp_path):
    """``model="random"`` gives random weights even where a model ships; a trained model is
    applied as is (no per-scan co-learning by default), random weights are fine-tuned."""
    from napari_girnet.core.checkpoint import Checkpoint, save_checkpoint
    from napari_girnet.pipeline import models
    from napari_girnet.pipeline.models import RANDOM_REQUESTED, load_model
    from napari_girnet.pipeline.stages import resolve_run

    cfg = preset("test")
    shipped = tmp_path / "test.pt"
    trained = GIRNet(cfg, seed=1)
    save_checkpoint(
        Checkpoint(config=cfg, model={k: n.state_dict() for k, n in trained.networks.items()}),
        shipped,
    )
    monkeypatch.setattr(models, "bundled_model_path", lambda name: shipped)
    bundled = load_model(None, cfg, seed=0, explicit=True)
    assert not bundled.untrained and bundled.description == str(shipped)
    random = load_model("random", cfg, seed=0, explicit=True)
    assert random.untrained and random.description == RANDOM_REQUESTED
    pairs = zip(random.net.parameters(), bundled.net.parameters(), strict=True)
    assert any(not torch.equal(pr, pb) for pr, pb in pairs)
    _, _, steps_trained = resolve_run("test", None, 0, "cpu", None, None)
    _, _, steps_random = resolve_run("test", "random", 0, "cpu", None, None)
    _, _, steps_asked = resolve_run("test", None, 0, "cpu", None, 3)
    assert (steps_trained, steps_random, steps_asked) == (0, cfg.schedule.fine_tune_steps, 3)
