"""Pseudo-pathological brain MRI with full ground truth (GIRNet's "pseudo dataset").

Method (Liu & Gu, MICCAI 2023, pseudo dataset; arXiv 2310.11040 Fig. 7; upstream ``simple_pseudo``):
a healthy brain and a real lesion patient, both on the atlas working grid, are combined by
histogram-matching the lesion patient's image to the healthy brain and replacing the healthy
tissue inside the lesion mask. This module adds a known random deformation of the healthy brain
so that every case has a registration ground truth. For one case (:func:`make_case`):

1. ``field`` = a random smooth diffeomorphism on the brain's grid (:func:`random_diffeomorphism`:
   Gaussian-smoothed random stationary velocity, scaling and squaring with 7 steps, scaled so
   that the **peak** displacement equals ``peak_mm``, drawn in [2, 8] mm, with det J > 0
   everywhere); ``healthy = warp(brain.image, field)`` (trilinear), ``labels =
   warp(brain.labels, field)`` (nearest), ``brain_mask = warp(brain mask, field) > 0.5``.
2. The lesion mask (optionally mirrored left-right, together with its appearance image) is
   restricted to ``brain_mask``; if less than half of it survives, :class:`LesionPlacementError`
   is raised (:func:`make_cases` then draws another lesion).
3. ``matched = skimage.exposure.match_histograms(appearance, healthy)``, computed over the two
   brains (voxels of the appearance image that are > 0 or in the lesion mask, matched to the
   voxels of ``healthy`` inside ``brain_mask``), then ``scan = healthy; scan[lesion] =
   matched[lesion]``. As in the paper: no blending at the lesion border, no mass effect.

**Field convention.** ``field`` has shape ``(3, X, Y, Z)``, float32, in **voxels** of the
working grid along its array axes (canonical RAS), defined on the scan grid:
``healthy = warp(source_brain, field)``, i.e. ``healthy(x) = source(x + field(x))``
(:func:`napari_girnet.core.spatial.warp`, backward warping, ``align_corners=True``, zero
padding). On disk it is written with
:func:`~napari_girnet.data.nifti.write_displacement` ``(convention="voxel")``.

**Two ground truths follow from a case.**

(a) The paper's mean deformation error (Liu & Gu, MICCAI 2023): register the pathological
    ``scan`` and its lesion-free twin ``healthy`` to the atlas with the same method and compare
    the two fields per region (in the lesion, near = within 30 mm of it, far), e.g. with
    :func:`napari_girnet.evaluation.metrics.mean_deformation_error`.
(b) When the source brain is the atlas itself (:func:`atlas_source_brain`), the exact answer:
    ``healthy = warp(atlas, field)``, so ``field`` *is* the true ``phi_ts`` of the scan (scan
    grid -> atlas voxels, docs/conventions.md) and any registration of ``scan`` to the atlas can
    be scored against it directly.

Deviations from the paper: (i) the paper matches histograms over the full volumes; here over
the brains, which is the same when both brains fill the grid equally and removes the bias of
different background fractions otherwise; (ii) the paper pairs subjects without deforming them;
the deformation is added for ground truth (a); (iii) mirroring is about the grid's central
sagittal plane (world x = -0.5 mm on the working grids), not x = 0, so that it is an exact
voxel permutation.

Everything is deterministic: every random choice comes from ``numpy.random.default_rng`` of the
given seed, and the written files (gzip ``mtime=0``, JSON with sorted keys, no timestamps) are
byte-identical for the same seed on CPU.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from dataclasses import field as dc_field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage as ndi
from skimage.exposure import match_histograms

from napari_girnet._version import __version__
from napari_girnet.core.spatial import integrate, jacobian_determinant, warp
from napari_girnet.data.nifti import read_displacement, read_nifti, write_displacement, write_nifti
from napari_girnet.data.volume import Volume
from napari_girnet.evaluation.metrics import volume_mm3

__all__ = [
    "FIELD_CONVENTION",
    "LESION_KINDS",
    "LesionPlacementError",
    "LesionSource",
    "PseudoCase",
    "SourceBrain",
    "SyntheticError",
    "atlas_source_brain",
    "make_case",
    "make_cases",
    "random_diffeomorphism",
    "random_velocity",
    "read_case",
    "write_case",
]

logger = logging.getLogger(__name__)

#: Kinds of :class:`LesionSource`.
LESION_KINDS: tuple[str, ...] = ("ms", "glioma")
#: The sentence stored in ``case.json`` (``{name}`` = source brain name).
FIELD_CONVENTION = (
    "field.nii.gz: displacement in voxels of this grid (array axes of the canonical RAS grid), "
    "defined on the scan grid; healthy = warp(source_brain, field), i.e. "
    "healthy(x) = source(x + field(x)); source brain = {name}"
)
_STEPS = 7
_FILES = {
    "scan": "scan.nii.gz",
    "lesion": "lesion.nii.gz",
    "healthy": "healthy.nii.gz",
    "brain_mask": "brain_mask.nii.gz",
    "labels": "labels.nii.gz",
    "field": "field.nii.gz",
}
_MANIFEST = "case.json"


class SyntheticError(ValueError):
    """Bad input to the pseudo-case generator, or a case folder that cannot be read."""


class LesionPlacementError(SyntheticError):
    """Too little of the lesion lies inside the (deformed) healthy brain; pick another one."""


# --------------------------------------------------------------------------- sources
def _same_grid(a: Volume, b: Volume, what: str) -> None:
    if not a.same_grid(b):
        raise SyntheticError(
            f"{what}: {b.name or 'volume'} {b.shape} is not on the grid of "
            f"{a.name or 'volume'} {a.shape} (shape and affine must match)"
        )


@dataclass(frozen=True, eq=False)
class SourceBrain:
    """A healthy brain on a working grid, the source of pseudo cases.

    Attributes
    ----------
    name : str
        Identifier written to the case manifests (e.g. ``"colin27"``).
    image : Volume
        T1, float32 in [0, 1], 0 outside the brain; canonical RAS working grid ``(X, Y, Z)``.
    labels : Volume or None
        Integer label map on the same grid (e.g. AAL), or ``None``.
    mask : Volume or None
        Brain mask on the same grid; ``None`` = ``image > 0`` with holes filled (3D).

    Raises
    ------
    SyntheticError
        If ``labels`` / ``mask`` are not on ``image``'s grid or the brain is empty.
    """

    name: str
    image: Volume
    labels: Volume | None = None
    mask: Volume | None = None

    def __post_init__(self) -> None:
        for what, vol in (("labels", self.labels), ("mask", self.mask)):
            if vol is not None:
                _same_grid(self.image, vol, f"source brain {self.name!r} {what}")
        if not self.brain_mask().any():
            raise SyntheticError(f"source brain {self.name!r}: empty brain mask")

    def brain_mask(self) -> np.ndarray:
        """Brain mask ``(X, Y, Z)`` bool: ``mask`` or ``fill_holes(image > 0)``."""
        if self.mask is not None:
            return np.asarray(self.mask.array).astype(bool)
        return ndi.binary_fill_holes(np.asarray(self.image.array) > 0)


@dataclass(frozen=True, eq=False)
class LesionSource:
    """A real lesion: its mask and the image that gives its intensities.

    Attributes
    ----------
    name : str
        Identifier (e.g. ``"ms07"``, ``"glioma"``).
    kind : str
        ``"ms"`` or ``"glioma"``.
    mask : Volume
        Lesion mask (bool; converted on construction) on the working grid.
    appearance : Volume
        Image in [0, 1] on the same grid whose voxels inside ``mask`` are the lesion
        intensities (the lesion patient's T1, or a substitute, see ``description``).
    description : str
        Provenance in words (source of the shape and of the intensities).

    Raises
    ------
    SyntheticError
        Unknown kind, grids differ, or an empty mask.
    """

    name: str
    kind: str
    mask: Volume
    appearance: Volume
    description: str = ""

    def __post_init__(self) -> None:
        if self.kind not in LESION_KINDS:
            raise SyntheticError(
                f"lesion source {self.name!r}: kind must be one of {LESION_KINDS}, "
                f"got {self.kind!r}"
            )
        _same_grid(self.mask, self.appearance, f"lesion source {self.name!r} appearance")
        m = np.asarray(self.mask.array)
        if m.dtype != np.bool_:
            object.__setattr__(self, "mask", self.mask.with_array(m != 0))
        if not np.any(self.mask.array):
            raise SyntheticError(f"lesion source {self.name!r}: empty lesion mask")


def atlas_source_brain(resolution: str = "2mm") -> SourceBrain:
    """The MNI152 atlas itself as a source brain (ground truth (b) of the module docstring).

    Parameters
    ----------
    resolution : str
        Atlas preset of :func:`~napari_girnet.data.atlas.load_atlas` (``"2mm"``, ``"1mm"``).

    Returns
    -------
    SourceBrain
        ``name = "mni152_2009a_sym_<preset>"``, the atlas image and mask, ``labels = None``.
    """
    from napari_girnet.data.atlas import load_atlas

    atlas = load_atlas(resolution)
    return SourceBrain(
        name=f"mni152_2009a_sym_{resolution}", image=atlas.image, labels=None, mask=atlas.mask
    )


# --------------------------------------------------------------------------- fields
def _rng(seed: int | np.random.Generator) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(int(seed))


def _taper(n: int, width: float) -> np.ndarray:
    """1D window: raised cosine from 0 at both end voxels to 1 at ``width`` voxels inside."""
    i = np.arange(n, dtype=np.float64)
    d = np.minimum(i, n - 1 - i)
    w = np.clip(d / max(width, 1e-9), 0.0, 1.0)
    return 0.5 - 0.5 * np.cos(np.pi * w)


def random_velocity(
    shape: Sequence[int],
    seed: int | np.random.Generator,
    smoothness_vox: float | Sequence[float] | np.ndarray = 8.0,
    taper: bool = True,
) -> np.ndarray:
    """A smooth random stationary velocity field with unit peak magnitude.

    Independent standard-normal noise per channel, smoothed with a Gaussian of standard
    deviation ``smoothness_vox`` voxels (``scipy.ndimage.gaussian_filter``, mode ``reflect``),
    optionally multiplied by a separable raised-cosine window that falls to 0 at the grid
    border over ``min(2 sigma, size / 4)`` voxels per axis (so the flow stays inside the grid
    and the zero padding of the integration creates no fold at the border), then divided by
    the largest vector magnitude over the grid.

    Parameters
    ----------
    shape : sequence of int
        Grid shape ``(X, Y, Z)`` (2D ``(H, W)`` also works).
    seed : int or numpy.random.Generator
        Randomness (a generator is advanced).
    smoothness_vox : float or sequence of float
        Gaussian sigma in voxels, per axis or isotropic (> 0).
    taper : bool
        Apply the border window (default True).

    Returns
    -------
    numpy.ndarray
        ``(ndim, *shape)`` float32 velocity in voxels along the array axes; peak magnitude
        ``max_x |v(x)| = 1`` voxel.

    Raises
    ------
    SyntheticError
        Bad shape or sigma.
    """
    shape_t = tuple(int(s) for s in shape)
    if len(shape_t) not in (2, 3) or min(shape_t) < 2:
        raise SyntheticError(f"random_velocity: shape must be 2 or 3 sizes >= 2, got {shape}")
    sigma = np.broadcast_to(np.asarray(smoothness_vox, dtype=np.float64), (len(shape_t),))
    if not np.all(np.isfinite(sigma)) or np.any(sigma <= 0):
        raise SyntheticError(f"random_velocity: smoothness must be > 0, got {smoothness_vox}")
    rng = _rng(seed)
    noise = rng.standard_normal((len(shape_t), *shape_t))
    v = np.stack([ndi.gaussian_filter(c, sigma=tuple(sigma), mode="reflect") for c in noise])
    if taper:
        for axis, (n, sg) in enumerate(zip(shape_t, sigma, strict=True)):
            w = _taper(n, min(2.0 * sg, n / 4.0))
            v *= w.reshape([1] + [n if a == axis else 1 for a in range(len(shape_t))])
    peak = float(np.sqrt((v**2).sum(axis=0)).max())
    if not peak > 0:  # pragma: no cover - smoothed Gaussian noise is never identically 0
        raise SyntheticError("random_velocity: degenerate noise")
    return (v / peak).astype(np.float32)


def _peak_mm(disp: torch.Tensor, spacing: torch.Tensor) -> float:
    return float(torch.sqrt(((disp[0] * spacing) ** 2).sum(dim=0)).max())


def random_diffeomorphism(
    shape: Sequence[int],
    spacing_mm: Sequence[float] | float | np.ndarray,
    peak_mm: float,
    seed: int | np.random.Generator,
    *,
    smoothness_mm: float = 16.0,
    max_tries: int = 4,
) -> np.ndarray:
    """A random smooth diffeomorphism with a given peak displacement, as a voxel displacement.

    A random stationary velocity (:func:`random_velocity`, sigma = ``smoothness_mm`` /
    spacing voxels) is integrated with :func:`napari_girnet.core.spatial.integrate` (scaling
    and squaring, 7 steps). Its amplitude is adjusted by secant iteration until the peak
    displacement magnitude over the grid (mm) matches ``peak_mm`` to 1e-3 relative, and the
    result is rescaled by the last tiny ratio so that it matches to float precision. Then
    :func:`~napari_girnet.core.spatial.jacobian_determinant` must be > 0 at every voxel; if
    not, the velocity is redrawn 1.5 times smoother (same generator) and the procedure is
    repeated, up to ``max_tries`` times.

    Parameters
    ----------
    shape : sequence of int
        Grid shape ``(X, Y, Z)``.
    spacing_mm : float or sequence of float
        Voxel size in mm along each array axis.
    peak_mm : float
        Largest displacement magnitude over the grid, mm (> 0; GIRNet's pseudo cases draw it in
        [2, 8]).
    seed : int or numpy.random.Generator
        Randomness.
    smoothness_mm : float
        Gaussian sigma of the velocity noise in mm.
    max_tries : int
        Attempts with increasing smoothness before giving up.

    Returns
    -------
    numpy.ndarray
        ``(3, X, Y, Z)`` float32 displacement in voxels of this grid along its array axes:
        voxel ``x`` maps to ``x + d(x)`` (use with :func:`~napari_girnet.core.spatial.warp`).

    Raises
    ------
    SyntheticError
        Bad arguments, or no fold-free field with that peak was found.
    """
    shape_t = tuple(int(s) for s in shape)
    sp = np.broadcast_to(np.asarray(spacing_mm, dtype=np.float64), (len(shape_t),)).copy()
    if not (np.isfinite(peak_mm) and peak_mm > 0):
        raise SyntheticError(f"random_diffeomorphism: peak_mm must be > 0, got {peak_mm}")
    if np.any(sp <= 0) or not np.all(np.isfinite(sp)):
        raise SyntheticError(f"random_diffeomorphism: bad spacing {spacing_mm}")
    if not smoothness_mm > 0:
        raise SyntheticError(f"random_diffeomorphism: smoothness_mm must be > 0: {smoothness_mm}")
    rng = _rng(seed)
    spacing = torch.tensor(sp, dtype=torch.float32).view(-1, *([1] * len(shape_t)))
    sigma_mm = float(smoothness_mm)
    min_det = float("nan")
    with torch.no_grad():
        for attempt in range(max(1, int(max_tries))):
            v = torch.from_numpy(random_velocity(shape_t, rng, sigma_mm / sp))[None]
            # secant iteration on the velocity scale s: peak(integrate(s v)) = peak_mm
            s_prev, p_prev = 0.0, 0.0
            scale = float(peak_mm) / _peak_mm(v, spacing)
            disp = integrate(v * scale, steps=_STEPS)
            for _ in range(30):
                p = _peak_mm(disp, spacing)
                if abs(p / float(peak_mm) - 1.0) < 1e-3:
                    break
                slope = (p - p_prev) / (scale - s_prev)
                s_prev, p_prev = scale, p
                scale = scale + (float(peak_mm) - p) / slope if slope > 0 else scale * peak_mm / p
                disp = integrate(v * scale, steps=_STEPS)
            disp = disp * (float(peak_mm) / _peak_mm(disp, spacing))
            min_det = float(jacobian_determinant(disp).min())
            if min_det > 0:
                logger.debug(
                    "diffeomorphism: peak %.3f mm, min det J %.3f (attempt %d, sigma %.1f mm)",
                    peak_mm,
                    min_det,
                    attempt,
                    sigma_mm,
                )
                return np.ascontiguousarray(disp[0].numpy(), dtype=np.float32)
            logger.info(
                "diffeomorphism with peak %.2f mm folds (min det J %.3f): smoother velocity",
                peak_mm,
                min_det,
            )
            sigma_mm *= 1.5
    raise SyntheticError(
        f"random_diffeomorphism: no fold-free field with peak {peak_mm} mm on grid {shape_t} "
        f"after {max_tries} tries (last min det J {min_det:.3f}); lower peak_mm or raise "
        "smoothness_mm"
    )


def _warp_np(array: np.ndarray, disp: np.ndarray, mode: str = "bilinear") -> np.ndarray:
    """``out(x) = array(x + disp(x))`` through core.spatial.warp, numpy in and out."""
    src = torch.tensor(np.asarray(array))[None, None]
    with torch.no_grad():
        out = warp(src, torch.from_numpy(np.ascontiguousarray(disp))[None], mode=mode)
    return out[0, 0].numpy()


# --------------------------------------------------------------------------- cases
@dataclass(frozen=True, eq=False)
class PseudoCase:
    """One pseudo-pathological case and its ground truth, all on one working grid.

    Attributes
    ----------
    scan : Volume
        The pathological image, float32 in [0, 1]: ``healthy`` with the lesion pasted.
    lesion : Volume
        bool lesion mask (inside ``brain_mask``).
    healthy : Volume
        The lesion-free twin, float32: ``warp(source_brain.image, field)``.
    labels : Volume or None
        ``warp(source_brain.labels, field)`` (nearest), or ``None``.
    field : numpy.ndarray
        ``(3, X, Y, Z)`` float32 displacement in voxels of this grid, defined on the scan grid:
        ``healthy(x) = source(x + field(x))`` (module docstring).
    brain_mask : Volume
        bool brain mask of ``healthy`` (``warp(source mask, field) > 0.5``).
    manifest : dict
        JSON-ready provenance: seed, source brain, lesion source and kind, flip, peak
        displacement, min det J, lesion volume (mm³), grid, convention, package version.
    """

    scan: Volume
    lesion: Volume
    healthy: Volume
    labels: Volume | None
    field: np.ndarray
    brain_mask: Volume
    manifest: dict[str, Any] = dc_field(default_factory=dict)


def _lr_axis(volume: Volume) -> int:
    codes = volume.axcodes
    for axis, code in enumerate(codes):
        if code in ("L", "R"):
            return axis
    raise SyntheticError(f"{volume.name}: no left-right axis in orientation {codes}")


def make_case(
    brain: SourceBrain,
    lesion: LesionSource,
    seed: int,
    peak_mm: float | None = None,
    flip: bool | None = None,
    *,
    peak_range: tuple[float, float] = (2.0, 8.0),
    smoothness_mm: float = 16.0,
    min_inside: float = 0.5,
) -> PseudoCase:
    """Make one pseudo-pathological case (method in the module docstring).

    Parameters
    ----------
    brain : SourceBrain
        Healthy source brain.
    lesion : LesionSource
        Real lesion on the same grid.
    seed : int
        Seeds ``numpy.random.default_rng``; it draws, in this order and always (so a given
        ``peak_mm`` / ``flip`` does not change the other draws): the peak (uniform in
        ``peak_range``), the flip (probability 1/2) and the seed of the field.
    peak_mm : float or None
        Peak displacement in mm; ``None`` = drawn.
    flip : bool or None
        Mirror the lesion (mask and appearance) left-right; ``None`` = drawn.
    peak_range : tuple of float
        Range of the drawn peak, mm.
    smoothness_mm : float
        Smoothness of the random velocity (:func:`random_diffeomorphism`).
    min_inside : float
        Smallest fraction of the lesion that must fall inside the deformed brain.

    Returns
    -------
    PseudoCase

    Raises
    ------
    SyntheticError
        Grids differ or bad arguments.
    LesionPlacementError
        Less than ``min_inside`` of the lesion lies inside the deformed brain.
    """
    _same_grid(brain.image, lesion.mask, f"lesion {lesion.name!r} vs brain {brain.name!r}")
    lo, hi = (float(p) for p in peak_range)
    if not 0 < lo <= hi:
        raise SyntheticError(f"make_case: peak_range must satisfy 0 < low <= high: {peak_range}")
    rng = np.random.default_rng(int(seed))
    drawn_peak = float(rng.uniform(lo, hi))
    drawn_flip = bool(rng.random() < 0.5)
    field_seed = int(rng.integers(2**31))
    peak = drawn_peak if peak_mm is None else float(peak_mm)
    do_flip = drawn_flip if flip is None else bool(flip)

    grid = brain.image
    disp = random_diffeomorphism(
        grid.shape, grid.spacing, peak, field_seed, smoothness_mm=smoothness_mm
    )
    src_mask = brain.brain_mask().astype(np.float32)
    mask = _warp_np(src_mask, disp) > 0.5

    lesion_mask = np.asarray(lesion.mask.array, dtype=bool)
    appearance = np.asarray(lesion.appearance.array, dtype=np.float32)
    if do_flip:
        axis = _lr_axis(grid)
        lesion_mask = np.flip(lesion_mask, axis=axis)
        appearance = np.flip(appearance, axis=axis)
    total = int(lesion_mask.sum())
    inside = lesion_mask & mask
    fraction = int(inside.sum()) / total
    if fraction < min_inside:
        raise LesionPlacementError(
            f"lesion {lesion.name!r} (flip={do_flip}): only {fraction:.0%} of its {total} "
            f"voxels lie inside the deformed brain {brain.name!r} (need {min_inside:.0%})"
        )

    healthy = np.clip(_warp_np(np.asarray(grid.array, dtype=np.float32), disp), 0.0, 1.0)
    labels = None
    if brain.labels is not None:
        labels = brain.labels.with_array(
            _warp_np(brain.labels.array, disp, mode="nearest"), name=f"{brain.name} labels"
        )
    src_brain = (appearance > 0) | lesion_mask
    matched = np.zeros_like(healthy)
    matched[src_brain] = match_histograms(appearance[src_brain], healthy[mask])
    scan = healthy.copy()
    scan[inside] = matched[inside]

    det = jacobian_determinant(torch.from_numpy(disp)[None])
    spacing = [float(s) for s in grid.spacing]
    mag = np.sqrt(((disp * np.asarray(spacing, dtype=np.float32)[:, None, None, None]) ** 2).sum(0))
    manifest: dict[str, Any] = {
        "seed": int(seed),
        "source_brain": brain.name,
        "lesion_source": lesion.name,
        "lesion_kind": lesion.kind,
        "lesion_description": lesion.description,
        "flip": do_flip,
        "peak_mm_requested": peak,
        "peak_mm": float(mag.max()),
        "mean_displacement_in_brain_mm": float(mag[mask].mean()),
        "min_jacobian_det": float(det.min()),
        "smoothness_mm": float(smoothness_mm),
        "integration_steps": _STEPS,
        "lesion_volume_mm3": volume_mm3(inside, spacing),
        "lesion_fraction_inside_brain": float(fraction),
        "grid_shape": list(grid.shape),
        "grid_affine": [[float(v) for v in row] for row in grid.affine],
        "field_convention": FIELD_CONVENTION.format(name=brain.name),
        "napari_girnet_version": __version__,
    }
    name = f"{brain.name}+{lesion.name}"
    return PseudoCase(
        scan=Volume(scan, grid.affine, name=f"pseudo {name}"),
        lesion=Volume(inside, grid.affine, name=f"pseudo {name} lesion"),
        healthy=Volume(healthy, grid.affine, name=f"pseudo {name} healthy"),
        labels=None if labels is None else Volume(labels.array, grid.affine, name=labels.name),
        field=disp,
        brain_mask=Volume(mask, grid.affine, name=f"pseudo {name} brain mask"),
        manifest=manifest,
    )


def write_case(case: PseudoCase, directory: str | os.PathLike[str]) -> Path:
    """Write a case to a folder (created; existing files of a case are replaced).

    Files: ``scan.nii.gz`` (float32), ``lesion.nii.gz`` (uint8), ``healthy.nii.gz`` (float32),
    ``brain_mask.nii.gz`` (uint8), ``labels.nii.gz`` (int16, only with labels),
    ``field.nii.gz`` (:func:`~napari_girnet.data.nifti.write_displacement`,
    ``convention="voxel"``) and ``case.json`` (the manifest plus ``"files"`` and
    ``"convention"``; sorted keys, no timestamps: same case -> same bytes).

    Returns
    -------
    pathlib.Path
        ``directory``.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    for key, dtype in (
        ("scan", np.float32),
        ("lesion", np.uint8),
        ("healthy", np.float32),
        ("brain_mask", np.uint8),
        ("labels", np.int16),
    ):
        vol = getattr(case, key)
        if vol is None:
            (out / _FILES[key]).unlink(missing_ok=True)
            continue
        write_nifti(vol, out / _FILES[key], restore_orientation=False, dtype=dtype)
        files[key] = _FILES[key]
    write_displacement(out / _FILES["field"], case.field, case.scan, convention="voxel")
    files["field"] = _FILES["field"]
    manifest = dict(case.manifest)
    manifest["files"] = files
    manifest["convention"] = FIELD_CONVENTION.format(name=manifest.get("source_brain", "unknown"))
    text = json.dumps(manifest, sort_keys=True, indent=2) + "\n"
    (out / _MANIFEST).write_text(text, encoding="utf-8")
    return out


def read_case(directory: str | os.PathLike[str]) -> PseudoCase:
    """Read a case written by :func:`write_case`.

    Returns
    -------
    PseudoCase
        Volumes in canonical RAS; ``lesion`` / ``brain_mask`` bool, ``scan`` / ``healthy``
        float32, ``labels`` as on disk (or ``None``), ``field`` ``(3, X, Y, Z)`` float32
        voxels.

    Raises
    ------
    SyntheticError
        Missing or malformed ``case.json``, missing files, a field that is not in the
        ``"voxel"`` convention or not on the scan grid.
    NiftiError
        An unreadable NIfTI file.
    """
    folder = Path(directory)
    path = folder / _MANIFEST
    if not path.is_file():
        raise SyntheticError(f"{folder}: not a pseudo case (no {_MANIFEST})")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SyntheticError(f"{path}: cannot read the manifest ({exc})") from exc
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or any(k not in files for k in ("scan", "lesion", "field")):
        raise SyntheticError(f"{path}: manifest lacks the 'files' entry of a pseudo case")

    def vol(key: str, dtype: type | None = None) -> Volume | None:
        if key not in files:
            return None
        file = folder / str(files[key])
        if not file.is_file():
            raise SyntheticError(f"{file}: listed in {_MANIFEST} but missing")
        v = read_nifti(file, name=str(file))
        return v if dtype is None else v.with_array(np.asarray(v.array).astype(dtype))

    scan = vol("scan", np.float32)
    if scan is None:  # pragma: no cover - checked with the manifest above
        raise SyntheticError(f"{path}: manifest lacks the scan file")
    lesion = vol("lesion", bool)
    healthy = vol("healthy", np.float32)
    brain_mask = vol("brain_mask", bool)
    labels = vol("labels")
    disp, grid = read_displacement(folder / str(files["field"]))
    if grid.meta.get("convention") != "voxel":
        raise SyntheticError(f"{folder / files['field']}: expected a 'voxel' displacement field")
    for what, v in (
        ("lesion", lesion),
        ("healthy", healthy),
        ("brain_mask", brain_mask),
        ("labels", labels),
        ("field", grid),
    ):
        if v is not None:
            _same_grid(scan, v, f"{folder} {what}")
    if lesion is None or healthy is None:
        raise SyntheticError(f"{path}: manifest lacks the lesion or healthy file")
    if brain_mask is None:
        brain_mask = healthy.with_array(ndi.binary_fill_holes(healthy.array > 0))
    manifest.pop("files", None)
    manifest.pop("convention", None)
    return PseudoCase(scan, lesion, healthy, labels, disp, brain_mask, manifest)


def make_cases(
    out_dir: str | os.PathLike[str],
    n: int,
    seed: int,
    brains: Sequence[SourceBrain],
    lesions: Sequence[LesionSource],
    *,
    peak_range: tuple[float, float] = (2.0, 8.0),
    flip_probability: float = 0.5,
    smoothness_mm: float = 16.0,
    min_inside: float = 0.5,
    max_attempts: int = 50,
) -> list[Path]:
    """Make and write ``n`` pseudo cases, deterministically.

    Case ``i`` uses ``numpy.random.default_rng([seed, i])``: it picks the brain, then, per
    attempt, a lesion, the flip, the peak (uniform in ``peak_range``) and the case seed of
    :func:`make_case`. An attempt whose lesion fails the brain check
    (:class:`LesionPlacementError`) is skipped and the next draw of the same generator is
    used, so the outcome depends only on ``(seed, i)`` and the inputs. Case ``i`` is written
    to ``out_dir / f"case_{i:03d}"``; its manifest gets ``batch_seed``, ``case_index`` and
    ``attempt``.

    Parameters
    ----------
    out_dir : path
        Output folder (created).
    n : int
        Number of cases (>= 0).
    seed : int
        Batch seed.
    brains, lesions : sequence
        Non-empty; all on one grid.
    peak_range, flip_probability, smoothness_mm, min_inside
        See :func:`make_case`.
    max_attempts : int
        Lesion draws per case before giving up.

    Returns
    -------
    list of pathlib.Path
        The case folders, in order.

    Raises
    ------
    SyntheticError
        Empty inputs, bad ``n``, or no lesion fits a brain within ``max_attempts`` draws.
    """
    if not brains or not lesions:
        raise SyntheticError("make_cases: need at least one source brain and one lesion source")
    if int(n) < 0:
        raise SyntheticError(f"make_cases: n must be >= 0, got {n}")
    if not 0.0 <= flip_probability <= 1.0:
        raise SyntheticError(f"make_cases: flip_probability must be in [0, 1]: {flip_probability}")
    lo, hi = (float(p) for p in peak_range)
    out = Path(out_dir)
    paths: list[Path] = []
    for i in range(int(n)):
        rng = np.random.default_rng([int(seed), i])
        brain = brains[int(rng.integers(len(brains)))]
        case = None
        for attempt in range(int(max_attempts)):
            lesion = lesions[int(rng.integers(len(lesions)))]
            flip = bool(rng.random() < flip_probability)
            peak = float(rng.uniform(lo, hi))
            case_seed = int(rng.integers(2**31))
            try:
                case = make_case(
                    brain,
                    lesion,
                    case_seed,
                    peak_mm=peak,
                    flip=flip,
                    peak_range=(lo, hi),
                    smoothness_mm=smoothness_mm,
                    min_inside=min_inside,
                )
            except LesionPlacementError as exc:
                logger.info("case %d, attempt %d: %s", i, attempt, exc)
                continue
            manifest = {**case.manifest, "batch_seed": int(seed), "case_index": i}
            manifest["attempt"] = attempt
            case = replace(case, manifest=manifest)
            break
        if case is None:
            raise SyntheticError(
                f"make_cases: case {i}: no lesion fits brain {brain.name!r} in {max_attempts} draws"
            )
        paths.append(write_case(case, out / f"case_{i:03d}"))
        logger.info("wrote %s (%s + %s)", paths[-1], brain.name, case.manifest["lesion_source"])
    return paths
