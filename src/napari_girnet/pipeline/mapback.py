"""Map-back: the working-grid prediction onto the scan's native grid, the atlas grid and RAS mm.

This is where the pipeline's tensors cross to numpy, once.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..core.model import Prediction
from ..data.atlas import Atlas
from ..data.fields import atlas_to_scan_fields, scan_to_atlas_field
from ..data.preprocess import PreparedScan
from ..data.volume import Volume

__all__ = ["intensity_range", "map_back"]


def intensity_range(
    prepared: PreparedScan, low: float = 0.5, high: float = 99.5
) -> tuple[float, float]:
    """The ``(low, high)`` percentiles of the native scan inside its brain mask.

    The same values :func:`~napari_girnet.data.preprocess.normalize_intensity` mapped to [0, 1]
    in :func:`~napari_girnet.data.preprocess.prepare_scan` (float32 values, numpy's linear
    percentile), in the scan's own intensity units. Computed once by the prepare stage and
    carried in the working state.
    """
    native = np.asarray(prepared.native.array).astype(np.float32)
    brain = np.asarray(prepared.native_mask.array).astype(bool)
    vals = native[brain] if brain.any() else native.ravel()
    lo, hi = np.percentile(vals, [low, high])
    return float(lo), float(hi)


def map_back(
    pred: Prediction,
    prepared: PreparedScan,
    atlas: Atlas,
    scan: Volume,
    scan_range: tuple[float, float],
) -> dict[str, Any]:
    """Working-grid prediction -> native-grid volumes, atlas-grid volume, world-mm fields.

    Parameters
    ----------
    pred : Prediction
        Batch of one on the working grid (CPU tensors). ``pred.phi_ts`` / ``pred.phi_st`` are
        displacements in voxels (scan grid -> atlas voxels and atlas grid -> scan voxels).
    prepared : PreparedScan
        The scan's alignment and masks.
    atlas : Atlas
        The working grid.
    scan : Volume
        The native scan (canonical RAS).
    scan_range : (float, float)
        The intensity normalisation's percentiles (:func:`intensity_range`): the inpainted
        scan is mapped back to the scan's units with them.

    Returns
    -------
    dict
        The volumes and fields of :class:`~napari_girnet.pipeline.result.RegistrationResult`:
        ``lesion_probability``, ``lesion_mask``, ``inpainted``, ``atlas_to_scan``,
        ``jacobian`` (native grid), ``scan_to_atlas`` (atlas grid), ``field_atlas_to_scan``
        and ``field_nonlinear`` (``(3, X, Y, Z)`` RAS mm displacements on the native grid) and
        ``field_scan_to_atlas`` (``(3, X, Y, Z)`` RAS mm displacement on the atlas grid).
    """
    grid = atlas.image

    def on_grid(t: torch.Tensor, name: str) -> Volume:
        return grid.with_array(t[0, 0].numpy().astype(np.float32), name=name)

    prob = prepared.to_native(on_grid(pred.lesion_probability, "lesion_probability"), order=1)
    brain = prepared.native_mask.array.astype(bool)
    prob_arr = np.where(brain, prob.array, 0.0).astype(np.float32)
    mask_grid = on_grid(pred.lesion_mask.float(), "lesion_mask")
    mask_arr = (prepared.to_native(mask_grid, order=1).array > 0.5) & brain
    inpainted_norm = prepared.to_native(on_grid(pred.inpainted, "inpainted"), order=1).array
    native = scan.array.astype(np.float32)
    lo, hi = scan_range
    inpainted = np.where(mask_arr, inpainted_norm * (hi - lo) + lo, native).astype(np.float32)
    a2s = prepared.to_native(on_grid(pred.atlas_to_scan, "atlas_to_scan"), order=1)
    jac = prepared.to_native(on_grid(pred.jacobian, "jacobian"), order=1)
    matrix = np.asarray(prepared.alignment.matrix)
    full, nonlinear = atlas_to_scan_fields(pred.phi_ts[0].numpy(), grid, scan, matrix)
    return {
        "lesion_probability": prob.with_array(prob_arr, name="lesion_probability"),
        "lesion_mask": prob.with_array(mask_arr.astype(np.uint8), name="lesion_mask"),
        "inpainted": prob.with_array(inpainted, name="inpainted"),
        "atlas_to_scan": a2s.with_array(a2s.array.astype(np.float32), name="atlas_to_scan"),
        "jacobian": jac.with_array(
            np.where(jac.array == 0, 1.0, jac.array).astype(np.float32), name="jacobian"
        ),
        "scan_to_atlas": on_grid(pred.scan_to_atlas, "scan_to_atlas"),
        "field_atlas_to_scan": full,
        "field_nonlinear": nonlinear,
        "field_scan_to_atlas": scan_to_atlas_field(pred.phi_st[0].numpy(), grid, matrix),
    }
