"""Prepare the healthy OASIS-MALF brains onto a preset's working grid (cached, resumable).

Each subject ``<ID>_SS.nii.gz`` with its ``<ID>_mask.nii.gz`` is prepared with
``napari_girnet.api.prepare`` (normalisation, 12-DOF affine to MNI, resampling) and cached as
``<out>/<ID>.npz`` (``image`` float32 and ``mask`` bool on the working grid, axis order of the
grid). Subjects already cached are skipped, so an interrupted run continues.

    python tools/prepare_oasis.py --src /path/to/healthy-oasis-malf --out runs/oasis-2mm
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from napari_girnet import api


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", required=True)
    parser.add_argument("--out", default="runs/oasis-2mm")
    parser.add_argument("--preset", default="cpu-2mm")
    parser.add_argument("--ids", nargs="*", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    src, out = Path(args.src), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ids = args.ids or sorted(p.name.split("_")[0] for p in src.glob("*_SS.nii.gz"))
    for sid in ids:
        dest = out / f"{sid}.npz"
        if dest.exists():
            continue
        t0 = time.perf_counter()
        prep = api.prepare(
            src / f"{sid}_SS.nii.gz", config=args.preset, mask=src / f"{sid}_mask.nii.gz"
        )
        tmp = out / f"{sid}.tmp.npz"
        np.savez_compressed(
            tmp,
            image=np.asarray(prep.image.array, dtype=np.float32),
            mask=np.asarray(prep.mask.array) > 0,
            affine=np.asarray(prep.image.affine, dtype=np.float64),
        )
        tmp.replace(dest)
        print(f"{sid}: {time.perf_counter() - t0:.1f} s", flush=True)


if __name__ == "__main__":
    main()
