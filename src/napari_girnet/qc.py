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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .data.volume import Volume

__all__ = ["qc_montage", "qc_pair_montage"]

log = logging.getLogger(__name__)

# (image to show, imshow keyword arguments) per column, for one plane (axis, slice index)
Panels = Callable[[int, int], list[tuple[np.ndarray, dict[str, Any]]]]
PLANES = (("axial", 2), ("coronal", 1), ("sagittal", 0))


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


def _window(array: np.ndarray, brain: np.ndarray) -> tuple[float, float]:
    """1st and 99th percentiles of ``array`` in ``brain`` (everywhere when it is empty)."""
    lo, hi = np.percentile(array[brain] if brain.any() else array, [1, 99])
    return float(lo), float(hi)


def _jacobian_panel(jacobian: Volume, brain: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """det J and a diverging colour map centred on 1, spanning its 99th percentile in ``brain``."""
    jac = np.asarray(jacobian.array, dtype=np.float32)
    r = float(np.clip(np.percentile(np.abs(jac[brain] - 1), 99) if brain.any() else 0.5, 0.1, 2))
    return jac, {"cmap": "coolwarm", "vmin": 1 - r, "vmax": 1 + r}


def _write_montage(
    cols: list[str],
    panels: Panels,
    centre: tuple[int, int, int],
    mask: np.ndarray,
    mask_col: int,
    path: str | Path,
    title: str,
) -> Path:
    """Draw one row per plane through ``centre`` with the columns ``panels`` gives; overlay
    ``mask`` on column ``mask_col``; a colour bar on the last column; write the PNG."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(len(PLANES), len(cols), figsize=(3.0 * len(cols), 3.0 * len(PLANES)))
    for row, (pname, axis) in enumerate(PLANES):
        idx = centre[axis]
        for col, (img, kw) in enumerate(panels(axis, idx)):
            ax = axes[row, col]
            im = ax.imshow(img, interpolation="nearest", **kw)
            if col == mask_col:
                m = np.ma.masked_where(~_plane(mask, axis, idx), np.ones_like(img))
                ax.imshow(m, cmap="autumn", alpha=0.5, interpolation="nearest")
            if col == len(cols) - 1:
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
    scan_a = np.asarray(scan.array, dtype=np.float32)
    mask_a = np.asarray(lesion_mask.array) > 0
    brain = scan_a != scan_a.flat[0]
    lo, hi = _window(scan_a, brain)
    jac, jac_kw = _jacobian_panel(jacobian, brain)
    a2s = np.asarray(atlas_to_scan.array, dtype=np.float32)
    inp = np.asarray(inpainted.array, dtype=np.float32)
    gray = {"cmap": "gray", "vmin": lo, "vmax": hi}

    def panels(axis: int, idx: int) -> list[tuple[np.ndarray, dict[str, Any]]]:
        s = _plane(scan_a, axis, idx)
        return [
            (s, gray),
            (s, gray),
            (_plane(inp, axis, idx), gray),
            (_plane(a2s, axis, idx), {"cmap": "gray", "vmin": 0, "vmax": 1}),
            (_plane(jac, axis, idx), jac_kw),
        ]

    cols = ["scan", "scan + lesion mask", "inpainted", "atlas → scan", "Jacobian det"]
    return _write_montage(cols, panels, _centre(mask_a, brain), mask_a, 1, path, title)


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
    fix = np.asarray(fixed.array, dtype=np.float32)
    mov = np.asarray(moved.array, dtype=np.float32)
    mask_a = np.asarray(lesion_mask.array) > 0
    brain = fix != fix.flat[0]
    centre = _centre(mask_a if mask_a.sum() >= 100 else np.zeros_like(mask_a), brain)
    flo, fhi = _window(fix, brain)
    mlo, mhi = _window(mov, mov != mov.flat[0])
    fix_n = np.clip((fix - flo) / max(fhi - flo, 1e-6), 0, 1)
    mov_n = np.clip((mov - mlo) / max(mhi - mlo, 1e-6), 0, 1)
    jac, jac_kw = _jacobian_panel(jacobian, brain)
    gray = {"cmap": "gray", "vmin": 0, "vmax": 1}

    def panels(axis: int, idx: int) -> list[tuple[np.ndarray, dict[str, Any]]]:
        f2, m2 = _plane(fix_n, axis, idx), _plane(mov_n, axis, idx)
        return [(f2, gray), (m2, gray), (_checkerboard(f2, m2), gray), (m2, gray),
                (_plane(jac, axis, idx), jac_kw)]  # fmt: skip

    cols = ["follow-up (fixed)", "pre-op moved", "checkerboard", "moved + lesion", "Jacobian det"]
    return _write_montage(cols, panels, centre, mask_a, 3, path, title)
