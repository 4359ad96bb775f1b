"""The MNI152 atlas (ICBM 2009a symmetric, from the nilearn wheel) and GIRNet's working grids.

The atlas is the ICBM 152 2009a non-linear *symmetric* T1 template (Fonov et al. 2009/2011)
that ships inside the ``nilearn`` wheel, so it loads offline:
``nilearn.datasets.load_mni152_template(resolution=1)`` and
``load_mni152_brain_mask(resolution=1)``: 197 x 233 x 189 voxels, 1 mm, RAS, voxel (0, 0, 0) at
world (-98, -134, -72) mm.

GIRNet (Liu & Gu, MICCAI 2023; upstream code) crops this grid to 160 x 192 x 144 voxels around voxel
(98, 116, 85) (MONAI ``SpatialCropd``), i.e. voxels 18..177, 20..211 and 13..156. The *working
grid* of any resolution is the same world box (160 x 192 x 144 mm, centre at world
(-0.5, -18.5, 12.5) mm) sampled at that resolution and padded symmetrically, in world space, to a
multiple of 16 voxels per axis (the U-Nets pool four times):

========  ==================  ==========  ==================================
preset    shape (X, Y, Z)     spacing     relation to the 1 mm atlas grid
========  ==================  ==========  ==================================
``1mm``   (160, 192, 144)     1 mm        exact crop, voxel (18, 20, 13) = (0, 0, 0)
``2mm``   (80, 96, 80)        2 mm        same box, z extended by 8 mm at both ends
========  ==================  ==========  ==================================

Licence: the template files are distributed with nilearn (BSD-3-Clause) under the MNI/McGill
permissive notice (Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging Centre,
Montreal Neurological Institute, McGill University).
"""

from __future__ import annotations

import functools
import logging
import math
import re
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from napari_girnet.data.volume import Volume

__all__ = [
    "ATLAS_CROP_CENTER_VOXEL",
    "ATLAS_CROP_SHAPE",
    "ATLAS_PRESETS",
    "Atlas",
    "AtlasError",
    "AtlasPreset",
    "load_atlas",
    "load_atlas_full",
    "pad_to_multiple",
    "working_grid",
]

logger = logging.getLogger(__name__)

#: GIRNet's crop of the 1 mm atlas grid: MONAI ``SpatialCropd(roi_size=..., roi_center=...)``.
ATLAS_CROP_SHAPE: tuple[int, int, int] = (160, 192, 144)
ATLAS_CROP_CENTER_VOXEL: tuple[int, int, int] = (98, 116, 85)

#: Affine of the 1 mm nilearn atlas grid (RAS, 1 mm, origin (-98, -134, -72) mm).
_ATLAS_1MM_SHAPE: tuple[int, int, int] = (197, 233, 189)
_ATLAS_1MM_AFFINE = np.array(
    [[1.0, 0, 0, -98.0], [0, 1.0, 0, -134.0], [0, 0, 1.0, -72.0], [0, 0, 0, 1.0]]
)


class AtlasError(ValueError):
    """Raised for an unknown atlas preset or an atlas file that does not look as expected."""


@dataclass(frozen=True)
class AtlasPreset:
    """A named working grid.

    Attributes
    ----------
    name : str
        Preset name (key of :data:`ATLAS_PRESETS`).
    resolution_mm : float
        Isotropic voxel size in mm.
    multiple : int
        Every axis of the grid is padded to a multiple of this many voxels.
    """

    name: str
    resolution_mm: float
    multiple: int = 16


#: The working-grid presets. The names are an interface (CLI, widget, checkpoints).
ATLAS_PRESETS: dict[str, AtlasPreset] = {
    "1mm": AtlasPreset("1mm", 1.0, 16),
    "2mm": AtlasPreset("2mm", 2.0, 16),
}


@dataclass(frozen=True)
class Atlas:
    """The atlas on one grid.

    Attributes
    ----------
    image : Volume
        T1 template, float32 in [0, 1] inside the brain (min-max over the brain of the 1 mm
        template), exactly 0 outside ``mask``. Canonical RAS grid of the preset.
    mask : Volume
        Brain mask (bool) on the same grid as ``image``.
    preset : str
        ``"1mm"``, ``"2mm"`` or ``"full"`` (the uncropped 1 mm grid).

    Notes
    -----
    Atlases are cached and shared: their arrays are read-only. Copy before modifying in place.
    """

    image: Volume
    mask: Volume
    preset: str

    @property
    def shape(self) -> tuple[int, int, int]:
        """Grid shape ``(X, Y, Z)`` in voxels."""
        return self.image.shape

    @property
    def affine(self) -> np.ndarray:
        """Voxel-to-world affine (RAS mm) of the grid."""
        return self.image.affine


# --------------------------------------------------------------------------- grids
def _crop_box_mm() -> tuple[np.ndarray, np.ndarray]:
    """Centre (world RAS mm) and extent (mm, voxel edges to voxel edges) of GIRNet's crop."""
    shape = np.asarray(ATLAS_CROP_SHAPE, dtype=np.float64)
    start = np.asarray(ATLAS_CROP_CENTER_VOXEL, dtype=np.float64) - shape // 2
    centre_voxel = start + (shape - 1.0) / 2.0
    centre = _ATLAS_1MM_AFFINE[:3, :3] @ centre_voxel + _ATLAS_1MM_AFFINE[:3, 3]
    return centre, shape * 1.0


