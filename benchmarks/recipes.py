"""Which `register` recipe finds the lesion best on held-out cases?

A single scan is little data for an unsupervised segmenter (an inpainter can memorise one image
and win the mutual-information game). This compares, on cases whose lesions the bundled model
never saw (the bundled samples' own lesions are excluded from its training):

- ``scratch``      random networks co-learned on the scan alone (N steps);
- ``bundled``      the bundled pretrained model applied as is (0 steps);
- ``bundled+scan`` the bundled model fine-tuned on the scan alone (N steps);
- ``bundled+mix``  the bundled model fine-tuned on the scan mixed with pseudo-pathological cases
                   (N steps; the default of ``girnet register``).

Cases: the bundled real samples (2 mm, atlas space) and pseudo-pathological cases that paste the
held-out real lesions into Colin27 / the atlas. Reports Dice (threshold 0.5) and Dice after the
random-walker refinement, and seconds.

    python benchmarks/recipes.py [--steps 60] [--recipes ...] [--cases ...]
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
    "scratch": {"model": "random", "steps": True, "pseudo": 0},
    "bundled": {"model": "bundled", "steps": False, "pseudo": 0},
    "bundled+scan": {"model": "bundled", "steps": True, "pseudo": 0},
    "bundled+mix": {"model": "bundled", "steps": True, "pseudo": 8},
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
            if recipe["model"] == "random":
                from napari_girnet.core.model import GIRNet
                from napari_girnet.core.runtime import seed_everything

                seed_everything(args.seed)
                model = GIRNet(cfg)
            t0 = time.perf_counter()
            res = api.register(
                scan,
                model=model,
                config=cfg,
                fine_tune_steps=steps if recipe["steps"] else 0,
                pseudo_cases=recipe["pseudo"],
                exclude_lesions=HELD_OUT,
                seed=args.seed,
                truth=truth,
            )
            seconds = time.perf_counter() - t0
            from napari_girnet.evaluation.postprocess import random_walker_refine

            prob = res.lesion_probability.array
            rw = random_walker_refine(res.prepared.to_native(res.prepared.image).array, prob)
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
