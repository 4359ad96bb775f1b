"""Build the bundled raw (with skull) sample ``colin27_raw``: Colin27 ``ch2`` at 2 mm.

Writes into ``napari_girnet/datasets/files``:

* ``colin27_raw_t1.nii.gz``: ``colin27/ch2.nii.gz`` (Colin27 T1 with skull, 1 mm, MNI/SPM grid)
  as the exact 2 x 2 x 2 block average on its own grid (91 x 109 x 91 voxels, 2 mm, RAS;
  voxels outside the source count as 0), stored as uint8 ``round(255 x value / max)``. It is
  NOT on the atlas working grid: it is a scan "straight from the scanner" (skull, scalp,
  neck) for the raw-scan path (brain extraction, bias correction, affine alignment).
* ``colin27_raw_brain_mask.nii.gz``: the reference brain mask ``ch2bet > 0`` on the same grid
  (block average of the 0/1 mask > 0.5), uint8 0/1.

Deterministic (nibabel writes gzip with mtime 0). Also called by ``tools/make_datasets.py``.

Usage::

    python tools/make_raw_sample.py [--data-dir /work/shared/data] [--out DIR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "src" / "napari_girnet" / "datasets" / "files"
FACTOR = 2

#: LICENSES.md rows (kept here so that make_datasets.py writes the same text).
LICENCE_ROWS = (
    "| `colin27_raw_t1.nii.gz` | `colin27/ch2.nii.gz` (Colin27 T1 with skull, 1 mm) | raw "
    "sample `colin27_raw`: exact 2 mm block average on its own grid (91 x 109 x 91, RAS, not the "
    "working grid), uint8 round(255 x value / max) |",
    "| `colin27_raw_brain_mask.nii.gz` | `colin27/ch2bet.nii.gz` > 0 (reference brain mask) | "
    "same 2 mm grid, block average of the 0/1 mask > 0.5 |",
)


def block_average_2mm(img: nib.Nifti1Image) -> tuple[np.ndarray, np.ndarray]:
    """Mean of each 2 x 2 x 2 block (float64) and the affine of the 2 mm grid."""
    data = np.asarray(img.dataobj, dtype=np.float64)
    shape = np.ceil(np.asarray(data.shape) / FACTOR).astype(int)
    padded = np.zeros(shape * FACTOR)
    padded[: data.shape[0], : data.shape[1], : data.shape[2]] = data
    blocks = padded.reshape(shape[0], FACTOR, shape[1], FACTOR, shape[2], FACTOR)
    scale = np.diag([FACTOR, FACTOR, FACTOR, 1.0])
    scale[:3, 3] = (FACTOR - 1) / 2.0  # centre of the first block, in source voxels
    return blocks.mean(axis=(1, 3, 5)), img.affine @ scale


def write(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    img = nib.Nifti1Image(array.astype(np.uint8), affine)
    img.set_sform(affine, code=4)  # MNI152 (Colin27 lies on the MNI/SPM grid)
    img.set_qform(affine, code=4)
    img.header.set_xyzt_units("mm")
    nib.save(img, str(path))
    sys.stdout.write(f"{path.name:34s} {array.shape} {path.stat().st_size / 1024:7.1f} KiB\n")


def build(data_dir: Path, out: Path) -> None:
    """Write the two files of the ``colin27_raw`` sample into ``out``."""
    head = nib.load(str(data_dir / "colin27" / "ch2.nii.gz"))
    brain = nib.load(str(data_dir / "colin27" / "ch2bet.nii.gz"))
    if head.shape != brain.shape or not np.allclose(head.affine, brain.affine):
        raise ValueError("colin27: ch2 and ch2bet are not on the same grid")
    if tuple(nib.aff2axcodes(head.affine)) != ("R", "A", "S"):
        raise ValueError("colin27/ch2.nii.gz: expected RAS voxel order")
    image, affine = block_average_2mm(head)
    mask_img = nib.Nifti1Image((np.asarray(brain.dataobj) > 0).astype(np.float64), brain.affine)
    mask, _ = block_average_2mm(mask_img)
    out.mkdir(parents=True, exist_ok=True)
    write(np.round(255.0 * image / image.max()), affine, out / "colin27_raw_t1.nii.gz")
    write(mask > 0.5, affine, out / "colin27_raw_brain_mask.nii.gz")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=Path("/work/shared/data"))
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    build(args.data_dir, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
