"""Which `register` recipe finds the lesion best on held-out cases?

A single scan is little data for an unsupervised segmenter (an inpainter can memorise one image
and win the mutual-information game). This compares the sources of the lesion mask that
``register`` offers, on cases whose lesions no bundled model saw (the bundled samples' own
lesions are excluded from any training):

- ``segnet``          SegNet's mask after co-learning on the scan mixed with 8
                      pseudo-pathological cases (N steps; random start, or the bundled model
                      with ``--bundled``);
- ``outlier-1pass``   the atlas outlier against the affinely aligned atlas;
- ``outlier``         the atlas outlier, second pass against the atlas registered to the
                      lesion-filled scan (the default of ``girnet register``).

Cases: the bundled real samples (2 mm, atlas space) and pseudo-pathological cases that paste the
held-out real lesions into Colin27 / the atlas. Reports Dice without and with the random-walker
refinement (GIRNet's "PP", on the working grid), volumes and seconds.

    python benchmarks/recipes.py [--steps 30] [--recipes ...] [--cases ...] [--bundled]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from napari_girnet import api
from napari_girnet.data.synthetic import atlas_source_brain, make_case
from napari_girnet.datasets import colin27_source_brain, lesion_library, load_sample
from napari_girnet.evaluation.metrics import dice

RECIPES = {
    "segnet": {"detector": "segnet", "steps": True, "pseudo": 8, "passes": 2},
    "outlier-1pass": {"detector": "atlas-outlier", "steps": False, "pseudo": 0, "passes": 1},
    "outlier": {"detector": "atlas-outlier", "steps": False, "pseudo": 0, "passes": 2},
}
HELD_OUT = ("glioma", "ms07", "ms19")


def cases(names):
    lesions = {s.name: s for s in lesion_library()}
    out = {}
    for name in names:
        if name.startswith("real:"):
            sample = load_sample(name.split(":", 1)[1])
            out[name] = (sample.scan, sample.truth)
        else:  # pseudo:<lesion>:<brain>
            _, lesion, brain = name.split(":")
            source = colin27_source_brain() if brain == "colin27" else atlas_source_brain("2mm")
            case = make_case(source, lesions[lesion], seed=1234)
            out[name] = (case.scan, case.lesion)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu-2mm")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument(
        "--cases",
        nargs="+",
        default=["real:glioma", "real:ms19", "pseudo:glioma:colin27", "pseudo:ms19:atlas"],
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--bundled", action="store_true", help="start from the bundled model, not random weights"
    )
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    cfg = api.resolve_config(args.preset)
    steps = cfg.schedule.fine_tune_steps if args.steps is None else args.steps
    rows = []
    print(
        f"{'case':<24} {'recipe':<14} {'Dice':>6} {'Dice+RW':>8} {'pred mL':>8} {'truth mL':>8} "
        f"{'s':>6}",
        flush=True,
    )
    for cname, (scan, truth) in cases(args.cases).items():
        for rname in args.recipes:
            recipe = RECIPES[rname]
            model = None
            if not args.bundled:
                from napari_girnet.core.model import GIRNet
                from napari_girnet.core.runtime import seed_everything

                seed_everything(args.seed)
                model = GIRNet(cfg)
            run_cfg = cfg.override(
                inference={"detector": recipe["detector"], "outlier_passes": recipe["passes"]}
            )
            t0 = time.perf_counter()
            res = api.register(
                scan,
                model=model,
                config=run_cfg,
                fine_tune_steps=steps if recipe["steps"] else 0,
                pseudo_cases=recipe["pseudo"],
                exclude_lesions=HELD_OUT,
                seed=args.seed,
                truth=truth,
                refine=False,
            )
            seconds = time.perf_counter() - t0
            grid_mask = res.prediction.lesion_mask[0, 0].numpy()
            refined, _ = api.refine_on_grid(res.prepared, grid_mask)
            rw = (
                res.prepared.to_native(
                    res.atlas.image.with_array(refined.astype(np.float32)), order=1
                ).array
                > 0.5
            )
            t = np.asarray(truth.array) > 0
            row = {
                "case": cname,
                "recipe": rname,
                "steps": steps if recipe["steps"] else 0,
                "dice": res.metrics["dice"],
                "dice_rw": dice(rw, t),
                "pred_ml": res.metrics["predicted_volume_mm3"] / 1000,
                "truth_ml": res.metrics["truth_volume_mm3"] / 1000,
                "seconds": seconds,
            }
            rows.append(row)
            print(
                f"{cname:<24} {rname:<14} {row['dice']:6.3f} {row['dice_rw']:8.3f} "
                f"{row['pred_ml']:8.1f} {row['truth_ml']:8.1f} {seconds:6.0f}",
                flush=True,
            )
    print("\nmean Dice per recipe:")
    for rname in args.recipes:
        vals = [r["dice"] for r in rows if r["recipe"] == rname]
        vals_rw = [r["dice_rw"] for r in rows if r["recipe"] == rname]
        print(f"  {rname:<14} {np.mean(vals):.3f} (with RW {np.mean(vals_rw):.3f})")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)


if __name__ == "__main__":
    main()
