"""Realistic T1 appearance for lesions that come as masks only, and whole-scan augmentation.

GIRNet's pseudo dataset (Liu & Gu, MICCAI 2023; arXiv 2310.11040 Fig. 7) pastes real lesions *with
their own intensities*, histogram-matched to the healthy brain. Most real lesion shapes available to
this project (stroke masks, most MS masks) come without a T1 image, and the only real lesion T1s
(the bundled glioma and MS patients 07 and 19) are held out of training. This module gives such
masks a T1 appearance from the **healthy brain's own cerebrospinal fluid (CSF)**: chronic lesions on
T1 are hypointense towards CSF (stroke cavities, MS "black holes", necrosis), so the CSF/ventricle
intensity distribution of the same brain is the reference lesion distribution.

Recipes (all numpy/scipy; every random choice from a ``numpy.random.Generator``; the same
generator state gives the same bytes):

* :func:`rank_transplant` - lesion voxels take the values of the reference (CSF) distribution
  at the ranks of a smooth random field inside the mask (the rank transplant of the
  ``napari_girnet.datasets`` MS appearance, with the healthy CSF as donor), blended with the
  healthy tissue by ``contrast``.
* :func:`csf_like` - hypointensity towards the CSF level with a smooth random texture
  (multiplicative modulation of the contrast) and a partial-volume rim (the intensity change
  is smoothed by a Gaussian of ``pv_sigma`` voxels, so it fades over about one voxel across
  the mask border).
* :func:`synthetic_tumour` - a smooth random shape (a randomly oriented ellipsoid whose
  normalised radius is perturbed by smooth noise, thresholded to a target volume) with a dark
  necrotic core, an iso-intense (enhancing on T1c, iso on T1) rim and mildly hypointense
  surrounding oedema; :func:`radial_push` gives the optional mass effect (a smooth radial
  diffeomorphism).
* :func:`augment_intensity` - whole-scan bias field (smooth multiplicative), gamma and
  Gaussian or Rician noise, regenerated exactly from its recorded parameters.

Intensities are those of the working grid: float32 in [0, 1], 0 outside the brain.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage as ndi

__all__ = [
    "AppearanceError",
    "TissueStats",
    "augment_intensity",
    "csf_like",
    "draw_augmentation",
    "radial_push",
    "rank_transplant",
    "smooth_field",
    "synthetic_tumour",
    "tissue_stats",
    "tumour_shape",
]

logger = logging.getLogger(__name__)


class AppearanceError(ValueError):
    """Bad input to an appearance recipe (empty mask, wrong shapes, bad parameters)."""


# --------------------------------------------------------------------------- helpers
def smooth_field(shape: Sequence[int], sigma_vox: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian-smoothed standard-normal noise, rescaled to zero mean and unit std.

    Parameters
    ----------
    shape : sequence of int
        Grid shape ``(X, Y, Z)``.
    sigma_vox : float
        Gaussian sigma in voxels (> 0).
    rng : numpy.random.Generator
        Randomness (advanced).

    Returns
    -------
    numpy.ndarray
        float64 array of ``shape``.
    """
    if not sigma_vox > 0:
        raise AppearanceError(f"smooth_field: sigma must be > 0, got {sigma_vox}")
    noise = ndi.gaussian_filter(rng.standard_normal(tuple(int(s) for s in shape)), sigma_vox)
    std = float(noise.std())
    return (noise - noise.mean()) / (std if std > 0 else 1.0)


