"""Co-learning engine: schedule, frozen networks, loss decrease, stop/resume, safe checkpoints."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from napari_girnet.core.checkpoint import CheckpointError, load_checkpoint
from napari_girnet.core.colearn import CoLearner, PairSampler, schedule_tag
from napari_girnet.core.config import preset
from napari_girnet.core.losses import registration_loss
from napari_girnet.core.model import GIRNet
from napari_girnet.core.runtime import seed_everything
from napari_girnet.core.spatial import integrate, warp


def _blobs(shape, seed):
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand((1, 1, *[5] * len(shape)), generator=g)
    mode = "trilinear" if len(shape) == 3 else "bilinear"
    img = torch.nn.functional.interpolate(coarse, size=shape, mode=mode, align_corners=True)
    return (img - img.min()) / (img.max() - img.min())


def _pair(shape=(32, 32, 32), seed=0):
    """Atlas and a scan = atlas under a known smooth deformation plus a bright 'lesion'."""
    atlas = _blobs(shape, seed)
    g = torch.Generator().manual_seed(seed + 1)
    v = torch.nn.functional.interpolate(
        torch.randn((1, len(shape), *[4] * len(shape)), generator=g),
        size=shape,
        mode="trilinear" if len(shape) == 3 else "bilinear",
        align_corners=True,
    )
    scan = warp(atlas, integrate(v * 1.5))
    c = [s // 2 for s in shape]
    lesion = tuple(slice(ci - 3, ci + 3) for ci in c)
    scan[(0, 0, *lesion)] = 1.0
    return scan[0], atlas[0]


def _learner(tmp_path=None, steps=10, seed=0, **over):
    cfg = preset(
        "test",
        schedule={"steps": steps, **over.pop("schedule", {})},
        runtime={"seed": seed, **over.pop("runtime", {})},
    )
    seed_everything(seed)
    model = GIRNet(cfg)
    scans, atlases = zip(*[_pair(seed=s) for s in (0, 1)], strict=True)
    sampler = PairSampler(list(scans), atlases[0], seed=seed)
    return CoLearner(
        model, sampler, checkpoint_dir=tmp_path, preview_pair=(scans[0][None], atlases[0][None])
    )


def _weights(model):
    return {t: {k: v.clone() for k, v in n.state_dict().items()} for t, n in model.networks.items()}


def test_schedule_is_reg_seg_seg_inp_inp():
    tags = [schedule_tag(i, 1, 2, 2) for i in range(11)]
    assert tags == ["reg", "seg", "seg", "inp", "inp", "reg", "seg", "seg", "inp", "inp", "reg"]


def test_only_the_stepping_network_changes():
    learner = _learner(steps=5)
    before = _weights(learner.model)
    phases = []
    for _ in range(5):
        report = learner.train_step()
        phases.append(report.phase)
        after = _weights(learner.model)
        for tag in ("reg", "seg", "inp"):
            changed = any(not torch.equal(before[tag][k], after[tag][k]) for k in before[tag])
            assert changed == (tag == report.phase), (report.phase, tag)
        before = after
    assert phases == ["reg", "seg", "seg", "inp", "inp"]


def test_colearning_3d_lowers_registration_loss_and_gives_finite_outputs(tmp_path):
    learner = _learner(tmp_path, steps=40, schedule={"lr": 2e-3, "k_reg": 2})
    scan, atlas = learner.preview_pair
    cfg = learner.config.loss

    def reg_loss():
        with torch.no_grad():
            fields = learner.model.register(scan, atlas)
            return registration_loss(fields, scan, atlas, cfg)[0].item()

    start = reg_loss()
    reports = list(learner.steps())
    assert reports[-1].phase == "finished" and reports[-1].step == 40
    assert all(torch.isfinite(torch.tensor(r.loss)) for r in reports[:-1])
    assert reg_loss() < start - 0.01
    pred = learner.model.predict(scan, atlas)
    for name in ("lesion_probability", "inpainted", "atlas_to_scan", "scan_to_atlas", "jacobian"):
        t = getattr(pred, name)
        assert t.shape == (1, 1, 32, 32, 32) and torch.isfinite(t).all(), name
    assert pred.phi_ts.shape == (1, 3, 32, 32, 32) and pred.phi_st.shape == (1, 3, 32, 32, 32)
    assert pred.lesion_mask.dtype == torch.bool
    assert any(r.preview is not None for r in reports)
    assert (tmp_path / "last.pt").is_file()


def test_stop_checkpoint_resume_equals_uninterrupted_run(tmp_path):
    straight = _learner(None, steps=7, schedule={"pretrain_inp_steps": 2})
    list(straight.steps())

    first = _learner(tmp_path, steps=7, schedule={"pretrain_inp_steps": 2})
    gen = first.steps()
    for report in gen:
        if report.step == 4:
            first.request_stop()
    assert report.phase == "stopped" and report.step == 4
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert ckpt.step == 4

    resumed = CoLearner.resume(tmp_path / "last.pt", first.sampler, checkpoint_dir=tmp_path)
    final = list(resumed.steps())[-1]
    assert final.step == 9 and final.phase == "finished"
    a, b = _weights(straight.model), _weights(resumed.model)
    for tag in a:
        for k in a[tag]:
            assert torch.equal(a[tag][k], b[tag][k]), (tag, k)


def test_same_seed_same_weights_different_seed_differs():
    runs = []
    for seed in (3, 3, 4):
        learner = _learner(steps=3, seed=seed)
        list(learner.steps())
        runs.append(_weights(learner.model))
    k = next(iter(runs[0]["seg"]))
    assert torch.equal(runs[0]["seg"][k], runs[1]["seg"][k])
    assert not torch.equal(runs[0]["seg"][k], runs[2]["seg"][k])


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/girnet_pwned",))


def test_malicious_pickle_checkpoint_is_refused(tmp_path):
    bad = tmp_path / "evil.pt"
    torch.save({"format": "napari-girnet-checkpoint", "payload": _Exploit()}, bad)
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(bad)
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps(_Exploit()))
    with pytest.raises(CheckpointError):
        load_checkpoint(plain)


def test_corrupt_and_foreign_checkpoints_are_refused(tmp_path):
    learner = _learner(tmp_path, steps=1)
    path = learner.save(tmp_path / "good.pt")
    data = path.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"trunc\.pt"):
        load_checkpoint(tmp_path / "trunc.pt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a napari-girnet checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    model = GIRNet.from_checkpoint(path)
    assert isinstance(model, GIRNet)


def test_failure_keeps_last_good_checkpoint(tmp_path):
    learner = _learner(tmp_path, steps=6)
    calls = {"n": 0}
    real = learner.sampler

    def flaky(step):
        calls["n"] += 1
        if step == 3:
            raise RuntimeError("disk gone")
        return real(step)

    learner.sampler = flaky
    with pytest.raises(RuntimeError, match="disk gone"):
        list(learner.steps())
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert ckpt.step == 3


def test_colearning_2d_on_real_slabs_lowers_registration_loss(tmp_path):
    """2D co-learning on the committed 4 mm slabs (atlas and MS patient 07, see tests/data)."""
    from pathlib import Path

    from napari_girnet.data.nifti import read_nifti

    data = Path(__file__).resolve().parents[1] / "data"
    atlas_vol = read_nifti(data / "atlas_slab_4mm.nii.gz")
    scan_vol = read_nifti(data / "ms07_slab_4mm.nii.gz")
    atlas3 = torch.from_numpy(np.asarray(atlas_vol.array, np.float32))
    scan3 = torch.from_numpy(np.asarray(scan_vol.array, np.float32))
    scan3 = scan3 / scan3.max()
    atlas3 = atlas3 / atlas3.max()
    slices = [scan3[None, :, :, z] for z in range(scan3.shape[-1])]
    atlases = [atlas3[None, :, :, z] for z in range(atlas3.shape[-1])]
    cfg = preset(
        "test",
        data={"ndim": 2, "shape": tuple(scan3.shape[:2])},
        schedule={"steps": 40, "lr": 1e-3, "k_reg": 4},
    )
    seed_everything(0)
    model = GIRNet(cfg)
    learner = CoLearner(
        model,
        PairSampler(slices, atlases, seed=0),
        cfg,
        checkpoint_dir=tmp_path,
        preview_pair=(scan3[None, None], atlas3[None, None]),
    )
    scan_b = torch.stack(slices)
    atlas_b = torch.stack(atlases)

    def reg_loss():
        with torch.no_grad():
            return registration_loss(model.register(scan_b, atlas_b), scan_b, atlas_b, cfg.loss)[
                0
            ].item()

    start = reg_loss()
    reports = list(learner.steps())
    end = reg_loss()
    assert end < start - 0.01, f"2D registration loss {start:.4f} -> {end:.4f}"
    assert {r.phase for r in reports[:-1]} == {"reg", "seg", "inp"}
    pred = model.predict(scan_b, atlas_b)
    assert pred.phi_ts.shape == (3, 2, *scan3.shape[:2])
    assert all(torch.isfinite(getattr(pred, n)).all() for n in ("inpainted", "jacobian"))
    # whole-volume preview of 2D networks: slice by slice, zero through-plane displacement
    vol = reports[-2].preview
    assert vol is not None and vol.phi_ts.shape == (1, 3, *scan3.shape)
    assert torch.all(vol.phi_ts[:, 2] == 0)
