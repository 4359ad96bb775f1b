"""Scores of one registration against the known truth.

Every field here is a **voxel displacement** ``(3, X, Y, Z)`` on the scan grid (array axes of
the canonical RAS grid): scan voxel ``x`` corresponds to reference voxel ``x + d(x)`` (the
reference is the atlas or the healthy brain, on the same grid). That is the convention of
``field.nii.gz`` of :mod:`napari_girnet.data.synthetic` and of GIRNet's
``field_atlas_to_scan.nii.gz`` / ANTs' forward warp once read with
:func:`napari_girnet.data.nifti.read_displacement`.

Metrics (mm, percent, Dice in [0, 1]):

* ``mde_in`` / ``mde_near`` / ``mde_far`` / ``mde_brain``: mean deformation error per region,
  :func:`napari_girnet.evaluation.metrics.mean_deformation_error` (near = within 30 mm of the
  lesion, far = beyond, both in the brain without the lesion);
* ``label_dice``: mean over the labels present in the truth of the Dice between the reference
  labels carried by the estimated map and by the true map (nearest-neighbour warping);
* ``fold_pct``: percentage of brain voxels with det J <= 0 of ``x -> x + d(x)``;
* ``lesion_dice`` / ``lesion_hd95``: the tool's lesion mask against the truth (tools with a
  mask only), :func:`~napari_girnet.evaluation.metrics.dice` and ``hd95``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from napari_girnet.core.spatial import jacobian_determinant, warp
from napari_girnet.evaluation.metrics import dice, folding_fraction, hd95, mean_deformation_error


def warp_labels(labels: np.ndarray, disp: np.ndarray) -> np.ndarray:
    """``out(x) = labels(x + disp(x))`` with nearest-neighbour sampling, zeros outside.

    Parameters
    ----------
    labels : numpy.ndarray
        ``(X, Y, Z)`` integer label map on the reference grid.
    disp : numpy.ndarray
        ``(3, X, Y, Z)`` voxel displacement on the scan grid.
    """
    src = torch.from_numpy(np.ascontiguousarray(labels).astype(np.int32))[None, None]
    field = torch.from_numpy(np.ascontiguousarray(disp, dtype=np.float32))[None]
    with torch.no_grad():
        out = warp(src.float(), field, mode="nearest")
    return out[0, 0].numpy().round().astype(np.int32)


def mean_label_dice(pred: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean Dice over the non-zero labels present in ``truth`` (inside ``mask`` if given).

    A label missing from ``pred`` scores 0. Returns NaN when ``truth`` has no label.
    """
    p = np.asarray(pred)
    t = np.asarray(truth)
    if mask is not None:
        m = np.asarray(mask, dtype=bool)
        p, t = np.where(m, p, 0), np.where(m, t, 0)
    labels = [int(v) for v in np.unique(t) if v != 0]
    if not labels:
        return float("nan")
    return float(np.mean([dice(p == v, t == v) for v in labels]))


def fold_percent(disp: np.ndarray, brain: np.ndarray) -> float:
    """Percentage of ``brain`` voxels where det J of ``x -> x + disp(x)`` is <= 0."""
    det = jacobian_determinant(torch.from_numpy(np.ascontiguousarray(disp, np.float32))[None])
    return 100.0 * folding_fraction(det[0, 0].numpy(), brain)


def score_field(
    disp: np.ndarray,
    truth: np.ndarray,
    lesion: np.ndarray,
    brain: np.ndarray,
    spacing: Sequence[float],
    ref_labels: np.ndarray | None = None,
    truth_labels: np.ndarray | None = None,
    pred_mask: np.ndarray | None = None,
) -> dict[str, float]:
    """All metrics of one estimated field (module docstring); missing inputs give NaN.

    Parameters
    ----------
    disp, truth : numpy.ndarray
        ``(3, X, Y, Z)`` estimated and true voxel displacements on the scan grid.
    lesion, brain : numpy.ndarray
        ``(X, Y, Z)`` true lesion and brain masks of the scan.
    spacing : sequence of float
        Voxel size in mm along the array axes.
    ref_labels : numpy.ndarray, optional
        Label map on the reference grid; ``truth_labels`` defaults to it carried by ``truth``.
    pred_mask : numpy.ndarray, optional
        The tool's lesion mask on the scan grid.
    """
    mde = mean_deformation_error(disp, truth, lesion, brain, spacing)
    out = {
        "mde_in": mde["in"]["mean"],
        "mde_near": mde["near"]["mean"],
        "mde_far": mde["far"]["mean"],
        "mde_brain": mde["brain"]["mean"],
        "fold_pct": fold_percent(disp, brain),
        "label_dice": float("nan"),
        "lesion_dice": float("nan"),
        "lesion_hd95": float("nan"),
    }
    if ref_labels is not None:
        if truth_labels is None:
            truth_labels = warp_labels(ref_labels, truth)
        out["label_dice"] = mean_label_dice(warp_labels(ref_labels, disp), truth_labels, brain)
    if pred_mask is not None:
        out["lesion_dice"] = dice(pred_mask, lesion)
        out["lesion_hd95"] = hd95(pred_mask, lesion, spacing)
    return out