def _coarse_field(shape: Sequence[int], sigma_vox: float, rng: np.random.Generator) -> np.ndarray:
    """A very smooth unit-variance field, drawn on a 4x coarser grid and upsampled linearly.

    Cheaper than :func:`smooth_field` for large sigmas (a bias field); coarse shape
    ``ceil(n / 4) + 1`` per axis, sigma ``sigma_vox / 4``.
    """
    shape_t = tuple(int(s) for s in shape)
    coarse = tuple(-(-n // 4) + 1 for n in shape_t)
    small = smooth_field(coarse, max(sigma_vox / 4.0, 0.5), rng)
    coords = np.meshgrid(*[np.arange(n, dtype=np.float64) / 4.0 for n in shape_t], indexing="ij")
    out = ndi.map_coordinates(small, coords, order=1, mode="nearest")
    std = float(out.std())
    return (out - out.mean()) / (std if std > 0 else 1.0)


def _check(healthy: np.ndarray, mask: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    h = np.asarray(healthy, dtype=np.float32)
    m = np.asarray(mask, dtype=bool)
    if h.shape != m.shape or h.ndim != 3:
        raise AppearanceError(f"{what}: image {h.shape} and mask {m.shape} must be one 3D grid")
    if not m.any():
        raise AppearanceError(f"{what}: empty lesion mask")
    return h, m


def _ranks01(values: np.ndarray) -> np.ndarray:
    ranks = np.argsort(np.argsort(values, kind="stable"), kind="stable")
    return (ranks + 0.5) / max(ranks.size, 1)


def _paste(healthy: np.ndarray, delta: np.ndarray, pv_sigma: float) -> np.ndarray:
    """``healthy + gaussian(delta, pv_sigma)`` clipped to [0, 1], 0 where ``healthy`` is 0."""
    if pv_sigma > 0:
        delta = ndi.gaussian_filter(delta, pv_sigma)
    out = np.clip(healthy + delta, 0.0, 1.0).astype(np.float32)
    out[healthy <= 0] = 0.0
    return out


# --------------------------------------------------------------------------- tissue levels
@dataclass(frozen=True)
class TissueStats:
    """Reference intensities of one healthy brain on the working grid.

    Attributes
    ----------
    csf_values : numpy.ndarray
        Sorted CSF intensities (the reference lesion distribution of :func:`rank_transplant`).
    csf, gm, wm : float
        Median CSF level, median brain level (grey-matter-like), 90th percentile of the brain
        (white-matter-like), all in [0, 1].
    source : str
        How ``csf_values`` were found (``"labels"`` or ``"darkest"``).
    """

    csf_values: np.ndarray
    csf: float
    gm: float
    wm: float
    source: str

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary (without the value array)."""
        return {
            "csf": round(self.csf, 6),
            "gm": round(self.gm, 6),
            "wm": round(self.wm, 6),
            "csf_source": self.source,
            "csf_voxels": int(self.csf_values.size),
        }


def tissue_stats(
    image: np.ndarray,
    brain: np.ndarray,
    csf_mask: np.ndarray | None = None,
    darkest_fraction: float = 0.05,
) -> TissueStats:
    """CSF reference distribution and tissue levels of a healthy brain.

    CSF voxels are ``csf_mask & brain`` eroded by one voxel (so partial-volume voxels at the
    ventricle border do not dilute it) when that leaves >= 20 voxels (``source="labels"``:
    e.g. the ventricles and CSF labels of an anatomical label map); otherwise the darkest
    ``darkest_fraction`` of the voxels of the brain mask eroded by 2 voxels (``"darkest"``;
    mostly ventricles and deep sulci).

    Parameters
    ----------
    image : numpy.ndarray
        ``(X, Y, Z)`` float32 in [0, 1].
    brain : numpy.ndarray
        ``(X, Y, Z)`` bool brain mask.
    csf_mask : numpy.ndarray or None
        ``(X, Y, Z)`` bool CSF mask, or ``None``.
    darkest_fraction : float
        Fraction for the fallback.

    Returns
    -------
    TissueStats

    Raises
    ------
    AppearanceError
        Shapes differ or the brain mask is empty.
    """
    img = np.asarray(image, dtype=np.float32)
    b = np.asarray(brain, dtype=bool)
    if img.shape != b.shape or not b.any():
        raise AppearanceError("tissue_stats: image and brain mask differ in shape or mask empty")
    values: np.ndarray | None = None
    source = "darkest"
    if csf_mask is not None:
        c = ndi.binary_erosion(np.asarray(csf_mask, dtype=bool) & b)
        if int(c.sum()) >= 20:
            values, source = img[c], "labels"
    if values is None:
        inner = ndi.binary_erosion(b, iterations=2)
        pool = img[inner] if inner.sum() >= 100 else img[b]
        cut = np.quantile(pool, darkest_fraction)
        values = pool[pool <= cut]
    brain_values = img[b]
    return TissueStats(
        csf_values=np.sort(values.astype(np.float32)),
        csf=float(np.median(values)),
        gm=float(np.median(brain_values)),
        wm=float(np.quantile(brain_values, 0.9)),
        source=source,
    )


# --------------------------------------------------------------------------- recipes
def rank_transplant(
    healthy: np.ndarray,
    mask: np.ndarray,
    reference_values: np.ndarray,
    rng: np.random.Generator,
    *,
    contrast: float = 1.0,
    texture_sigma: float = 1.0,
    pv_sigma: float = 0.6,
) -> np.ndarray:
    """Lesion intensities drawn from the ranks of a real intensity distribution.

    A smooth random field (:func:`smooth_field`, ``texture_sigma`` voxels) is ranked inside
    ``mask``; rank ``q`` in (0, 1) takes the ``q``-quantile of ``reference_values``; the
    change ``contrast * (value - healthy)`` inside the mask is smoothed by ``pv_sigma``
    voxels (partial volume) and added to ``healthy``.

    Parameters
    ----------
    healthy : numpy.ndarray
        ``(X, Y, Z)`` float32 in [0, 1].
    mask : numpy.ndarray
        ``(X, Y, Z)`` bool lesion mask.
    reference_values : numpy.ndarray
        Real intensities (any order; e.g. :attr:`TissueStats.csf_values`).
    rng : numpy.random.Generator
        Randomness.
    contrast : float
        1 = full transplant, smaller = a blend with the healthy tissue.
    texture_sigma, pv_sigma : float
        Smoothness of the texture field and of the partial-volume rim, voxels.

    Returns
    -------
    numpy.ndarray
        ``(X, Y, Z)`` float32 image in [0, 1].
    """
    h, m = _check(healthy, mask, "rank_transplant")
    ref = np.sort(np.asarray(reference_values, dtype=np.float64).ravel())
    if ref.size == 0:
        raise AppearanceError("rank_transplant: empty reference distribution")
    q = _ranks01(smooth_field(h.shape, texture_sigma, rng)[m])
    src_q = (np.arange(ref.size) + 0.5) / ref.size
    values = np.interp(q, src_q, ref)
    delta = np.zeros(h.shape, dtype=np.float64)
    delta[m] = float(contrast) * (values - h[m])
    return _paste(h, delta, pv_sigma)


def csf_like(
    healthy: np.ndarray,
    mask: np.ndarray,
    csf_level: float,
    rng: np.random.Generator,
    *,
    contrast: float = 0.8,
    texture: float = 0.25,
    texture_sigma: float = 1.5,
    pv_sigma: float = 0.7,
) -> np.ndarray:
    """CSF-like hypointensity with texture and a partial-volume rim.

    Inside ``mask``: ``target = healthy + c(x) (csf_level - healthy)`` with
    ``c(x) = clip(contrast (1 + texture f(x)), 0, 1)``, ``f`` a smooth unit-variance random
    field (``texture_sigma`` voxels). The change is smoothed by ``pv_sigma`` voxels.
    ``contrast`` near 1 gives a cavity (chronic stroke, necrosis), 0.3-0.6 a mild
    hypointensity (subacute stroke, MS).

    Returns
    -------
    numpy.ndarray
        ``(X, Y, Z)`` float32 image in [0, 1].
    """
    h, m = _check(healthy, mask, "csf_like")
    f = smooth_field(h.shape, texture_sigma, rng)[m]
    c = np.clip(float(contrast) * (1.0 + float(texture) * f), 0.0, 1.0)
    delta = np.zeros(h.shape, dtype=np.float64)
    delta[m] = c * (float(csf_level) - h[m])
    return _paste(h, delta, pv_sigma)


# --------------------------------------------------------------------------- tumours
def tumour_shape(
    brain: np.ndarray,
    centre_vox: Sequence[float],
    volume_ml: float,
    spacing_mm: Sequence[float] | np.ndarray,
    rng: np.random.Generator,
    *,
    irregularity: float = 0.35,
    noise_sigma_mm: float = 8.0,
) -> tuple[np.ndarray, np.ndarray]:
    """A smooth random blob of a given volume inside the brain.

    ``level(x) = rho(x) + irregularity * f(x)`` where ``rho`` is the normalised radius of a
    randomly rotated ellipsoid (axis ratios uniform in [0.7, 1.3]) centred at
    ``centre_vox`` and ``f`` a smooth unit-variance random field (sigma ``noise_sigma_mm``).
    The shape is ``{level < t} & brain`` with ``t`` found by bisection so that its volume is
    ``volume_ml``, then its connected component that contains the centre (else the largest);
    when that part is under 97 % of the volume, ``t`` grows by 1 % steps until it is not.

    Parameters
    ----------
    brain : numpy.ndarray
        ``(X, Y, Z)`` bool brain mask.
    centre_vox : sequence of float
        Centre, voxel coordinates.
    volume_ml : float
        Target volume in mL (= 1000 mm³).
    spacing_mm : sequence of float
        Voxel size, mm.
    rng : numpy.random.Generator
        Randomness.

    Returns
    -------
    mask : numpy.ndarray
        ``(X, Y, Z)`` bool.
    level : numpy.ndarray
        ``(X, Y, Z)`` float64 level field (normalised: the shape is ``level < 1``).
    """
    b = np.asarray(brain, dtype=bool)
    sp = np.asarray(spacing_mm, dtype=np.float64)
    if not volume_ml > 0:
        raise AppearanceError(f"tumour_shape: volume must be > 0 mL, got {volume_ml}")
    voxel_ml = float(np.prod(sp)) / 1000.0
    target = float(volume_ml) / voxel_ml
    if target > b.sum():
        raise AppearanceError(f"tumour_shape: {volume_ml} mL does not fit in the brain")
    radius_mm = (3.0 * float(volume_ml) * 1000.0 / (4.0 * np.pi)) ** (1.0 / 3.0)
    axes = radius_mm * rng.uniform(0.7, 1.3, size=3)
    q, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    noise = smooth_field(b.shape, noise_sigma_mm / float(sp.mean()), rng)
    grids = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in b.shape], indexing="ij")
    d = np.stack([(g - c) * s for g, c, s in zip(grids, centre_vox, sp, strict=True)])
    local = np.tensordot(q.T, d, axes=1)
    rho = np.sqrt(sum((local[i] / axes[i]) ** 2 for i in range(3)))
    level = rho + float(irregularity) * noise
    lo, hi = 0.0, float(level[b].max())
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        if int(((level < mid) & b).sum()) < target:
            lo = mid
        else:
            hi = mid
    shape = _component((level < hi) & b, centre_vox)
    # the noise can split the level set: grow the threshold until the kept part has the volume
    for _ in range(40):
        if shape.sum() >= 0.97 * target:
            break
        hi *= 1.01
        shape = _component((level < hi) & b, centre_vox)
    return shape, level / hi


def _component(shape: np.ndarray, centre_vox: Sequence[float]) -> np.ndarray:
    """The connected component of ``shape`` at the centre voxel (else the largest one)."""
    labels, n = ndi.label(shape)
    if n <= 1:
        return shape
    keep = labels[tuple(round(float(c)) for c in centre_vox)]
    if keep == 0:
        sizes = ndi.sum(shape, labels, index=np.arange(1, n + 1))
        keep = int(np.argmax(sizes)) + 1
    return labels == keep


def synthetic_tumour(
    healthy: np.ndarray,
    brain: np.ndarray,
    stats: TissueStats,
    centre_vox: Sequence[float],
    volume_ml: float,
    spacing_mm: Sequence[float] | np.ndarray,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """A synthetic tumour-like lesion: dark necrotic core, iso rim, hypointense oedema.

    The whole lesion (:func:`tumour_shape`, ``volume_ml``) is split by its level field into
    oedema (outer shell, a fraction of the volume uniform in [0.3, 0.6]), solid tumour, and
    (with probability 0.75) a necrotic core (the innermost fraction, uniform in [0.05, 0.25]
    of the volume) surrounded by a rim of 2-4 mm. Target intensities (``stats``): core =
    rank transplant of the CSF distribution (x uniform [0.9, 1.15]); rim = iso, uniform
    between the GM and WM levels; solid tumour = mildly hypointense
    (``gm - u (gm - csf)``, u in [0.15, 0.4]); oedema = healthy pulled towards CSF by
    uniform [0.15, 0.35]. Every compartment gets a smooth texture (std 0.03), and the change is
    smoothed by 0.7 voxel (partial volume).

    Returns
    -------
    scan : numpy.ndarray
        ``(X, Y, Z)`` float32 in [0, 1].
    mask : numpy.ndarray
        ``(X, Y, Z)`` bool whole-lesion mask (core, rim, solid tumour and oedema; the BraTS
        "whole tumour" that GIRNet's pseudo data paste).
    params : dict
        JSON-ready recipe parameters and compartment volumes (mL).
    """
    h = np.asarray(healthy, dtype=np.float32)
    b = np.asarray(brain, dtype=bool)
    sp = np.asarray(spacing_mm, dtype=np.float64)
    mask, level = tumour_shape(b, centre_vox, volume_ml, sp, rng)
    lv = level[mask]
    oedema_frac = float(rng.uniform(0.3, 0.6))
    has_core = bool(rng.random() < 0.75)
    core_frac = float(rng.uniform(0.05, 0.25))
    rim_mm = float(rng.uniform(2.0, 4.0))
    core_scale = float(rng.uniform(0.9, 1.15))
    rim_u = float(rng.uniform(0.0, 1.0))
    solid_u = float(rng.uniform(0.15, 0.4))
    oedema_c = float(rng.uniform(0.15, 0.35))
    solid_cut = float(np.quantile(lv, 1.0 - oedema_frac))
    solid = mask & (level < solid_cut)
    core = np.zeros_like(mask)
    rim = np.zeros_like(mask)
    if has_core and solid.any():
        core = solid & (level < float(np.quantile(level[solid], core_frac / (1 - oedema_frac))))
        if core.any():
            dist = ndi.distance_transform_edt(~core, sampling=sp)
            rim = solid & ~core & (dist <= rim_mm)
    oedema = mask & ~solid
    body = solid & ~core & ~rim
    target = h.astype(np.float64).copy()
    tex = 0.03 * smooth_field(h.shape, 1.0, rng)
    if core.any():
        q = _ranks01(smooth_field(h.shape, 1.0, rng)[core])
        ref = stats.csf_values.astype(np.float64)
        src_q = (np.arange(ref.size) + 0.5) / ref.size
        target[core] = np.interp(q, src_q, ref) * core_scale
    rim_level = stats.gm + rim_u * (stats.wm - stats.gm)
    target[rim] = rim_level + tex[rim]
    target[body] = stats.gm - solid_u * (stats.gm - stats.csf) + tex[body]
    target[oedema] = h[oedema] + oedema_c * (stats.csf - h[oedema]) + tex[oedema]
    delta = np.where(mask, target - h, 0.0)
    scan = _paste(h, delta, 0.7)
    voxel_ml = float(np.prod(sp)) / 1000.0
    params = {
        "volume_ml_requested": float(volume_ml),
        "centre_vox": [float(c) for c in centre_vox],
        "oedema_fraction": oedema_frac,
        "necrotic_core": has_core,
        "core_fraction": core_frac if has_core else 0.0,
        "rim_mm": rim_mm,
        "core_scale_of_csf": core_scale,
        "rim_level": rim_level,
        "solid_hypo": solid_u,
        "oedema_contrast": oedema_c,
        "volumes_ml": {
            "core": float(core.sum()) * voxel_ml,
            "rim": float(rim.sum()) * voxel_ml,
            "solid": float(body.sum()) * voxel_ml,
            "oedema": float(oedema.sum()) * voxel_ml,
        },
    }
    return scan, mask, params


def radial_push(
    shape: Sequence[int],
    centre_vox: Sequence[float],
    radius_vox: float,
    strength: float,
) -> np.ndarray:
    """Mass effect: a smooth radial displacement that pushes tissue away from a centre.

    ``m(x) = -strength * (x - c) * exp(-|x - c|² / (2 s²))`` with ``s = radius_vox``, in
    voxels. Used as a backward warp (``out(x) = in(x + m(x))``), it samples closer to the
    centre, so the content moves outwards. The radial map ``r -> r (1 - a e^{-r²/2s²})`` has
    derivative ``1 - a e^{-r²/2s²} (1 - r²/s²) >= 1 - a > 0``, so ``x + m(x)`` is a
    diffeomorphism for ``0 <= strength < 1``; the peak displacement is about
    ``0.61 strength s`` voxels.

    Returns
    -------
    numpy.ndarray
        ``(3, X, Y, Z)`` float32 displacement in voxels.
    """
    if not 0.0 <= strength < 1.0:
        raise AppearanceError(f"radial_push: strength must be in [0, 1), got {strength}")
    if not radius_vox > 0:
        raise AppearanceError(f"radial_push: radius must be > 0, got {radius_vox}")
    grids = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij")
    d = np.stack([g - c for g, c in zip(grids, centre_vox, strict=True)])
    g = np.exp(-(d**2).sum(0) / (2.0 * float(radius_vox) ** 2))
    return (-float(strength) * d * g).astype(np.float32)


# --------------------------------------------------------------------------- augmentation
def draw_augmentation(rng: np.random.Generator) -> dict[str, Any]:
    """Random whole-scan intensity augmentation parameters (JSON-ready).

    Bias field: ``exp(amplitude * f)``, ``f`` a smooth unit-variance field of sigma 20 voxels
    (about 40 mm at 2 mm; drawn on a 4x coarser grid and upsampled linearly), amplitude
    uniform [0, 0.15]; gamma: ``exp(N(0, 0.12))`` clipped to [0.75, 1.35]; noise: Gaussian or
    Rician (1/2 each), sigma uniform [0, 0.03]; ``seed`` of the fields.
    """
    return {
        "seed": int(rng.integers(2**31)),
        "bias_amplitude": float(rng.uniform(0.0, 0.15)),
        "bias_sigma_vox": 20.0,
        "gamma": float(np.clip(np.exp(rng.normal(0.0, 0.12)), 0.75, 1.35)),
        "noise": "rician" if rng.random() < 0.5 else "gaussian",
        "noise_sigma": float(rng.uniform(0.0, 0.03)),
    }


def augment_intensity(
    image: np.ndarray,
    brain: np.ndarray,
    params: dict[str, Any],
    reference: np.ndarray | None = None,
) -> np.ndarray:
    """Apply a recorded intensity augmentation (:func:`draw_augmentation`) to an image.

    ``out = clip(clip((image * bias) / max_brain(reference * bias), 0, 1) ** gamma + noise,
    0, 1)`` inside ``brain``, 0 outside (``reference`` defaults to ``image``); the bias field
    and the noise are regenerated from ``params["seed"]`` (``numpy.random.default_rng``), so
    the same parameters on the same grid give the same bytes. Applied with the same
    parameters to a scan (with ``reference`` = its healthy twin) and to the healthy twin, the
    two differ only where the images differed (the lesion and its partial-volume rim).

    Parameters
    ----------
    image : numpy.ndarray
        ``(X, Y, Z)`` float32 in [0, 1].
    brain : numpy.ndarray
        ``(X, Y, Z)`` bool.
    params : dict
        From :func:`draw_augmentation`.
    reference : numpy.ndarray or None
        ``(X, Y, Z)`` image whose brain maximum (times the bias) sets the scale.

    Returns
    -------
    numpy.ndarray
        float32 ``(X, Y, Z)``.
    """
    img = np.asarray(image, dtype=np.float64)
    b = np.asarray(brain, dtype=bool)
    rng = np.random.default_rng(int(params["seed"]))
    bias = np.exp(float(params["bias_amplitude"]) * _coarse_field(img.shape, 20.0, rng))
    out = img * bias
    ref = out if reference is None else np.asarray(reference, dtype=np.float64) * bias
    peak = float(ref[b].max()) if b.any() else 1.0
    out = np.clip(out / (peak if peak > 0 else 1.0), 0.0, 1.0) ** float(params["gamma"])
    sigma = float(params["noise_sigma"])
    n1 = rng.standard_normal(img.shape) * sigma
    if params["noise"] == "rician":
        n2 = rng.standard_normal(img.shape) * sigma
        out = np.sqrt((out + n1) ** 2 + n2**2)
    else:
        out = out + n1
    out = np.clip(out, 0.0, 1.0).astype(np.float32)
    out[~b] = 0.0
    return out
