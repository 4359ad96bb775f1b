"""Post-processing of predicted lesion masks (GIRNet's random-walker "PP" step).

:func:`random_walker_refine` is the step itself (scikit-image's ``random_walker``);
:func:`refine_on_grid` applies it to a working-grid mask of a prepared scan and rejects a
refinement that leaked. numpy / scipy / scikit-image only. Arrays are in the volume's array
axis order (3D ``(X, Y, Z)``, 2D ``(H, W)``).
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import numpy as np
from scipy import ndimage
from skimage.segmentation import random_walker

from ..data.preprocess import PreparedScan

__all__ = ["random_walker_refine", "refine_on_grid"]

logger = logging.getLogger(__name__)

_RW_MODES = ("cg_j", "cg", "cg_mg", "bf")


def _erode_to_fraction(region: np.ndarray, fraction: float, size: int, max_iter: int) -> np.ndarray:
    """Erode ``region`` with a ``size**ndim`` min filter until ``|region| <= fraction * |orig|``.

    Stops early, keeping the last non-empty result, when the next erosion would be empty, when an
    erosion no longer changes the region (it fills the array), or after ``max_iter`` erosions.
    """
    target = fraction * float(np.count_nonzero(region))
    current = region
    for _ in range(max_iter):
        if np.count_nonzero(current) <= target:
            break
        eroded = ndimage.minimum_filter(current.view(np.uint8), size=size, mode="nearest") > 0
        if not eroded.any() or np.array_equal(eroded, current):
            break
        current = eroded
    return current


def random_walker_refine(
    image: np.ndarray,
    probability: np.ndarray,
    threshold: float = 0.5,
    margin: int = 30,
    fg_fraction: float = 0.4,
    bg_fraction: float = 0.8,
    erosion_size: int = 5,
    beta: float = 1000.0,
    mode: str = "cg_j",
    seed_max_iter: int = 100,
) -> np.ndarray:
    """Refine a thresholded lesion probability map with the random walker (GIRNet "PP").

    Steps (Liu & Gu, MICCAI 2023, Table 1 "PP"; upstream code github.com/ly1998117/GIRNet
    ``RandomWalk(crop=True, expand=30, beta=1000, fp=0.4, bp=0.8, kernel_size=5)``):

    1. binarise: ``fg = probability > threshold``; an empty ``fg`` is returned unchanged
       (all False) with a logged warning;
    2. crop to the bounding box of ``fg`` dilated by ``margin`` voxels on each side, clipped to
       the array;
    3. foreground seeds: ``fg`` (in the crop) eroded repeatedly with an ``erosion_size**ndim``
       min filter until its voxel count is ``<= fg_fraction`` of the original; if the next erosion
       would be empty (or would not change it) the last non-empty erosion is kept;
    4. background seeds: the crop's background eroded the same way down to ``bg_fraction``;
    5. markers background = 1, foreground = 2, unlabelled = 0;
       ``skimage.segmentation.random_walker(image_crop, markers, beta=beta, mode=mode)``;
    6. foreground = label 2, pasted into a full-size False array.

    Parameters
    ----------
    image : numpy.ndarray
        2D ``(H, W)`` or 3D ``(X, Y, Z)`` intensity image, used as given (converted to float64).
        It should be in [0, 1] like the network inputs (``docs/conventions.md``); scikit-image
        divides ``beta`` by ``10 * std`` of the cropped image, so only the relative contrast
        matters, but ``beta=1000`` was tuned for [0, 1] images.
    probability : numpy.ndarray
        Same-shape lesion probability map (e.g. ``theta(S)`` in [0, 1]) or a binary mask.
    threshold : float
        Binarisation threshold (strict ``>``); default 0.5.
    margin : int
        Crop margin in voxels (>= 0); default 30.
    fg_fraction, bg_fraction : float
        Target fraction (0, 1] of the foreground / crop-background volume kept as seeds; defaults
        0.4 and 0.8.
    erosion_size : int
        Side of the cubic (square in 2D) min-filter used for the erosions (>= 2); default 5.
        Out-of-array voxels replicate the nearest edge (``mode="nearest"``), so regions touching
        the crop border are not eroded from that side.
    beta : float
        Random-walker edge penalty (> 0); default 1000.
    mode : str
        Linear solver of :func:`skimage.segmentation.random_walker`: ``"cg_j"`` (default),
        ``"cg"``, ``"cg_mg"`` (needs pyamg) or ``"bf"``.
    seed_max_iter : int
        Maximum number of erosions per seed region (>= 1); default 100.

    Returns
    -------
    numpy.ndarray
        Boolean mask with the shape of ``image``. The binarised prediction itself is returned
        (with a logged warning) when it is empty, when it fills the whole crop (no background
        seeds possible) or when the cropped image is constant (the random walker is undefined).

    Raises
    ------
    ValueError
        Shapes differ, ``ndim`` not 2 or 3, empty arrays, NaN/inf values, or a parameter out of
        range.

    Notes
    -----
    Grady (2006), "Random walks for image segmentation", IEEE TPAMI 28(11), as implemented in
    scikit-image. In the GIRNet release this step is used only in the plotting/test path
    (``reference-implementations.md`` 1.10).
    """
    img = _check_image(image, "image")
    prob = _check_image(probability, "probability")
    if img.shape != prob.shape:
        raise ValueError(
            f"image and probability must have the same shape, got {img.shape} and {prob.shape}"
        )
    thr = _finite_float(threshold, "threshold")
    _check_int(margin, "margin", minimum=0)
    _check_int(erosion_size, "erosion_size", minimum=2)
    _check_int(seed_max_iter, "seed_max_iter", minimum=1)
    for name, val in (("fg_fraction", fg_fraction), ("bg_fraction", bg_fraction)):
        f = _finite_float(val, name)
        if not 0.0 < f <= 1.0:
            raise ValueError(f"{name}: expected a fraction in (0, 1], got {val!r}")
    b = _finite_float(beta, "beta")
    if b <= 0:
        raise ValueError(f"beta: expected a value > 0, got {beta!r}")
    if mode not in _RW_MODES:
        raise ValueError(f"mode: expected one of {_RW_MODES}, got {mode!r}")

    fg = prob > thr
    if not fg.any():
        logger.warning("random_walker_refine: the thresholded prediction is empty; returned as is")
        return fg

    # 2. crop: bounding box of fg dilated by margin, clipped to the array
    idx = np.nonzero(fg)
    crop = tuple(
        slice(max(int(ax.min()) - margin, 0), min(int(ax.max()) + margin + 1, n))
        for ax, n in zip(idx, fg.shape, strict=True)
    )
    fg_c = fg[crop]
    img_c = img[crop].astype(np.float64)
    bg_c = ~fg_c
    if not bg_c.any():
        logger.warning(
            "random_walker_refine: the prediction fills the whole crop; no background seeds, "
            "returned as is"
        )
        return fg
    if not np.ptp(img_c) > 0:
        logger.warning("random_walker_refine: the cropped image is constant; returned as is")
        return fg

    # 3-4. seeds
    fg_seeds = _erode_to_fraction(fg_c, float(fg_fraction), int(erosion_size), int(seed_max_iter))
    bg_seeds = _erode_to_fraction(bg_c, float(bg_fraction), int(erosion_size), int(seed_max_iter))
    markers = np.zeros(fg_c.shape, dtype=np.int32)
    markers[bg_seeds] = 1
    markers[fg_seeds] = 2
    logger.debug(
        "random_walker_refine: crop %s, %d fg seeds of %d, %d bg seeds of %d",
        fg_c.shape,
        int(fg_seeds.sum()),
        int(fg_c.sum()),
        int(bg_seeds.sum()),
        int(bg_c.sum()),
    )

    # 5. random walker (skip it when nothing is left unlabelled)
    labels = _run_random_walker(img_c, markers, b, mode) if np.any(markers == 0) else markers

    # 6. paste back
    out = np.zeros(fg.shape, dtype=bool)
    out[crop] = labels == 2
    return out


def _run_random_walker(img: np.ndarray, markers: np.ndarray, beta: float, mode: str) -> np.ndarray:
    """Call scikit-image's random walker and route its warnings to the logger.

    With large ``beta`` (GIRNet: 1000) the solver routinely reports probabilities slightly outside
    [0, 1]; this does not affect the arg-max labels and is logged at DEBUG level. Other warnings
    (e.g. conjugate-gradient non-convergence) are logged at WARNING level.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        labels = random_walker(img, markers, beta=beta, mode=mode)
    for w in caught:
        msg = str(w.message)
        level = logging.DEBUG if "probability range" in msg else logging.WARNING
        logger.log(level, "random_walker_refine: scikit-image: %s", msg)
    return labels


