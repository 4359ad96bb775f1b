"""Quick-look QC montages of a registration result (matplotlib, no GUI).

One row per anatomical plane (axial, coronal, sagittal) through the centre of the predicted
lesion (or of the brain when no lesion was found). :func:`qc_montage` (atlas registration):
scan, scan + lesion mask, inpainted scan, atlas deformed onto the scan, Jacobian determinant
(diverging map centred on 1). :func:`qc_pair_montage` (longitudinal pair, on the fixed grid):
follow-up, pre-operative scan moved onto it, a checkerboard of the two, moved + lesion mask,
Jacobian determinant.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .data.volume import Volume

__all__ = ["qc_montage", "qc_pair_montage"]

log = logging.getLogger(__name__)


def _centre(mask: np.ndarray, fallback: np.ndarray) -> tuple[int, int, int]:
    target = mask if mask.any() else fallback
    if not target.any():
        x, y, z = (int(s) // 2 for s in mask.shape)
        return x, y, z
    cx, cy, cz = (round(float(c)) for c in np.argwhere(target).mean(axis=0))
    return cx, cy, cz


def _plane(array: np.ndarray, axis: int, index: int) -> np.ndarray:
    """2D slice for display: rows = superior/anterior up, columns = right to the viewer's left."""
    sl = np.take(array, index, axis=axis)
    return np.rot90(sl)


def qc_montage(
    scan: Volume,
    lesion_mask: Volume,
    inpainted: Volume,
    atlas_to_scan: Volume,
    jacobian: Volume,
    path: str | Path,
    title: str = "",
) -> Path:
    """Write a PNG montage of scan / mask / inpainted / atlas-to-scan / Jacobian slices.

    All volumes must be on the scan's (canonical RAS) grid. Returns the PNG path.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    scan_a = np.asarray(scan.array, dtype=np.float32)
    mask_a = np.asarray(lesion_mask.array) > 0
    brain = scan_a != scan_a.flat[0]
    centre = _centre(mask_a, brain)
    lo, hi = np.percentile(scan_a[brain] if brain.any() else scan_a, [1, 99])
    jac = np.asarray(jacobian.array, dtype=np.float32)
    r = float(np.clip(np.percentile(np.abs(jac[brain] - 1), 99) if brain.any() else 0.5, 0.1, 2))
    a2s = np.asarray(atlas_to_scan.array, dtype=np.float32)
    inp = np.asarray(inpainted.array, dtype=np.float32)
    cols = ["scan", "scan + lesion mask", "inpainted", "atlas → scan", "Jacobian det"]
    planes = [("axial", 2), ("coronal", 1), ("sagittal", 0)]
    fig, axes = plt.subplots(len(planes), len(cols), figsize=(3.0 * len(cols), 3.0 * len(planes)))
    for row, (pname, axis) in enumerate(planes):
        idx = centre[axis]
        s = _plane(scan_a, axis, idx)
        panels = [
            (s, {"cmap": "gray", "vmin": lo, "vmax": hi}),
            (s, {"cmap": "gray", "vmin": lo, "vmax": hi}),
            (_plane(inp, axis, idx), {"cmap": "gray", "vmin": lo, "vmax": hi}),
            (_plane(a2s, axis, idx), {"cmap": "gray", "vmin": 0, "vmax": 1}),
            (_plane(jac, axis, idx), {"cmap": "coolwarm", "vmin": 1 - r, "vmax": 1 + r}),
        ]
        for col, (img, kw) in enumerate(panels):
            ax = axes[row, col]
            im = ax.imshow(img, interpolation="nearest", **kw)
            if col == 1:
                m = np.ma.masked_where(~_plane(mask_a, axis, idx), np.ones_like(img))
                ax.imshow(m, cmap="autumn", alpha=0.5, interpolation="nearest")
            if col == 4:
                fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(cols[col], fontsize=10)
            if col == 0:
                ax.set_ylabel(f"{pname} {idx}", fontsize=10)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    log.info("QC montage written: %s", path)
    return path


def _window(array: np.ndarray, brain: np.ndarray) -> tuple[float, float]:
    lo, hi = np.percentile(array[brain] if brain.any() else array, [1, 99])
    return float(lo), float(hi)


def _checkerboard(a: np.ndarray, b: np.ndarray, tiles: int = 8) -> np.ndarray:
    """2D checkerboard of two equally shaped images (``tiles`` squares along the longer side)."""
    size = max(1, max(a.shape) // tiles)
    yy, xx = np.indices(a.shape)
    return np.where(((yy // size) + (xx // size)) % 2 == 0, a, b)


def qc_pair_montage(
    fixed: Volume,
    moved: Volume,
    lesion_mask: Volume,
    jacobian: Volume,
    path: str | Path,
    title: str = "",
) -> Path:
    """Write a PNG montage of a longitudinal registration on the fixed (follow-up) grid.

    Columns: follow-up, pre-operative scan moved onto it, checkerboard of the two (each
    intensity-windowed to its own 1st-99th brain percentiles, so edges that line up continue
    across the tiles), moved + lesion mask, det J of the non-linear fixed -> moving map. All
    volumes must be on the fixed scan's (canonical RAS) grid. Returns the PNG path.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fix = np.asarray(fixed.array, dtype=np.float32)
    mov = np.asarray(moved.array, dtype=np.float32)
    mask_a = np.asarray(lesion_mask.array) > 0
    brain = fix != fix.flat[0]
    centre = _centre(mask_a if mask_a.sum() >= 100 else np.zeros_like(mask_a), brain)
    flo, fhi = _window(fix, brain)
    mlo, mhi = _window(mov, mov != mov.flat[0])
    fix_n = np.clip((fix - flo) / max(fhi - flo, 1e-6), 0, 1)
    mov_n = np.clip((mov - mlo) / max(mhi - mlo, 1e-6), 0, 1)
    jac = np.asarray(jacobian.array, dtype=np.float32)
    r = float(np.clip(np.percentile(np.abs(jac[brain] - 1), 99) if brain.any() else 0.5, 0.1, 2))
    cols = ["follow-up (fixed)", "pre-op moved", "checkerboard", "moved + lesion", "Jacobian det"]
    planes = [("axial", 2), ("coronal", 1), ("sagittal", 0)]
    fig, axes = plt.subplots(len(planes), len(cols), figsize=(3.0 * len(cols), 3.0 * len(planes)))
    gray = {"cmap": "gray", "vmin": 0, "vmax": 1}
    for row, (pname, axis) in enumerate(planes):
        idx = centre[axis]
        f2, m2 = _plane(fix_n, axis, idx), _plane(mov_n, axis, idx)
        panels = [
            (f2, gray),
            (m2, gray),
            (_checkerboard(f2, m2), gray),
            (m2, gray),
            (_plane(jac, axis, idx), {"cmap": "coolwarm", "vmin": 1 - r, "vmax": 1 + r}),
        ]
        for col, (img, kw) in enumerate(panels):
            ax = axes[row, col]
            im = ax.imshow(img, interpolation="nearest", **kw)
            if col == 3:
                m = np.ma.masked_where(~_plane(mask_a, axis, idx), np.ones_like(img))
                ax.imshow(m, cmap="autumn", alpha=0.5, interpolation="nearest")
            if col == 4:
                fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(cols[col], fontsize=10)
            if col == 0:
                ax.set_ylabel(f"{pname} {idx}", fontsize=10)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    log.info("QC montage written: %s", path)
    return path
