"""Write the with-skull test fixture ``colin27_raw_3mm.nii.gz`` from Colin27 ``ch2``.

Same grid and method as ``colin27_3mm.nii.gz`` (``make_fixtures.py``: exact 3 mm block average
of the 1 mm MNI/SPM grid, uint8, RAS), but from ``colin27/ch2.nii.gz`` (the head with skull)
instead of ``ch2bet.nii.gz``, so the two fixtures overlay voxel for voxel. Deterministic.

Run::

    .venv/bin/python tests/data/make_raw_fixture.py [--shared /work/shared/data] [--out tests/data]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_fixtures import block_average, coarse_grid, read, save


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=Path("/work/shared/data"))
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args(argv)
    head, head_img = read(args.shared / "colin27" / "ch2.nii.gz")
    shape, affine = coarse_grid(head, 3)
    save(
        block_average(head, shape, affine),
        affine,
        args.out / "colin27_raw_3mm.nii.gz",
        head_img,
        np.uint8,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