def _check_image(x: object, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype == object or not (
        np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.bool_)
    ):
        raise ValueError(f"{name}: expected a numeric or boolean array, got dtype {arr.dtype}")
    if arr.ndim not in (2, 3):
        raise ValueError(f"{name}: expected a 2D or 3D array, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name}: array is empty (shape {arr.shape})")
    if np.issubdtype(arr.dtype, np.inexact) and not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: contains NaN or infinite values")
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    return arr


def _finite_float(x: object, name: str) -> float:
    try:
        v = float(x)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: expected a number, got {x!r}") from exc
    if not np.isfinite(v):
        raise ValueError(f"{name}: expected a finite number, got {x!r}")
    return v


def _check_int(x: object, name: str, minimum: int) -> None:
    if isinstance(x, bool) or not isinstance(x, int | np.integer) or int(x) < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {x!r}")


def refine_on_grid(
    prepared: PreparedScan, mask: np.ndarray, max_growth: float = 2.0
) -> tuple[np.ndarray, dict[str, Any]]:
    """GIRNet's random-walker post-processing of a working-grid mask (``(X, Y, Z)`` bool).

    Runs on the working grid, where GIRNet predicts (the upstream settings are in voxels), on
    the normalised scan ``prepared.image``. The random walker has no shape prior: where the
    mask sits in tissue with weak edges it can flood a whole region (measured: a 7.6 mL false
    candidate on the healthy Colin27 became 62 mL). A refinement that grows the mask more than
    ``max_growth`` times is therefore rejected and the mask kept. An empty mask is returned
    unchanged.

    Returns
    -------
    mask : numpy.ndarray
        Refined (or unchanged) bool mask, ``(X, Y, Z)`` on the working grid.
    info : dict
        ``{"refine": "accepted" | "rejected" | "skipped (empty mask)", "growth": float}``.
    """
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return mask, {"refine": "skipped (empty mask)", "growth": 1.0}
    grid_brain = np.asarray(prepared.mask.array, dtype=bool)
    image = np.asarray(prepared.image.array, dtype=np.float32)
    refined = random_walker_refine(image, mask.astype(np.float32), threshold=0.5) & grid_brain
    growth = float(refined.sum()) / float(mask.sum())
    if growth > max_growth:
        logger.warning(
            "random-walker refinement grew the mask %.1fx (limit %.1fx): kept the unrefined mask",
            growth,
            max_growth,
        )
        return mask, {"refine": "rejected", "growth": growth}
    return refined, {"refine": "accepted", "growth": growth}