def working_grid(
    resolution_mm: float, multiple: int = 16
) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape and affine of GIRNet's crop box sampled at ``resolution_mm``.

    The box is GIRNet's 160 x 192 x 144 mm crop of the 1 mm atlas (voxels 18..177, 20..211,
    13..156 of the nilearn grid, centre at world (-0.5, -18.5, 12.5) mm RAS). The number of
    voxels per axis is ``ceil(extent / resolution_mm)`` rounded up to a multiple of
    ``multiple``; the padding is symmetric in world space, so the centre of the returned grid
    is the centre of the crop at every resolution.

    Parameters
    ----------
    resolution_mm : float
        Isotropic voxel size in mm (> 0).
    multiple : int
        Each axis length is a multiple of this (>= 1). 16 for the four-level U-Nets.

    Returns
    -------
    shape : tuple of int
        ``(X, Y, Z)`` in voxels, RAS axis order.
    affine : numpy.ndarray
        4x4 voxel-to-world affine (RAS mm), diagonal ``resolution_mm``.

    Raises
    ------
    AtlasError
        If ``resolution_mm <= 0`` or ``multiple < 1``.
    """
    if not (resolution_mm > 0 and math.isfinite(resolution_mm)):
        raise AtlasError(f"working grid: resolution must be a positive number, got {resolution_mm}")
    if int(multiple) < 1:
        raise AtlasError(f"working grid: multiple must be >= 1, got {multiple}")
    multiple = int(multiple)
    centre, extent = _crop_box_mm()
    n = np.ceil(extent / resolution_mm - 1e-6).astype(int)
    n = (np.ceil(n / multiple) * multiple).astype(int)
    affine = np.eye(4)
    affine[:3, :3] *= resolution_mm
    affine[:3, 3] = centre - (n - 1) / 2.0 * resolution_mm
    return (int(n[0]), int(n[1]), int(n[2])), affine


def pad_to_multiple(volume: Volume, multiple: int = 16, fill: float = 0.0) -> Volume:
    """Pad a volume so that each axis length is a multiple of ``multiple``, keeping world positions.

    Padding is split evenly between both ends of each axis (one more voxel at the end when the
    amount is odd). The affine's translation is moved by the padding before the start, so every
    existing voxel keeps its world position.

    Parameters
    ----------
    volume : Volume
        Any grid (need not be canonical).
    multiple : int
        Target multiple (>= 1).
    fill : float
        Value of the new voxels (cast to the array's dtype).

    Returns
    -------
    Volume
        New volume with the same dtype, name and meta; ``source_affine`` is dropped (new grid).

    Raises
    ------
    AtlasError
        If ``multiple < 1``.
    """
    if int(multiple) < 1:
        raise AtlasError(f"{volume.name or 'volume'}: multiple must be >= 1, got {multiple}")
    multiple = int(multiple)
    shape = np.asarray(volume.shape)
    target = (np.ceil(shape / multiple) * multiple).astype(int)
    total = target - shape
    before = total // 2
    after = total - before
    if not total.any():
        return volume
    array = np.pad(
        volume.array,
        [(int(b), int(a)) for b, a in zip(before, after, strict=True)],
        mode="constant",
        constant_values=np.asarray(fill).astype(volume.array.dtype),
    )
    shift = np.eye(4)
    shift[:3, 3] = -before
    return Volume(array, volume.affine @ shift, name=volume.name, meta=dict(volume.meta))


# --------------------------------------------------------------------------- loading
def _readonly(array: np.ndarray) -> np.ndarray:
    array = np.ascontiguousarray(array)
    array.setflags(write=False)
    return array


@functools.lru_cache(maxsize=1)
def _raw_template() -> tuple[np.ndarray, np.ndarray, np.ndarray, float, float]:
    """Template (float32), mask (bool), affine, and min/max of the template inside the mask."""
    from nilearn import datasets  # deferred: importing nilearn.datasets takes ~1.5 s

    template = datasets.load_mni152_template(resolution=1)
    mask_img = datasets.load_mni152_brain_mask(resolution=1)
    t = np.asarray(template.get_fdata(dtype=np.float32))
    m = np.asarray(mask_img.get_fdata()) > 0
    affine = np.asarray(template.affine, dtype=np.float64)
    if t.shape != _ATLAS_1MM_SHAPE or not np.allclose(affine, _ATLAS_1MM_AFFINE):
        raise AtlasError(
            f"nilearn MNI152 template: expected shape {_ATLAS_1MM_SHAPE} with origin "
            f"(-98, -134, -72) mm, got {t.shape} with affine\n{affine}"
        )
    if m.shape != t.shape or not np.allclose(mask_img.affine, affine):
        raise AtlasError("nilearn MNI152 brain mask is not on the template's grid")
    lo, hi = float(t[m].min()), float(t[m].max())
    return t, m, affine, lo, hi


def _normalise_template(t: np.ndarray, mask: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Min-max to [0, 1] with the brain's min/max of the 1 mm template, 0 outside ``mask``."""
    out = np.clip((t - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)
    out[~mask] = 0.0
    return out


@functools.lru_cache(maxsize=1)
def load_atlas_full() -> Atlas:
    """The uncropped 1 mm atlas (197 x 233 x 189, RAS, origin (-98, -134, -72) mm).

    Used as the fixed image of the affine alignment. The image is the nilearn template times
    the nilearn brain mask (the template holds values up to 0.2 outside the mask), min-max
    normalised to [0, 1] over the brain.

    Returns
    -------
    Atlas
        ``preset == "full"``; cached, arrays read-only.
    """
    t, m, affine, lo, hi = _raw_template()
    image = _normalise_template(t, m, lo, hi)
    return Atlas(
        image=Volume(_readonly(image), affine, name="MNI152 2009a sym (1 mm)"),
        mask=Volume(_readonly(m), affine, name="MNI152 2009a sym brain mask (1 mm)"),
        preset="full",
    )


def _sample(array: np.ndarray, src_affine: np.ndarray, shape, affine, order: int) -> np.ndarray:
    """Sample ``array`` (on ``src_affine``) at the voxel centres of (``shape``, ``affine``)."""
    m = np.linalg.inv(src_affine) @ affine
    return ndi.affine_transform(
        array,
        m[:3, :3],
        m[:3, 3],
        output_shape=tuple(shape),
        order=order,
        mode="constant",
        cval=0.0,
        prefilter=False,
    )


def _atlas_on_grid(shape, affine, name: str) -> Atlas:
    t, m, src_affine, lo, hi = _raw_template()
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    rel = np.linalg.inv(src_affine) @ affine
    if (
        np.allclose(spacing, 1.0)
        and np.allclose(rel[:3, :3], np.eye(3))
        and np.allclose(rel[:3, 3], np.round(rel[:3, 3]), atol=1e-6)
    ):
        # integer-offset crop of the 1 mm grid: no interpolation at all
        start = np.round(rel[:3, 3]).astype(int)
        padded_t = np.zeros(shape, dtype=np.float32)
        padded_m = np.zeros(shape, dtype=bool)
        src = tuple(
            slice(max(s, 0), min(s + n, d)) for s, n, d in zip(start, shape, t.shape, strict=True)
        )
        dst = tuple(slice(sl.start - s, sl.stop - s) for sl, s in zip(src, start, strict=True))
        padded_t[dst] = t[src]
        padded_m[dst] = m[src]
        tt, mm = padded_t, padded_m
    else:
        # linear sampling: at 2 mm the sample points fall between 2x2x2 source voxels, so this
        # is a block average of the 1 mm template (no aliasing); mask = linear coverage > 0.5
        tt = _sample(t, src_affine, shape, affine, order=1)
        mm = _sample(m.astype(np.float32), src_affine, shape, affine, order=1) > 0.5
    image = _normalise_template(tt, mm, lo, hi)
    return Atlas(
        image=Volume(_readonly(image), affine, name=f"MNI152 2009a sym ({name})"),
        mask=Volume(_readonly(mm), affine, name=f"MNI152 2009a sym brain mask ({name})"),
        preset=name,
    )


def load_atlas(preset: str = "2mm") -> Atlas:
    """The atlas on a working grid (see :data:`ATLAS_PRESETS` and :func:`working_grid`).

    Parameters
    ----------
    preset : str
        ``"1mm"``: GIRNet's exact 160 x 192 x 144 crop (voxels 18.., 20.., 13.. of the 1 mm
        grid, no interpolation). ``"2mm"``: the same world box at 2 mm, padded to
        80 x 96 x 80; template resampled linearly (= 2x2x2 block average), mask = linear
        coverage > 0.5. Voxels outside the 1 mm atlas are 0.

    Returns
    -------
    Atlas
        Cached per preset; arrays are read-only.

    Raises
    ------
    AtlasError
        (a ``ValueError``) for an unknown preset; the message lists the valid ones.
    """
    return _load_preset(_preset_spec(preset).name)


def _preset_spec(preset: str) -> AtlasPreset:
    """Named preset, or any ``"<N>mm"`` resolution (e.g. ``"6mm"`` for tiny test grids)."""
    if preset in ATLAS_PRESETS:
        return ATLAS_PRESETS[preset]
    match = re.fullmatch(r"(\d+(?:\.\d+)?)mm", str(preset))
    if match is None or float(match.group(1)) <= 0:
        raise AtlasError(
            f"unknown atlas preset {preset!r}; valid presets: {', '.join(sorted(ATLAS_PRESETS))}"
            " or '<N>mm' for another isotropic resolution"
        )
    return AtlasPreset(str(preset), float(match.group(1)), 16)


@functools.lru_cache(maxsize=8)
def _load_preset(preset: str) -> Atlas:
    spec = _preset_spec(preset)
    shape, affine = working_grid(spec.resolution_mm, spec.multiple)
    logger.debug("building atlas preset %s: shape %s", preset, shape)
    return _atlas_on_grid(shape, affine, preset)
