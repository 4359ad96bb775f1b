"""Lesion detection as an outlier against the healthy atlas (atlas-residual detector).

GIRNet's premise is that a lesion is the part of a scan that atlas-guided healthy inpainting
cannot predict. This module measures that directly, without a trained network: it compares the
scan with the atlas warped onto it and histogram-matched to it (``T^M``, the very target
GIRNet's InpNet is trained to produce inside a hole), and keeps the region where the scan is
much darker (T1 hypointense lesions: tumour, oedema, stroke, MS "black holes") or brighter than
healthy tissue would be there. It is the classical "outlier against a healthy reference"
approach of automated lesion identification (Seghier et al., NeuroImage 41:1253-1266, 2008)
with GIRNet's atlas and histogram matching as the reference. Anatomy that merely differs from
the atlas (enlarged ventricles, atrophy, a thicker cortex) differs on both sides of the brain,
while tumours and strokes are mostly one-sided, so on the symmetric MNI152 working grid a voxel
must also depart from its mirror image across the mid-sagittal plane (world x = 0), the
asymmetry cue of symmetry-based tumour detection (e.g. Ray, Saha & Basu, ICVGIP 2008).

It serves two roles in :func:`napari_girnet.api.register`: the lesion mask when no trained
SegNet is available (or SegNet's mask is implausible: empty or most of the brain), and the
hole that GIRNet's registration inpaints so that the atlas is not pulled into the lesion.

numpy / scipy only. Arrays are in the volume's array axis order (3D ``(X, Y, Z)``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import ndimage

__all__ = ["OutlierResult", "atlas_outlier_mask", "mirror_left_right"]

log = logging.getLogger(__name__)

Polarity = Literal["hypo", "hyper", "both"]


@dataclass(frozen=True)
class OutlierResult:
    """Output of :func:`atlas_outlier_mask`.

    Attributes
    ----------
    mask : numpy.ndarray
        Bool, the detected lesion (scan grid).
    probability : numpy.ndarray
        Float32 in [0, 1]: ``sigmoid`` of the smaller of the residual's and the asymmetry's
        margins over their thresholds (in robust SDs) inside the eroded brain, so 0.5 at the
        threshold; capped at 0.49 in above-threshold components that were
        not kept, so ``probability > 0.5`` is exactly ``mask``.
    score : numpy.ndarray
        Float32 robust z-score map ``(residual - median) / (1.4826 MAD)`` (0 outside the
        eroded brain).
    threshold : float
        Residual threshold in intensity units: ``max(median + k_mad * 1.4826 * MAD,
        min_contrast)``.
    asymmetry_threshold : float or None
        Asymmetry threshold in intensity units, or None when the criterion was off.
    components : int
        Connected components above threshold before selection.
    """

    mask: np.ndarray
    probability: np.ndarray
    score: np.ndarray
    threshold: float
    asymmetry_threshold: float | None
    components: int


def _check(scan: np.ndarray, healthy: np.ndarray, brain: np.ndarray) -> None:
    if scan.ndim not in (2, 3):
        raise ValueError(f"atlas_outlier_mask needs a 2D or 3D scan, got shape {scan.shape}")
    if healthy.shape != scan.shape or brain.shape != scan.shape:
        raise ValueError(
            f"scan {scan.shape}, healthy reference {healthy.shape} and brain mask {brain.shape} "
            "must be on the same grid"
        )
    if not np.isfinite(scan).all() or not np.isfinite(healthy).all():
        raise ValueError("scan or healthy reference contains NaN or infinite values")
    if not brain.any():
        raise ValueError("the brain mask is empty")


def mirror_left_right(volume: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """``volume`` reflected through the world plane x = 0 (RAS mm), linear interpolation.

    Output voxel ``v`` takes the value at voxel ``A^-1 F A v`` with ``A`` the voxel-to-world
    ``affine`` and ``F = diag(-1, 1, 1)``; outside the grid it is 0. On the MNI152 working grid
    this swaps the hemispheres.
    """
    volume = np.asarray(volume)
    nd = volume.ndim
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (nd + 1, nd + 1):
        raise ValueError(f"affine must be {nd + 1}x{nd + 1} for a {nd}D volume")
    flip = np.eye(nd + 1)
    flip[0, 0] = -1.0
    m = np.linalg.inv(affine) @ flip @ affine
    return ndimage.affine_transform(
        volume.astype(np.float64), m[:nd, :nd], offset=m[:nd, nd], order=1, cval=0.0
    )


def _robust(values: np.ndarray) -> tuple[float, float]:
    median = float(np.median(values))
    mad = 1.4826 * float(np.median(np.abs(values - median)))
    return median, max(mad, 1e-6)


def atlas_outlier_mask(
    scan: np.ndarray,
    healthy: np.ndarray,
    brain: np.ndarray,
    spacing_mm: float | tuple[float, ...] = 1.0,
    *,
    affine: np.ndarray | None = None,
    smoothing_mm: float = 4.0,
    k_mad: float = 1.5,
    k_asym: float = 2.0,
    min_contrast: float = 0.05,
    polarity: Polarity = "hypo",
    erode_mm: float = 4.0,
    min_volume_mm3: float = 100.0,
    largest_only: bool = True,
    hysteresis: float = 0.75,
) -> OutlierResult:
    """Lesion mask where the scan departs from the healthy (atlas) reference.

    Steps: brain-normalised Gaussian smoothing (``smoothing_mm`` standard deviation) of both
    images, so that voxels outside the brain do not leak in; residual ``healthy - scan``
    (``"hypo"``), ``scan - healthy`` (``"hyper"``) or its absolute value (``"both"``) inside
    the brain eroded by ``erode_mm`` (the skull-stripping edge and the cortex-CSF boundary are
    the largest residuals of any healthy scan); robust z-score ``(r - median) / (1.4826 MAD)``
    over the eroded brain; a voxel is an outlier when its z-score exceeds ``k_mad`` and its
    residual ``min_contrast``. With ``affine`` (a grid symmetric about world x = 0, such as the
    MNI152 working grid) it must also depart from its mirror voxel in the same direction: the
    smoothed scan's asymmetry (mirror minus voxel for "hypo") above ``k_asym`` robust SDs and
    ``min_contrast``. Then connected components (26-connectivity in 3D) of at least
    ``min_volume_mm3``; the largest one (``largest_only``, a single lesion such as a tumour or a
    stroke) or all of them; finally hysteresis: the kept components grow into the connected
    region that passes the thresholds scaled by ``hysteresis``.

    Parameters
    ----------
    scan : numpy.ndarray
        ``(X, Y, Z)`` (or ``(H, W)``) scan, intensities in [0, 1], 0 outside the brain.
    healthy : numpy.ndarray
        The healthy reference on the same grid and intensity scale: the atlas warped onto the
        scan and histogram-matched to it (``T^M``), or InpNet's healthy reconstruction.
    brain : numpy.ndarray
        Bool brain mask on the same grid.
    spacing_mm : float or tuple
        Voxel spacing in mm (one value or one per axis).
    affine : numpy.ndarray, optional
        Voxel-to-world affine (RAS mm) of the grid; enables the left-right asymmetry criterion.
        Give it only for grids whose world x = 0 is the mid-sagittal plane.
    smoothing_mm : float
        Gaussian standard deviation in mm (default 4 mm: smaller than a tumour, larger than the
        residual misregistration of cortical folds).
    k_mad : float
        Threshold on the residual, in its robust standard deviations.
    k_asym : float
        Threshold on the left-right asymmetry, in its robust standard deviations.
    min_contrast : float
        Smallest residual (and asymmetry) that counts, in the scan's intensity units (the
        [0, 1] range), so that a reference that matches healthy tissue almost perfectly (tiny
        MAD) does not turn the smoothed halo of a lesion into lesion.
    polarity : {"hypo", "hyper", "both"}
        Which departures count. T1 lesions are hypointense (default); ``"hyper"`` for
        contrast-enhanced T1 or FLAIR-like contrasts.
    erode_mm : float
        Erosion of the brain mask before scoring, in mm.
    min_volume_mm3 : float
        Components smaller than this are dropped.
    largest_only : bool
        Keep only the largest component.
    hysteresis : float
        Hysteresis thresholding: the kept components grow into the connected region that
        passes ``hysteresis`` times the thresholds ``k_mad`` / ``k_asym`` (1 = off). The strong
        thresholds decide *whether* there is a lesion, the weak ones *how far* it extends.

    Returns
    -------
    OutlierResult

    Raises
    ------
    ValueError
        On shape mismatch, non-finite values, an empty brain mask, an unknown polarity or an
        affine of the wrong size.
    """
    scan = np.asarray(scan, dtype=np.float64)
    healthy = np.asarray(healthy, dtype=np.float64)
    brain = np.asarray(brain, dtype=bool)
    _check(scan, healthy, brain)
    if polarity not in ("hypo", "hyper", "both"):
        raise ValueError(f"polarity must be 'hypo', 'hyper' or 'both', got {polarity!r}")
    spacing = np.broadcast_to(np.asarray(spacing_mm, dtype=float), (scan.ndim,))
    sigma = smoothing_mm / spacing
    weight = ndimage.gaussian_filter(brain.astype(np.float64), sigma) + 1e-6
    s = ndimage.gaussian_filter(np.where(brain, scan, 0.0), sigma) / weight
    h = ndimage.gaussian_filter(np.where(brain, healthy, 0.0), sigma) / weight
    signed = {"hypo": h - s, "hyper": s - h, "both": np.abs(h - s)}
    residual = signed[polarity]
    iterations = round(erode_mm / float(spacing.min()))
    core = ndimage.binary_erosion(brain, iterations=iterations) if iterations > 0 else brain
    if not core.any():
        core = brain
    asym = None
    if affine is not None:
        mirrored_core = mirror_left_right(core.astype(np.float64), affine) > 0.5
        if (core & mirrored_core).any():
            core = core & mirrored_core
            s_mirror = mirror_left_right(s, affine)
            asym = {"hypo": s_mirror - s, "hyper": s - s_mirror, "both": np.abs(s - s_mirror)}[
                polarity
            ]
    median, mad = _robust(residual[core])
    threshold = max(median + k_mad * mad, min_contrast)
    score = np.where(core, (residual - median) / mad, 0.0).astype(np.float32)
    above = core & (residual > threshold)
    weak = core & (residual > max(median + hysteresis * k_mad * mad, min_contrast))
    asym_threshold = None
    a_mad = 1.0
    if asym is not None:
        a_median, a_mad = _robust(asym[core])
        asym_threshold = max(a_median + k_asym * a_mad, min_contrast)
        above &= asym > asym_threshold
        weak &= asym > max(a_median + hysteresis * k_asym * a_mad, min_contrast)
    structure = ndimage.generate_binary_structure(scan.ndim, scan.ndim)
    labels, n = ndimage.label(above, structure=structure)
    mask = np.zeros_like(above)
    if n:
        sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
        voxel_mm3 = float(np.prod(spacing))
        keep = np.flatnonzero(sizes * voxel_mm3 >= min_volume_mm3) + 1
        if keep.size:
            if largest_only:
                keep = keep[[int(np.argmax(sizes[keep - 1]))]]
            mask = np.isin(labels, keep)
    if mask.any() and hysteresis < 1.0:
        # hysteresis: grow the kept components within the weaker outlier region around them
        weak_labels, _ = ndimage.label(weak | mask, structure=structure)
        grown = np.unique(weak_labels[mask])
        mask = np.isin(weak_labels, grown[grown > 0])
    log.info(
        "atlas outlier: residual threshold %.3f (median %.3f, robust SD %.3f), asymmetry "
        "threshold %s, %d components, kept %d voxels",
        threshold,
        median,
        mad,
        "off" if asym_threshold is None else f"{asym_threshold:.3f}",
        n,
        int(mask.sum()),
    )
    logit = (residual - threshold) / mad
    if asym is not None:
        logit = np.minimum(logit, (asym - asym_threshold) / a_mad)
    logit = np.clip(logit, -50.0, 50.0)
    probability = np.where(core, 1.0 / (1.0 + np.exp(-logit)), 0.0)
    probability = np.where(mask, np.maximum(probability, 0.501), np.minimum(probability, 0.49))
    return OutlierResult(
        mask=mask,
        probability=probability.astype(np.float32),
        score=score,
        threshold=threshold,
        asymmetry_threshold=asym_threshold,
        components=int(n),
    )
