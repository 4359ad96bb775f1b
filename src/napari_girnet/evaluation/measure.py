"""The one metrics path used by the API, the CLI and the widgets.

:func:`mask_metrics` scores a predicted lesion mask against a truth mask on the same grid;
:func:`landmark_tre` scores paired landmarks, optionally mapped through a displacement field
file. ``api.register`` (``RegistrationResult.metrics``), ``api.evaluate`` / ``girnet evaluate``
and the Evaluate / Apply widgets all call these, so a number means the same everywhere.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import metrics

__all__ = ["label_dice", "landmark_tre", "mask_metrics"]


def mask_metrics(
    pred: np.ndarray,
    truth: np.ndarray,
    spacing: Sequence[float] | np.ndarray,
    names: tuple[str, str] = ("prediction", "truth"),
) -> dict[str, Any]:
    """Dice, HD95 (mm) and volumes (mm^3) of two masks on the same grid (nonzero = lesion).

    Parameters
    ----------
    pred, truth : numpy.ndarray
        ``(X, Y, Z)`` (or 2D) masks in the same array axis order.
    spacing : sequence of float
        Voxel size in mm along the array axes (extra leading entries are ignored).
    names : (str, str)
        How the two inputs are named in errors (files or layers).

    Returns
    -------
    dict
        ``dice``, ``hd95_mm`` (``inf`` when one mask is empty), ``predicted_volume_mm3``,
        ``truth_volume_mm3``.

    Raises
    ------
    ValueError
        If the shapes differ (the message names both inputs).
    """
    p = np.asarray(pred) != 0
    t = np.asarray(truth) != 0
    if p.shape != t.shape:
        raise ValueError(f"{names[0]} {p.shape} and {names[1]} {t.shape} are not on the same grid")
    sp = [float(s) for s in spacing][-p.ndim :]
    return {
        "dice": metrics.dice(p, t),
        "hd95_mm": metrics.hd95(p, t, sp),
        "truth_volume_mm3": metrics.volume_mm3(t, sp),
        "predicted_volume_mm3": metrics.volume_mm3(p, sp),
    }


def label_dice(pred: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    """Per-label Dice of two label maps: ``dice_per_label`` {label: dice} and its mean.

    Labels are the nonzero values of ``truth``; the mean is NaN when ``truth`` has none.
    """
    p, t = np.asarray(pred), np.asarray(truth)
    per = {int(lab): metrics.dice(p == lab, t == lab) for lab in np.unique(t) if lab != 0}
    mean = float(np.mean(list(per.values()))) if per else float("nan")
    return {"dice_per_label": per, "dice_mean_label": mean}


def landmark_tre(
    ids: Sequence[str],
    moving_mm: np.ndarray,
    fixed_mm: np.ndarray,
    field: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Target registration error of paired landmarks, optionally through a displacement field.

    Parameters
    ----------
    ids : sequence of str
        Landmark ids, one per row.
    moving_mm, fixed_mm : numpy.ndarray
        ``(N, 3)`` paired points, world RAS mm.
    field : path, optional
        Displacement field NIfTI on the fixed grid mapping fixed points to moving points (ITK
        or girnet voxel convention, :func:`~napari_girnet.data.nifti.read_displacement`): a
        fixed point ``p`` maps to ``p + u(p)``. Without it TRE is the initial distance.

    Returns
    -------
    dict
        ``mean``, ``sd``, ``median``, ``max`` (mm), ``n`` and ``per_landmark`` ``{id: mm}``.

    Raises
    ------
    ValueError
        Bad points (``NiftiError`` for a bad field file).
    """
    from ..data.nifti import read_displacement

    fixed = np.asarray(fixed_mm, dtype=np.float64).reshape(-1, 3)
    mapped = fixed.copy()
    if field is not None:
        disp_vox, grid = read_displacement(field)
        q = grid.world_to_voxel(fixed)
        mapped = grid.voxel_to_world(q + metrics.sample_displacement(disp_vox, q))
    dist = metrics.tre(mapped, np.asarray(moving_mm, dtype=np.float64).reshape(-1, 3))
    summary: dict[str, Any] = dict(metrics.tre_summary(dist))
    summary["per_landmark"] = {str(i): float(d) for i, d in zip(ids, dist, strict=True)}
    return summary
