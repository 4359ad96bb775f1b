"""Which lesion-mask recipe is best on data no training saw (validation split, real scans)?

Compares GIRNet checkpoints (e.g. the phases of ``tools/train_bundled.py``: supervised SegNet
warm start, then the unsupervised MMI game) with the atlas-outlier detector, on

* the **validation pseudo cases** of a case folder (``case.json`` ``split == "val"``: healthy
  brains and lesions that training never saw), already on the 2 mm working grid;
* the **healthy validation brains** (OASIS 1119/1122/1125/1128, prepared by
  ``tools/prepare_oasis.py``): false lesion volume;
* the **held-out real scans** (bundled glioma, MS 07, MS 19 on the working grid; healthy Colin27
  and the two OASIS examples of the SymNet release if ``--symnet-examples`` is given): never
  used for training or tuning, reported as such.

SegNet's mask is its probability > 0.5 (GIRNet "TH") and, after GIRNet's random-walker
post-processing ("PP", ``random_walker_refine`` with the product's rejection of a refinement
that more than doubles the mask). The atlas outlier runs once against the atlas warped by the
checkpoint's RegNet and histogram-matched to the scan (``T^M``; the product's second pass
after instance optimisation is not run here).

    python benchmarks/recipes.py --models sup=runs/bundled/seg/last.pt \
        mmi=runs/bundled/mmi/last.pt \
        --cases runs/cases-2mm --healthy runs/oasis-2mm [--outlier] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

VAL_HEALTHY = ("1119", "1122", "1125", "1128")


def _refine():
    try:
        from napari_girnet.detection.refine import random_walker_refine
    except ImportError:  # older layout
        from napari_girnet.detection.refine import random_walker_refine
    return random_walker_refine


def _outlier():
    try:
        from napari_girnet.detection.outlier import atlas_outlier_mask
    except ImportError:
        from napari_girnet.detection.outlier import atlas_outlier_mask
    return atlas_outlier_mask


def dice(a: np.ndarray, b: np.ndarray) -> float:
    s = a.sum() + b.sum()
    return 2.0 * float((a & b).sum()) / float(s) if s else 1.0


def t5(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None, None]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=[], help="name=checkpoint.pt")
    parser.add_argument("--cases", default="runs/cases-2mm")
    parser.add_argument("--healthy", default="runs/oasis-2mm")
    parser.add_argument("--n-val", type=int, default=None, help="first N validation cases")
    parser.add_argument("--outlier", action="store_true", help="also run the atlas outlier")
    parser.add_argument("--no-pp", action="store_true", help="skip the random walker")
    parser.add_argument("--real", nargs="*", default=["glioma", "ms07", "ms19", "colin27"])
    parser.add_argument("--symnet-examples", default=None,
                        help="folder with oasis_image_A/B.nii.gz (healthy, held out)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)

    from napari_girnet import api
    from napari_girnet.core.model import GIRNet
    from napari_girnet.core.similarity import histogram_match
    from napari_girnet.core.spatial import warp
    from napari_girnet.data.case_loader import list_cases, read_training_case

    cfg = api.resolve_config("cpu-2mm")
    atlas = api.load_atlas_for(cfg)
    atlas_np = np.asarray(atlas.image.array, np.float32)
    affine = np.asarray(atlas.image.affine)
    voxel_ml = float(abs(np.linalg.det(affine[:3, :3]))) / 1000.0
    refine = _refine()

    # ---------------------------------------------------------------- items
    items: list[tuple[str, str, np.ndarray, np.ndarray | None, np.ndarray, str]] = []
    paths = list_cases(args.cases, "val")
    if args.n_val is not None:
        paths = paths[: args.n_val]
    for p in paths:
        c = read_training_case(p)
        kind = json.loads((p / "case.json").read_text()).get("lesion_kind", "?")
        items.append(("val", p.name, c.scan, c.mask > 0.5, c.brain_mask > 0.5, str(kind)))
    for sid in VAL_HEALTHY:
        f = Path(args.healthy) / f"{sid}.npz"
        if f.is_file():
            z = np.load(f)
            items.append(("healthy", f"oasis-{sid}", z["image"], None, z["mask"], "healthy"))
    from napari_girnet.datasets import load_colin27, load_sample

    for name in args.real:
        if name == "colin27":
            colin, _ = load_colin27()
            img = np.asarray(colin.array, np.float32)
            items.append(("real", "colin27", img, None, img > 0, "healthy"))
        else:
            s = load_sample(name)
            img = np.asarray(s.scan.array, np.float32)
            items.append(("real", name, img, np.asarray(s.truth.array) > 0, img > 0, name))
    if args.symnet_examples:
        for tag in ("A", "B"):
            prep = api.prepare(Path(args.symnet_examples) / f"oasis_image_{tag}.nii.gz", config=cfg)
            img = np.asarray(prep.image.array, np.float32)
            items.append(("real", f"oasis-example-{tag}", img, None,
                          np.asarray(prep.mask.array) > 0, "healthy"))

    # ---------------------------------------------------------------- methods
    models = {}
    for spec in args.models:
        name, path = spec.split("=", 1)
        m = GIRNet.from_checkpoint(path)
        m.eval()
        models[name] = m
    reg_model = next(iter(models.values()), None)

    rows = []
    header = f"{'set':<8} {'item':<16} {'kind':<10} {'method':<10} {'Dice':>6} {'Dice PP':>8} " \
             f"{'pred mL':>8} {'PP mL':>7} {'truth mL':>8} {'s':>5}"
    print(header, flush=True)
    for split, name, scan, truth, brain, kind in items:
        preds: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
        with torch.no_grad():
            for mname, m in models.items():
                t0 = time.perf_counter()
                prob = m.segment(t5(scan))[0, 0].numpy()
                preds[mname] = (prob, None, time.perf_counter() - t0)
            if args.outlier and reg_model is not None:
                t0 = time.perf_counter()
                phi = reg_model.atlas_to_scan_field(t5(scan), t5(atlas_np))
                warped = warp(t5(atlas_np), phi)
                tm = histogram_match(warped, t5(scan), source_mask=warped > 0,
                                     reference_mask=t5(brain.astype(np.float32)) > 0)
                res = _outlier()(scan, tm[0, 0].numpy(), brain, 2.0, affine=affine)
                mask = np.asarray(res.mask if hasattr(res, "mask") else res, bool)
                preds["outlier"] = (mask.astype(np.float32), None, time.perf_counter() - t0)
        for mname, (prob, _, secs) in preds.items():
            mask = (prob > 0.5) & brain
            pp = mask
            if not args.no_pp and mask.any():
                refined = refine(scan, mask.astype(np.float32), threshold=0.5) & brain
                pp = refined if refined.sum() <= 2.0 * mask.sum() else mask
            row = {
                "set": split, "item": name, "kind": kind, "method": mname,
                "pred_ml": float(mask.sum()) * voxel_ml, "pp_ml": float(pp.sum()) * voxel_ml,
                "seconds": secs,
            }
            if truth is not None:
                row.update(dice=dice(mask, truth), dice_pp=dice(pp, truth),
                           truth_ml=float(truth.sum()) * voxel_ml)
            rows.append(row)
            print(f"{split:<8} {name:<16} {kind:<10} {mname:<10} "
                  f"{row.get('dice', float('nan')):6.3f} {row.get('dice_pp', float('nan')):8.3f} "
                  f"{row['pred_ml']:8.1f} {row['pp_ml']:7.1f} {row.get('truth_ml', 0):8.1f} "
                  f"{secs:5.1f}", flush=True)

    print("\nsummary (validation pseudo cases: mean Dice; healthy: mean / max false mL)")
    methods = list(dict.fromkeys(r["method"] for r in rows))
    for mname in methods:
        val = [r for r in rows if r["method"] == mname and r["set"] == "val"]
        kinds = sorted({r["kind"] for r in val})
        per_kind = ", ".join(
            f"{k} {np.mean([r['dice'] for r in val if r['kind'] == k]):.3f}"
            f" (n={sum(r['kind'] == k for r in val)})" for k in kinds)
        hv = [r for r in rows if r["method"] == mname and r["set"] == "healthy"]
        if val:
            print(f"  {mname:<10} val Dice {np.mean([r['dice'] for r in val]):.3f}, "
                  f"PP {np.mean([r['dice_pp'] for r in val]):.3f}  [{per_kind}]")
        if hv:
            fp = [r["pred_ml"] for r in hv]
            fpp = [r["pp_ml"] for r in hv]
            print(f"  {mname:<10} healthy val false mL mean {np.mean(fp):.2f} max {max(fp):.2f}"
                  f" (PP mean {np.mean(fpp):.2f})")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
