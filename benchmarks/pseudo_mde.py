"""Mean deformation error of GIRNet on pseudo-pathological cases, per region.

For each case (a held-out real lesion pasted into a healthy brain under a known diffeomorphism,
``data.synthetic.make_case``), on the 2 mm working grid:

- **exact** (atlas as the healthy brain): the true atlas-to-scan map is the stored field, so
  ``MDE(phi_ts, field)`` is the registration error itself;
- **twin** (the paper's definition, any healthy brain): ``MDE(phi_ts(scan), phi_ts(twin))``,
  the deformation error caused by the lesion (the twin is the same scan without the lesion).

Regions: in the lesion, near (<= 30 mm, in brain), far (> 30 mm, in brain); also folding
fraction (det J <= 0) and std of log det J. Models: the bundled model and, for contrast, the
"no registration" identity.

    python benchmarks/pseudo_mde.py [--n 4] [--seed 7] [--model path]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from napari_girnet import api
from napari_girnet.core.instance import refine_registration
from napari_girnet.core.model import GIRNet
from napari_girnet.data.atlas import load_atlas
from napari_girnet.data.synthetic import atlas_source_brain, make_case
from napari_girnet.datasets import colin27_source_brain, lesion_library
from napari_girnet.evaluation.metrics import (
    folding_fraction,
    log_jacobian_std,
    mean_deformation_error,
)

HELD_OUT = ("glioma", "ms07", "ms19")


def predict(model: GIRNet, image: np.ndarray, atlas: np.ndarray, io_steps: int = 0):
    t = lambda a: torch.from_numpy(np.array(a, np.float32))[None, None]  # noqa: E731
    fields = None
    if io_steps:
        fields = refine_registration(
            model, t(image), t(atlas), steps=io_steps, lr=model.config.schedule.instance_lr
        ).fields
    pred = model.predict(t(image), t(atlas), fields=fields)
    return pred.phi_ts[0].numpy(), pred.jacobian[0, 0].numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3, help="cases per healthy brain")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--model", default=None, help="checkpoint (default: bundled cpu-2mm)")
    parser.add_argument("--io", type=int, default=40, help="instance-optimisation steps")
    args = parser.parse_args()
    model = GIRNet.from_checkpoint(args.model or api.bundled_model_path("cpu-2mm"))
    model.eval()
    atlas = load_atlas("2mm")
    spacing = atlas.image.spacing
    lesions = [s for s in lesion_library() if s.name in HELD_OUT]
    rows = []
    for brain in (atlas_source_brain("2mm"), colin27_source_brain()):
        is_atlas = brain.name.startswith("mni152")
        for i in range(args.n):
            lesion = lesions[i % len(lesions)]
            case = make_case(brain, lesion, seed=args.seed * 1000 + i)
            les = np.asarray(case.lesion.array, bool)
            br = np.asarray(case.brain_mask.array, bool)
            for kind, n_io in (("network", 0), (f"network+IO{args.io}", args.io)):
                phi, jac = predict(model, case.scan.array, atlas.image.array, n_io)
                phi_twin, _ = predict(model, case.healthy.array, atlas.image.array, n_io)
                row = {
                    "brain": "atlas" if is_atlas else brain.name,
                    "lesion": lesion.name,
                    "model": kind,
                    "twin": mean_deformation_error(phi, phi_twin, les, br, spacing),
                    "folding": folding_fraction(jac, br),
                    "logjac_sd": log_jacobian_std(jac, br),
                }
                if is_atlas:
                    row["exact"] = mean_deformation_error(phi, case.field, les, br, spacing)
                    row["identity"] = mean_deformation_error(
                        np.zeros_like(phi), case.field, les, br, spacing
                    )
                rows.append(row)
    print(
        f"{'brain':<8} {'lesion':<7} {'registration':<14} {'truth':<9} {'in mm':>8} "
        f"{'near mm':>8} {'far mm':>8} {'folding':>8} {'sd logJ':>8}"
    )
    for r in rows:
        for kind in ("exact", "identity", "twin"):
            if kind not in r:
                continue
            if kind == "identity" and r["model"] != "network":
                continue
            m = r[kind]
            who = "none (affine)" if kind == "identity" else r["model"]
            fold = 0.0 if kind == "identity" else r["folding"]
            sd = 0.0 if kind == "identity" else r["logjac_sd"]
            print(
                f"{r['brain']:<8} {r['lesion']:<7} {who:<14} {kind:<9} {m['in']['mean']:8.2f} "
                f"{m['near']['mean']:8.2f} {m['far']['mean']:8.2f} {fold:8.4f} {sd:8.3f}"
            )


if __name__ == "__main__":
    main()
