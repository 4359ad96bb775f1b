"""Diagnose the supervised SegNet warm start (``core.segtrain``) on pseudo cases.

Three checks, each printed as a table:

``cases``
    Per case of a ``girnet make-cases`` folder: lesion kind and volume, mean scan intensity
    inside the mask, in a 2-voxel ring around it (inside the brain) and of the lesion-free twin
    inside the mask, and how well the support of ``scan - healthy`` (the voxels the recipe
    changed) sits on the mask (fraction of the changed voxels within the mask dilated by 2
    voxels, and of the mask voxels that changed). A misaligned or transposed mask shows as a
    low overlap; an invisible lesion as ``inside ~ ring``.
``crops``
    The same numbers on crops drawn by :class:`~napari_girnet.core.segtrain.CropSampler`
    from ``(scan, mask, healthy)`` (so a crop or flip that treats the tensors differently
    shows up as a low overlap), plus the lesion fraction of the crops.
``mixed``
    The ``seg`` phase of ``tools/train_bundled.py`` in small (batch 1, lesion-centred crops
    with probability 0.7, lesion-free twins as negatives), scored on fixed crops.
``overfit``
    :class:`~napari_girnet.core.segtrain.SupervisedSegTrainer` on ``--n-crops`` fixed crops
    for ``--steps`` steps (a sampler that always returns the same batch): a working
    model/loss/optimiser path reaches a hard Dice near 1 on them.

    OMP_NUM_THREADS=1 python tools/seg_overfit.py --cases /tmp/h5-cases --checks cases crops
    OMP_NUM_THREADS=1 python tools/seg_overfit.py --cases /tmp/h5-cases --checks overfit \
        --n-crops 1 --steps 200
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage as ndi

from napari_girnet.core.config import preset
from napari_girnet.core.model import GIRNet
from napari_girnet.core.runtime import seed_everything
from napari_girnet.core.segtrain import CropSampler, SupervisedSegTrainer
from napari_girnet.data.case_loader import list_cases, read_training_case

log = logging.getLogger("seg_overfit")


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(a, dtype=np.float32, copy=True))[None]


def contrast_row(
    scan: np.ndarray, mask: np.ndarray, healthy: np.ndarray, brain: np.ndarray | None = None
) -> dict[str, float]:
    """Intensity contrast of a lesion and the overlap of the changed voxels with its mask.

    All arrays share one ``(X, Y, Z)`` grid; ``mask`` 0/1. ``brain`` defaults to ``scan > 0``.
    """
    m = mask > 0.5
    b = (scan > 0) if brain is None else brain > 0.5
    if not m.any():
        return {"voxels": 0.0}
    ring = ndi.binary_dilation(m, iterations=2) & ~m & b
    changed = np.abs(scan - healthy) > 0.02
    near = ndi.binary_dilation(m, iterations=2)
    return {
        "voxels": float(m.sum()),
        "inside": float(scan[m].mean()),
        "ring": float(scan[ring].mean()) if ring.any() else float("nan"),
        "twin_inside": float(healthy[m].mean()),
        "changed_near_mask": float((changed & near).sum() / max(changed.sum(), 1)),
        "mask_changed": float((changed & m).sum() / m.sum()),
    }


def check_cases(folder: Path, split: str) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for p in list_cases(folder, split):
        c = read_training_case(p)
        kind = json.loads((p / "case.json").read_text()).get("lesion_kind", "?")
        row: dict[str, object] = {"case": p.name, "kind": kind}
        row.update(contrast_row(c.scan, c.mask, c.healthy, c.brain_mask))
        rows.append(row)
        print(_fmt(row), flush=True)
    for kind in sorted({str(r["kind"]) for r in rows}):
        sel = [r for r in rows if r["kind"] == kind]
        keys = ("inside", "ring", "twin_inside", "changed_near_mask", "mask_changed")
        mean = {k: float(np.mean([float(r[k]) for r in sel])) for k in keys}  # type: ignore[arg-type]
        print(f"MEAN {kind:7s} n={len(sel)} " + " ".join(f"{k} {v:.3f}" for k, v in mean.items()))
    return rows


def _fmt(row: dict[str, object]) -> str:
    return " ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items())


def load_volumes(
    folder: Path, split: str, limit: int | None
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    vols = []
    for p in list_cases(folder, split)[:limit]:
        c = read_training_case(p)
        vols.append((_t(c.scan), _t((c.mask > 0.5).astype(np.float32)), _t(c.healthy)))
    return vols


def check_crops(folder: Path, crop: tuple[int, int, int], n: int, seed: int) -> None:
    vols = load_volumes(folder, "train", None)
    sampler = CropSampler(vols, crop, batch_size=1, seed=seed, lesion_prob=1.0, flip=True)
    for step in range(n):
        s, m, h = (t[0, 0].numpy() for t in sampler(step))
        row: dict[str, object] = {"step": step, "lesion_fraction": float(m.mean())}
        row.update(contrast_row(s, m, h))
        print(_fmt(row), flush=True)


def overfit(
    folder: Path,
    crop: tuple[int, int, int],
    n_crops: int,
    steps: int,
    lr: float,
    seed: int,
    preset_name: str,
    w_dice: float,
) -> float:
    """Train on ``n_crops`` fixed lesion-centred crops; returns the final hard Dice at 0.5."""
    vols = [v[:2] for v in load_volumes(folder, "train", None)]
    src = CropSampler(vols, crop, batch_size=n_crops, seed=seed, lesion_prob=1.0, flip=False)
    batch = src(0)
    log.info(
        "overfit batch %s, lesion fraction %.4f", tuple(batch[0].shape), float(batch[1].mean())
    )
    cfg = preset(preset_name, runtime={"seed": seed, "precision": "fp32", "threads": 1})
    seed_everything(seed)
    model = GIRNet(cfg)
    trainer = SupervisedSegTrainer(
        model, lambda step: batch, steps, lr=lr, w_dice=w_dice, reinit=True, config=cfg
    )
    t0 = time.perf_counter()
    hard = 0.0
    for rep in trainer.steps():
        if rep.step % 10 == 0 or rep.step == 1:
            with torch.no_grad():
                p = model.seg(batch[0]) > 0.5
            t = batch[1] > 0.5
            hard = float(2 * (p & t).sum() / max(int(p.sum() + t.sum()), 1))
            print(
                f"step {rep.step:4d} loss {rep.loss:.4f} bce {rep.terms['bce']:.4f} "
                f"soft_dice {rep.terms['soft_dice']:.3f} hard_dice {hard:.3f} "
                f"mask {rep.terms['mask_fraction']:.4f} target {rep.terms['target_fraction']:.4f} "
                f"lr {rep.lr:.2e} ({time.perf_counter() - t0:.0f} s)",
                flush=True,
            )
    return hard


def _evaluate(model: GIRNet, batch: tuple[torch.Tensor, ...]) -> tuple[float, float]:
    """Mean hard Dice at 0.5 over the items of ``batch`` that hold a lesion, and the
    predicted fraction of the lesion-free items."""
    dices, fp = [], []
    with torch.no_grad():
        pred = model.seg(batch[0]) > 0.5
    for p, t in zip(pred, batch[1] > 0.5, strict=True):
        if t.any():
            dices.append(float(2 * (p & t).sum() / (p.sum() + t.sum())))
        else:
            fp.append(float(p.float().mean()))
    return float(np.mean(dices)) if dices else float("nan"), float(np.mean(fp)) if fp else 0.0


def _two_channel_segnet(model: GIRNet) -> None:
    """Give ``model.seg`` a 2-channel first conv and a forward that skips the 1-channel check."""
    seg = model.seg
    block = seg.encoder.convs[0]
    assert isinstance(block, torch.nn.Sequential)
    first = block[0]
    assert isinstance(first, torch.nn.Conv3d)
    block[0] = torch.nn.Conv3d(2, first.out_channels, 3, padding=1)

    def forward_logits(scan: torch.Tensor) -> torch.Tensor:
        x = seg._prepare("SegNet", "scan", scan)
        skips, bottom = seg.encoder(x)
        out = seg.decoder(bottom, skips)
        return out[(slice(None), slice(None), *(slice(0, n) for n in scan.shape[2:]))]

    seg.forward_logits = forward_logits  # type: ignore[method-assign]
    seg.forward = lambda scan: torch.sigmoid(forward_logits(scan))  # type: ignore[method-assign]


def mixed(
    folder: Path,
    crop: tuple[int, int, int],
    steps: int,
    lr: float,
    seed: int,
    preset_name: str,
    w_dice: float,
    empty_dice: bool,
    atlas_channel: bool = False,
    n_negatives: int = 4,
) -> None:
    """The recipe of ``tools/train_bundled.py`` (phase ``seg``) in small: batch 1, crops of
    the training cases (lesion-centred with probability 0.7) and of ``n_negatives`` lesion-free
    twins; evaluated on 16 lesion-centred and 8 lesion-free crops of the same volumes.

    With ``atlas_channel`` SegNet gets a second input channel, the atlas on the working grid
    (the cases are affinely aligned to it; no deformable registration), through a 2-channel
    first conv (an experiment: ``SegNet`` itself takes the scan only)."""
    vols = load_volumes(folder, "train", None)
    cfg = preset(preset_name, runtime={"seed": seed, "precision": "fp32", "threads": 1})
    if atlas_channel:
        from napari_girnet import api

        atlas = _t(np.asarray(api.load_atlas_for(cfg).image.array, dtype=np.float32))
        vols = [(torch.cat([s, atlas]), m, torch.cat([h, atlas])) for s, m, h in vols]

    # CropSampler: (scan, mask, *extra), each (1, *S): extra scan channels go last
    def split(s: torch.Tensor, m: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (s[:1], m, *(s[c : c + 1] for c in range(1, s.shape[0])))

    def join(batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.cat([batch[0], *batch[2:]], 1), batch[1]

    negatives = [(h, torch.zeros_like(m)) for _, m, h in vols[:n_negatives]]
    train = [split(s, m) for s, m, _ in vols] + [split(h, z) for h, z in negatives]
    crops = CropSampler(train, crop, batch_size=1, seed=seed, lesion_prob=0.7)
    pos = join(
        CropSampler(
            [split(s, m) for s, m, _ in vols],
            crop,
            batch_size=16,
            seed=seed + 99,
            lesion_prob=1.0,
            flip=False,
        )(0)
    )
    neg = join(
        CropSampler(
            [split(h, z) for h, z in negatives],
            crop,
            batch_size=8,
            seed=seed + 98,
            lesion_prob=0.0,
            flip=False,
        )(0)
    )
    seed_everything(seed)
    model = GIRNet(cfg)
    if atlas_channel:
        _two_channel_segnet(model)
    trainer = SupervisedSegTrainer(
        model,
        lambda step: join(crops(step)),
        steps,
        lr=lr,
        w_dice=w_dice,
        empty_dice=empty_dice,
        reinit=True,
        config=cfg,
    )
    t0 = time.perf_counter()
    collapsed, dices = 0, []
    for rep in trainer.steps():
        collapsed += rep.terms["mask_fraction"] < 1e-5
        if rep.terms["lesion_items"] > 0:
            dices.append(rep.terms["soft_dice"])
        if rep.step % 25 == 0:
            hard, fp = _evaluate(model, (torch.cat([pos[0], neg[0]]), torch.cat([pos[1], neg[1]])))
            print(
                f"step {rep.step:4d} empty_dice={empty_dice} atlas={atlas_channel} lr {lr:.0e}: "
                f"train soft Dice "
                f"(lesion crops, last 25) {np.mean(dices[-25:]):.3f}, steps collapsed "
                f"(mask < 1e-5) {collapsed}/{rep.step}; fixed crops hard Dice {hard:.3f}, "
                f"healthy FP fraction {fp:.4f} ({time.perf_counter() - t0:.0f} s)",
                flush=True,
            )


def use_pos_weight(pos_weight: float) -> None:
    """Experiment: make the trainer's BCE weight lesion voxels by ``pos_weight``
    (``binary_cross_entropy_with_logits(pos_weight=...)``); the Dice term is unchanged."""
    import torch.nn.functional as F

    from napari_girnet.core import segtrain

    original = segtrain.supervised_seg_loss

    def weighted(logits: torch.Tensor, target: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        loss, terms = original(logits, target, *args, **kwargs)
        z, t = logits.float(), target.float()
        w = torch.tensor(float(pos_weight), device=z.device)
        bce_w = F.binary_cross_entropy_with_logits(z, t, pos_weight=w)
        dice_term = loss - F.binary_cross_entropy_with_logits(z, t)
        return dice_term + bce_w, {**terms, "bce": bce_w.detach()}

    segtrain.supervised_seg_loss = weighted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=Path, required=True)
    parser.add_argument(
        "--checks",
        nargs="+",
        default=["cases", "crops", "overfit"],
        choices=["cases", "crops", "overfit", "mixed"],
    )
    parser.add_argument("--split", default="all")
    parser.add_argument("--crop", type=int, nargs=3, default=[48, 64, 48])
    parser.add_argument("--n-crops", type=int, default=1)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--w-dice", type=float, default=1.0)
    parser.add_argument(
        "--empty-dice",
        action="store_true",
        help="mixed: the former batch-wide Dice that includes lesion-free crops",
    )
    parser.add_argument(
        "--atlas-channel", action="store_true", help="mixed: the atlas as a 2nd SegNet input"
    )
    parser.add_argument(
        "--pos-weight", type=float, default=None, help="BCE weight of lesion voxels (experiment)"
    )
    parser.add_argument("--preset", default="cpu-2mm")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)
    crop = (args.crop[0], args.crop[1], args.crop[2])
    if args.pos_weight is not None:
        use_pos_weight(args.pos_weight)
    if "cases" in args.checks:
        check_cases(args.cases, args.split)
    if "crops" in args.checks:
        check_crops(args.cases, crop, 12, args.seed)
    if "overfit" in args.checks:
        overfit(
            args.cases, crop, args.n_crops, args.steps, args.lr, args.seed, args.preset, args.w_dice
        )
    if "mixed" in args.checks:
        mixed(
            args.cases,
            crop,
            args.steps,
            args.lr,
            args.seed,
            args.preset,
            args.w_dice,
            args.empty_dice,
            args.atlas_channel,
        )


if __name__ == "__main__":
    main()
