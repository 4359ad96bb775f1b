"""Supervised SegNet warm start (core.segtrain): loss, crops, resume, recipe on real slabs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from napari_girnet.core.checkpoint import CheckpointError, load_checkpoint
from napari_girnet.core.colearn import CoLearner, PairSampler
from napari_girnet.core.config import preset
from napari_girnet.core.model import GIRNet
from napari_girnet.core.runtime import seed_everything
from napari_girnet.core.segtrain import (
    CropSampler,
    SupervisedSegTrainer,
    crop_starts,
    supervised_seg_loss,
)

DATA = Path(__file__).resolve().parents[1] / "data"


def test_supervised_loss_is_low_for_the_truth_and_high_for_the_empty_mask():
    t = torch.zeros(1, 1, 8, 8, 8)
    t[..., 2:5, 2:5, 2:5] = 1
    good, terms = supervised_seg_loss((t - 0.5) * 16, t)
    empty, _ = supervised_seg_loss(torch.full_like(t, -5.0), t)
    assert good < 0.1 < 0.9 < empty
    assert terms["soft_dice"] > 0.95
    assert float(terms["target_fraction"]) == pytest.approx(27 / 512)
    # saturated logits keep a gradient on the lesion (a clamped-probability BCE has none)
    z = torch.full_like(t, -40.0, requires_grad=True)
    supervised_seg_loss(z, t)[0].backward()
    assert float(z.grad[t > 0].abs().min()) > 0


def test_lesion_free_items_are_scored_by_the_bce_alone():
    """Regression (issue #9): a batch-wide soft Dice gives a lesion-free crop the term
    ``1 - s / (sum(p) + s)``, about 1 unless the whole crop holds < 1 voxel of probability, and
    the reported training Dice of such a step is ~0 whatever SegNet does."""
    logits = torch.full((2, 1, 8, 8, 8), -3.0)
    target = torch.zeros_like(logits)
    target[0, 0, 2:5, 2:5, 2:5] = 1
    logits[0][target[0] > 0] = 6.0
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
    # no lesion in the batch: the BCE alone, and no Dice to report
    loss, terms = supervised_seg_loss(logits[1:], target[1:])
    assert float(loss) == pytest.approx(
        float(torch.nn.functional.binary_cross_entropy_with_logits(logits[1:], target[1:]))
    )
    assert torch.isnan(terms["soft_dice"]) and float(terms["lesion_items"]) == 0
    # lesion item + lesion-free item: the Dice is that of the lesion item alone
    loss, terms = supervised_seg_loss(logits, target)
    _, alone = supervised_seg_loss(logits[:1], target[:1])
    assert float(terms["soft_dice"]) == pytest.approx(float(alone["soft_dice"]))
    assert float(terms["lesion_items"]) == 1
    assert float(loss) == pytest.approx(float(bce) + 1 - float(alone["soft_dice"]))
    # the former batch-wide Dice stays available for ablation
    old, old_terms = supervised_seg_loss(logits, target, empty_dice=True)
    assert float(old_terms["soft_dice"]) < float(terms["soft_dice"])
    assert float(old) > float(loss)


def test_crop_starts_contain_the_centre_and_stay_inside():
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        c = [int(torch.randint(0, n, (1,), generator=g)) for n in (20, 30, 40)]
        s = crop_starts((20, 30, 40), (8, 16, 16), g, c)
        for a, (n, k) in enumerate(zip((20, 30, 40), (8, 16, 16), strict=True)):
            assert 0 <= s[a] <= n - k
            assert s[a] <= c[a] < s[a] + k
    with pytest.raises(ValueError, match="larger than the array"):
        crop_starts((8, 8), (16, 8), g)


def test_crop_sampler_is_a_pure_function_of_the_step_and_centres_lesions():
    scan = torch.rand(1, 32, 32, 32)
    mask = torch.zeros(1, 32, 32, 32)
    mask[0, 3, 28, 5] = 1
    sampler = CropSampler(
        [(scan, mask)], (16, 16, 16), batch_size=2, seed=3, lesion_prob=1.0, flip=False
    )
    a, b = sampler(7), sampler(7)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert a[0].shape == (2, 1, 16, 16, 16)
    # lesion_prob 1: every crop holds the single lesion voxel
    assert torch.all(a[1].flatten(1).sum(1) == 1)


def _blobs(n: int, shape=(32, 32, 32), seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    out = []
    zz, yy, xx = torch.meshgrid(
        *(torch.arange(s, dtype=torch.float32) for s in shape), indexing="ij"
    )
    for _ in range(n):
        c = torch.randint(8, 24, (3,), generator=g).float()
        r = 3 + 3 * torch.rand(1, generator=g)
        m = (((zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2) < r**2).float()
        scan = 0.6 + 0.05 * torch.rand(shape, generator=g)
        scan = scan * (1 - m) + 0.15 * m
        out.append((scan[None], m[None]))
    return out


def test_supervised_run_interrupted_and_resumed_equals_uninterrupted(tmp_path):
    cfg = preset("test", runtime={"precision": "fp32", "seed": 0})
    vols = _blobs(3)

    def make(ckdir):
        seed_everything(0)
        model = GIRNet(cfg)
        sampler = CropSampler(vols, (16, 16, 16), seed=1)
        return SupervisedSegTrainer(
            model, sampler, steps=6, lr=1e-3, checkpoint_dir=ckdir, checkpoint_every=2
        )

    full = make(tmp_path / "a")
    losses_full = [r.loss for r in full.steps()]
    part = make(tmp_path / "b")
    losses_part = [r.loss for r in part.steps(3)]  # interrupted after step 3 (ckpt at 3)
    resumed = make(tmp_path / "b")
    assert resumed.resume_from(tmp_path / "b" / "last.pt") and resumed.step == 3
    losses_part += [r.loss for r in resumed.steps()]
    assert losses_part == losses_full
    for (k, v), (k2, v2) in zip(
        full.model.seg.state_dict().items(), resumed.model.seg.state_dict().items(), strict=True
    ):
        assert k == k2 and torch.equal(v, v2)
    # a checkpoint of another phase is refused
    other = load_checkpoint(tmp_path / "a" / "last.pt")
    other.trainer = {"phase": "colearn"}
    with pytest.raises(CheckpointError, match="phase"):
        make(tmp_path / "c").load_state(other)


def _slab(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    from napari_girnet.data.nifti import read_nifti

    scan = np.asarray(read_nifti(DATA / f"{name}_slab_4mm.nii.gz").array, np.float32)
    lesion = np.asarray(read_nifti(DATA / f"{name}_slab_lesion_4mm.nii.gz").array) > 0
    scan = scan / scan.max()
    return torch.from_numpy(scan), torch.from_numpy(lesion.astype(np.float32))


def test_warm_started_colearning_on_real_slabs_does_not_end_with_an_empty_mask(tmp_path):
    """The recipe of tools/train_bundled.py on the committed 4 mm slabs (MS patient 19, 2D):
    a supervised warm start, then GIRNet's unsupervised seg/inp game. Plain co-learning from
    a random SegNet ends with an empty mask (docs/development.md); here the mask survives."""
    scan3, lesion3 = _slab("ms19")
    from napari_girnet.data.nifti import read_nifti

    atlas3 = torch.from_numpy(
        np.asarray(read_nifti(DATA / "atlas_slab_4mm.nii.gz").array, np.float32)
    )
    atlas3 = atlas3 / atlas3.max()
    z = range(scan3.shape[-1])
    scans = [scan3[None, :, :, k] for k in z]
    masks = [lesion3[None, :, :, k] for k in z]
    atlases = [atlas3[None, :, :, k] for k in z]
    cfg = preset(
        "test",
        data={"ndim": 2, "shape": tuple(scan3.shape[:2])},
        runtime={"precision": "fp32", "seed": 0},
        schedule={"steps": 20, "k_reg": 0, "k_seg": 2, "k_inp": 2, "lr": 1e-4},
    )
    seed_everything(0)
    model = GIRNet(cfg)
    sup = SupervisedSegTrainer(
        model,
        CropSampler(
            list(zip(scans, masks, strict=True)),
            (48, 48),
            batch_size=3,
            seed=0,
            lesion_prob=0.0,
            flip=False,
        ),
        steps=60,
        lr=3e-3,
        config=cfg,
    )
    for _ in sup.steps():
        pass
    scan_b, truth = torch.stack(scans), torch.stack(masks)
    with torch.no_grad():
        before = model.segment(scan_b) > 0.5
    assert before.sum() > 0.3 * truth.sum()
    learner = CoLearner(model, PairSampler(scans, atlases, seed=0), cfg)
    reports = [r for r in learner.steps() if not r.is_final]
    assert {r.phase for r in reports} == {"seg", "inp"}
    with torch.no_grad():
        after = model.segment(scan_b) > 0.5
    seg_fraction = [r.terms["mask_fraction"] for r in reports if r.phase == "seg"]
    assert after.sum() > 0.3 * truth.sum(), "the mask ended (nearly) empty"
    assert seg_fraction[-1] > 0.25 * seg_fraction[0]
    inter = float((after & (truth > 0)).sum())
    assert 2 * inter / float(after.sum() + truth.sum()) > 0.3
