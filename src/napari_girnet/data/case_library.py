"""Pseudo cases from folders: many healthy brains, real lesion masks, synthetic tumours.

This extends :mod:`napari_girnet.data.synthetic` (GIRNet's pseudo dataset, Liu & Gu, MICCAI 2023,
arXiv 2310.11040 Fig. 7) to **any folder of skull-stripped healthy T1s** (with brain masks and
optional label maps) and **any folder of binary lesion masks in MNI space**, plus synthetic
tumour-like lesions. Lesion masks carry no intensities, so their T1 appearance comes from
:mod:`napari_girnet.data.lesion_appearance` (derived from the healthy brain's own CSF).

One case ``i`` of :func:`make_library_cases` (all draws from
``numpy.random.default_rng([seed, i])``):

1. its split (:func:`case_split`: every ``1 / val_fraction``-th case is validation), then its
   lesion kind (``tumour`` / ``stroke`` / ``ms``, by the mix), a healthy brain **of that split**
   (:func:`healthy_split`), and per attempt a lesion mask of that kind and split
   (:func:`lesion_split`);
2. ``field`` = :func:`~napari_girnet.data.synthetic.random_diffeomorphism` drawn at half
   resolution and upsampled (:func:`coarse_diffeomorphism`; peak uniform in [2, 8] mm); for
   a tumour with mass effect, the radial push ``m`` of
   :func:`~napari_girnet.data.lesion_appearance.radial_push` is composed into it:
   ``field'(x) = m(x) + field(x + m(x))``, so ``healthy = warp(source, field')`` holds exactly;
3. ``healthy`` / ``brain_mask`` / ``labels`` = the source brain warped by ``field``;
4. the lesion (mask, optionally mirrored left-right, restricted to ``brain_mask``; or a
   synthetic tumour) gets its appearance (a recipe with its parameters, recorded);
5. the same intensity augmentation (bias field, gamma, noise;
   :func:`~napari_girnet.data.lesion_appearance.augment_intensity`) is applied to the scan and
   to ``healthy``, so they differ only in the lesion; ``healthy =
   augment_intensity(warp(source, field), brain_mask, manifest["augmentation"])``.

**Split rule** (fixed, so that every engineer and benchmark agrees; independent of the seed):
healthy subjects ``1119, 1122, 1125, 1128`` (OASIS) are validation brains (in a folder
without any of them: every 7th subject in sorted order); lesion masks: in each folder, sorted
file names, every 7th (1-based 7th, 14th, ...) plus MS patients 18 and 20 are validation
lesions; MS patients 07 and 19 and any glioma are never used (bundled real samples, held out).
Synthetic tumours are drawn fresh for every case, so they are never shared between cases.

Healthy brains are affinely aligned and resampled to the working grid once
(:func:`~napari_girnet.data.preprocess.prepare_scan`) and cached under
``<out>/_healthy_cache/<resolution>/<id>/``.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from napari_girnet._version import __version__
from napari_girnet.data import lesion_appearance as la
from napari_girnet.data.atlas import Atlas, load_atlas
from napari_girnet.data.nifti import read_nifti, write_nifti
from napari_girnet.data.preprocess import prepare_scan, resample, to_working_grid
from napari_girnet.data.synthetic import (
    FIELD_CONVENTION,
    LesionPlacementError,
    PseudoCase,
    SourceBrain,
    SyntheticError,
    _lr_axis,
    _warp_np,
    random_diffeomorphism,
    write_case,
)
from napari_girnet.data.volume import Volume

__all__ = [
    "CASE_KINDS",
    "DEFAULT_MIX",
    "HELD_OUT_LESION_PATTERNS",
    "SPLIT_RULE",
    "VAL_HEALTHY_IDS",
    "VAL_LESION_PATTERNS",
    "HealthyFile",
    "LesionFile",
    "LibraryError",
    "case_split",
    "coarse_diffeomorphism",
    "compose_fields",
    "healthy_split",
    "lesion_split",
    "load_healthy",
    "load_lesion_mask",
    "make_library_case",
    "make_library_cases",
    "min_jacobian_det",
    "scan_healthy_dir",
    "scan_lesion_dir",
    "warp_source",
]

logger = logging.getLogger(__name__)

#: Lesion kinds of library cases.
CASE_KINDS: tuple[str, ...] = ("tumour", "stroke", "ms")
#: Default mix of kinds (renormalised over the kinds that are available).
DEFAULT_MIX: dict[str, float] = {"tumour": 0.35, "stroke": 0.35, "ms": 0.30}
#: Healthy subjects (OASIS ids) reserved for validation.
VAL_HEALTHY_IDS: tuple[str, ...] = ("1119", "1122", "1125", "1128")
#: Lesion file names that are always validation (MS patients 18 and 20).
VAL_LESION_PATTERNS: tuple[str, ...] = (r"patient0*18(?!\d)", r"patient0*20(?!\d)")
#: Lesion file names never used (bundled real samples: MS 07, MS 19, the glioma).
HELD_OUT_LESION_PATTERNS: tuple[str, ...] = (
    r"patient0*7(?!\d)",
    r"patient0*19(?!\d)",
    r"glioma",
    r"tcga-du-7294",
)
#: The split rule in words (stored in every case.json).
SPLIT_RULE = (
    "healthy: OASIS subjects 1119, 1122, 1125, 1128 are validation (a folder without any of "
    "them: every 7th subject of the sorted ids); lesions: per folder, sorted file names, every "
    "7th (1-based) plus MS patients 18 and 20 are validation; MS patients 07, 19 and the "
    "glioma are never used; case i is validation when floor((i+1) f) > floor(i f), f = "
    "validation fraction; a case uses a brain and a lesion of its own split"
)
_IMAGE_SUFFIXES = ("_SS", "_T1", "_t1", "_T1w", "_brain")
_MASK_SUFFIXES = ("_mask", "_brainmask", "_brain_mask")
_LABEL_SUFFIXES = ("_glm", "_labels", "_aseg")
_NII = re.compile(r"\.nii(\.gz)?$")


class LibraryError(SyntheticError):
    """A healthy or lesion folder that cannot be used (one-line message naming it)."""


# --------------------------------------------------------------------------- split rule
def case_split(index: int, val_fraction: float = 0.25) -> str:
    """``"val"`` when ``floor((index + 1) f) > floor(index f)``, else ``"train"``.

    With ``f = 0.25`` cases 3, 7, 11, ... are validation (every 4th).
    """
    if not 0.0 <= val_fraction < 1.0:
        raise LibraryError(f"validation fraction must be in [0, 1), got {val_fraction}")
    f = float(val_fraction)
    return "val" if math.floor((index + 1) * f) > math.floor(index * f) else "train"


def healthy_split(ids: Sequence[str]) -> dict[str, str]:
    """Split of healthy subject ids: ``{id: "train" | "val"}`` (rule in :data:`SPLIT_RULE`).

    Subjects in :data:`VAL_HEALTHY_IDS` are validation; when none of them is present, every
    7th id of the sorted list (positions 7, 14, ... counted from 1).
    """
    ordered = sorted(str(i) for i in ids)
    fixed = set(VAL_HEALTHY_IDS) & set(ordered)
    out: dict[str, str] = {}
    for k, sid in enumerate(ordered):
        val = sid in fixed if fixed else (k % 7 == 6)
        out[sid] = "val" if val else "train"
    return out


def lesion_split(names: Sequence[str]) -> dict[str, str]:
    """Split of the lesion files of one folder: ``{name: "train" | "val" | "held_out"}``.

    ``names`` are file names (or stems). Sorted; position ``k`` (0-based) with ``k % 7 == 6``
    is validation, so are names matching :data:`VAL_LESION_PATTERNS`; names matching
    :data:`HELD_OUT_LESION_PATTERNS` are ``"held_out"`` (never used). Case-insensitive.
    """
    ordered = sorted(str(n) for n in names)
    out: dict[str, str] = {}
    for k, name in enumerate(ordered):
        low = name.lower()
        if any(re.search(p, low) for p in HELD_OUT_LESION_PATTERNS):
            out[name] = "held_out"
        elif k % 7 == 6 or any(re.search(p, low) for p in VAL_LESION_PATTERNS):
            out[name] = "val"
        else:
            out[name] = "train"
    return out


# --------------------------------------------------------------------------- folders
@dataclass(frozen=True)
class HealthyFile:
    """One healthy subject of a folder: ``id``, T1 ``image``, brain ``mask``, ``labels``."""

    id: str
    image: Path
    mask: Path | None
    labels: Path | None
    split: str


@dataclass(frozen=True)
class LesionFile:
    """One lesion mask file: ``source`` id (``<folder>/<stem>``), ``kind``, ``split``."""

    source: str
    path: Path
    kind: str
    split: str


def _stem(path: Path) -> str:
    return _NII.sub("", path.name)


def scan_healthy_dir(folder: str | os.PathLike[str]) -> list[HealthyFile]:
    """The healthy subjects of a folder, sorted by id, with their split.

    A subject is a T1 file ``<ID><suffix>.nii[.gz]`` with suffix one of ``_SS``, ``_T1``,
    ``_t1``, ``_T1w``, ``_brain`` (skull-stripped), an optional brain mask ``<ID>_mask`` /
    ``_brainmask`` / ``_brain_mask`` and optional labels ``<ID>_glm`` / ``_labels`` /
    ``_aseg`` (e.g. the OASIS MALF layout ``NNNN_SS``, ``NNNN_mask``, ``NNNN_glm``).

    Raises
    ------
    LibraryError
        The folder does not exist or holds no such T1 file.
    """
    root = Path(folder)
    if not root.is_dir():
        raise LibraryError(f"{root}: healthy-brain folder not found")
    files = {_stem(p): p for p in sorted(root.iterdir()) if _NII.search(p.name)}
    subjects: dict[str, Path] = {}
    for stem, path in files.items():
        for suffix in _IMAGE_SUFFIXES:
            if stem.endswith(suffix) and len(stem) > len(suffix):
                subjects.setdefault(stem[: -len(suffix)], path)
                break
    if not subjects:
        raise LibraryError(
            f"{root}: no skull-stripped T1 found (expected <ID>_SS.nii.gz or <ID>_T1.nii.gz)"
        )
    splits = healthy_split(list(subjects))

    def find(sid: str, suffixes: Sequence[str]) -> Path | None:
        for s in suffixes:
            if sid + s in files:
                return files[sid + s]
        return None

    return [
        HealthyFile(
            sid, subjects[sid], find(sid, _MASK_SUFFIXES), find(sid, _LABEL_SUFFIXES), splits[sid]
        )
        for sid in sorted(subjects)
    ]


def _folder_id(root: Path) -> str:
    name = root.name
    if name.lower() in ("masks", "labels", "lesions") and root.parent.name:
        return root.parent.name
    return name


def infer_kind(folder: str | os.PathLike[str]) -> str:
    """Lesion kind from a folder path: ``"ms"`` if a path part names MS, else ``"stroke"``."""
    parts = [p.lower() for p in Path(folder).resolve().parts[-3:]]
    if any(re.search(r"(^|[^a-z])ms([^a-z]|$)|sclerosis", p) for p in parts):
        return "ms"
    return "stroke"


def scan_lesion_dir(folder: str | os.PathLike[str], kind: str | None = None) -> list[LesionFile]:
    """The lesion masks of a folder (``*.nii`` / ``*.nii.gz``), sorted, with their split.

    Parameters
    ----------
    folder : path
        Folder of binary masks in MNI space.
    kind : str or None
        ``"stroke"`` or ``"ms"`` (appearance recipes); ``None`` = :func:`infer_kind`.

    Returns
    -------
    list of LesionFile
        Held-out files included (``split == "held_out"``); callers skip them.

    Raises
    ------
    LibraryError
        Missing folder, no NIfTI file, or a bad kind.
    """
    root = Path(folder)
    if not root.is_dir():
        raise LibraryError(f"{root}: lesion-mask folder not found")
    kind = infer_kind(root) if kind is None else kind
    if kind not in ("stroke", "ms"):
        raise LibraryError(f"{root}: lesion kind must be 'stroke' or 'ms', got {kind!r}")
    paths = sorted(p for p in root.iterdir() if _NII.search(p.name) and p.is_file())
    if not paths:
        raise LibraryError(f"{root}: no lesion masks (*.nii.gz) in this folder")
    splits = lesion_split([p.name for p in paths])
    fid = _folder_id(root)
    return [LesionFile(f"{fid}/{_stem(p)}", p, kind, splits[p.name]) for p in paths]


def load_lesion_mask(path: str | os.PathLike[str], atlas: Atlas) -> np.ndarray:
    """A binary lesion mask in MNI space, resampled onto the atlas working grid.

    The mask (any grid whose world frame is MNI: FSL / SPM MNI, the ICBM 2009 grids) is
    sampled linearly at the working-grid voxel centres (identity transform: world
    coordinates agree) and thresholded at 0.5.

    Checks that it is in MNI space: the file's field of view must cover at least 80 % of the
    atlas brain mask, and at least half of the resampled lesion must lie in the atlas brain
    mask dilated by 3 voxels.

    Returns
    -------
    numpy.ndarray
        ``(X, Y, Z)`` bool on ``atlas.image``'s grid (may be empty for a tiny lesion).

    Raises
    ------
    LibraryError
        Unreadable, not 3D, not binary, or not on MNI space.
    """
    p = Path(path)
    try:
        vol = read_nifti(p, name=str(p))
    except ValueError as exc:
        raise LibraryError(f"{p}: cannot read the lesion mask ({exc})") from exc
    arr = np.asarray(vol.array)
    if not np.all(np.isfinite(arr)) or float(arr.min()) < 0 or float(arr.max()) > 1.0 + 1e-6:
        raise LibraryError(f"{p}: not a binary mask (values must be 0/1)")
    grid = atlas.image
    brain = np.asarray(atlas.mask.array, dtype=bool)
    vox = np.argwhere(brain)[:: max(1, int(brain.sum()) // 4000)]
    world = grid.voxel_to_world(vox.astype(np.float64))
    src = vol.world_to_voxel(world)
    inside = np.all((src >= -0.5) & (src <= np.asarray(vol.shape) - 0.5), axis=1)
    if inside.mean() < 0.8:
        raise LibraryError(
            f"{p}: not a mask on MNI space (its field of view covers {inside.mean():.0%} of "
            "the atlas brain)"
        )
    out = resample(vol.with_array(arr.astype(np.float32)), grid.shape, grid.affine, order=1)
    mask = np.asarray(out.array) >= 0.5
    if mask.any():
        near = ndi.binary_dilation(brain, iterations=3)
        frac = float((mask & near).sum()) / float(mask.sum())
        if frac < 0.5:
            raise LibraryError(
                f"{p}: not a mask on MNI space (only {frac:.0%} of the lesion lies in the "
                "atlas brain)"
            )
    return mask


def _csf_labels(folder: Path) -> tuple[int, ...]:
    """Label values of class CSF from ``labels.csv`` (``Label Number``, ``Class``), if any."""
    table = folder / "labels.csv"
    if not table.is_file():
        return ()
    values = set()
    with table.open(encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh):
            if (row.get("Class") or "").strip().upper() == "CSF":
                try:
                    values.add(int(row.get("Label Number") or ""))
                except ValueError:
                    continue
    return tuple(sorted(values))


def load_healthy(
    subject: HealthyFile, atlas: Atlas, cache_dir: str | os.PathLike[str] | None = None
) -> SourceBrain:
    """A healthy subject affinely aligned and resampled onto the working grid (cached).

    :func:`~napari_girnet.data.preprocess.prepare_scan` (brain mask from the subject's mask
    file when there is one; alignment seed 0); labels resampled by nearest neighbour through
    the same alignment. With ``cache_dir``, the result is written to
    ``cache_dir/<id>/{image,mask,labels}.nii.gz`` + ``info.json`` and read back next time
    (the cache is keyed by source file names and sizes and the grid).

    Returns
    -------
    SourceBrain
        ``name = subject.id``; image float32 in [0, 1] on ``atlas.image``'s grid.
    """
    key = {
        "image": [str(subject.image), subject.image.stat().st_size],
        "mask": None if subject.mask is None else [str(subject.mask), subject.mask.stat().st_size],
        "labels": None
        if subject.labels is None
        else [str(subject.labels), subject.labels.stat().st_size],
        "grid_shape": list(atlas.image.shape),
        "grid_affine": np.round(atlas.image.affine, 4).tolist(),
        "version": 1,
    }
    folder = None if cache_dir is None else Path(cache_dir) / subject.id
    if folder is not None and (folder / "info.json").is_file():
        try:
            info = json.loads((folder / "info.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            info = {}
        if info.get("key") == key:
            image = read_nifti(folder / "image.nii.gz", name=subject.id)
            mask = read_nifti(folder / "mask.nii.gz", name=f"{subject.id} mask")
            labels = None
            if (folder / "labels.nii.gz").is_file():
                labels = read_nifti(folder / "labels.nii.gz", name=f"{subject.id} labels")
            return SourceBrain(
                subject.id,
                image.with_array(np.asarray(image.array, dtype=np.float32)),
                labels,
                mask.with_array(np.asarray(mask.array) > 0),
            )
    try:
        t1 = read_nifti(subject.image, name=str(subject.image))
        mask_vol = None
        if subject.mask is not None:
            m = read_nifti(subject.mask, name=str(subject.mask))
            mask_vol = m.with_array(np.asarray(m.array) > 0)
    except ValueError as exc:
        raise LibraryError(f"{subject.image}: cannot read the healthy brain ({exc})") from exc
    prepared = prepare_scan(t1, atlas, seed=0, mask=mask_vol)
    labels = None
    if subject.labels is not None:
        lab = read_nifti(subject.labels, name=str(subject.labels))
        lab = lab.with_array(np.asarray(lab.array).astype(np.int16))
        labels = to_working_grid(lab, atlas, prepared.alignment, order=0)
    grid = atlas.image
    brain = SourceBrain(
        subject.id,
        Volume(np.asarray(prepared.image.array, dtype=np.float32), grid.affine, name=subject.id),
        None if labels is None else Volume(labels.array, grid.affine, name=f"{subject.id} labels"),
        Volume(np.asarray(prepared.mask.array, dtype=bool), grid.affine, name=f"{subject.id} mask"),
    )
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        write_nifti(brain.image, folder / "image.nii.gz", restore_orientation=False)
        mask_out = Volume(brain.brain_mask(), grid.affine, name=f"{subject.id} mask")
        write_nifti(mask_out, folder / "mask.nii.gz", restore_orientation=False, dtype=np.uint8)
        if brain.labels is not None:
            write_nifti(
                brain.labels, folder / "labels.nii.gz", restore_orientation=False, dtype=np.int16
            )
        info = {"key": key, "alignment_atlas_to_scan_ras": prepared.alignment.matrix.tolist()}
        (folder / "info.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        # re-read so a fresh run and a cached run give the same bytes
        return load_healthy(subject, atlas, cache_dir)
    return brain


# --------------------------------------------------------------------------- geometry
def compose_fields(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """``inner(x) + outer(x + inner(x))``: warping by the result = warping by ``outer``,
    then by ``inner`` (voxel displacements ``(3, X, Y, Z)`` of one grid, backward warps).

    ``warp(warp(src, outer), inner)(x) = src(y + outer(y))`` with ``y = x + inner(x)``.
    """
    moved = np.stack([_warp_np(outer[c], inner) for c in range(outer.shape[0])])
    return (inner + moved).astype(np.float32)


def coarse_diffeomorphism(
    shape: Sequence[int], spacing_mm: Sequence[float] | np.ndarray, peak_mm: float, seed: int
) -> np.ndarray:
    """:func:`~napari_girnet.data.synthetic.random_diffeomorphism` drawn at half resolution.

    The field is drawn on the grid of every second voxel (shape ``(n - 1) // 2 + 1`` per axis,
    twice the spacing; smoothness 16 mm), then upsampled linearly (coarse voxel ``j`` = fine
    voxel ``2 j``; beyond the last coarse voxel the nearest value) and doubled (voxel units).
    About 8x cheaper; the field stays smooth (sigma 16 mm >> 4 mm) and its true peak and
    minimum Jacobian determinant are measured on the fine grid and recorded by the caller.

    Returns
    -------
    numpy.ndarray
        ``(3, X, Y, Z)`` float32 displacement in voxels of the fine grid.
    """
    shape_t = tuple(int(s) for s in shape)
    coarse = tuple((n - 1) // 2 + 1 for n in shape_t)
    sp = np.asarray(spacing_mm, dtype=np.float64) * 2.0
    disp = random_diffeomorphism(coarse, tuple(float(v) for v in sp), peak_mm, seed)
    out = 2.0 * disp.astype(np.float64)
    for axis, n in enumerate(shape_t):
        out = _upsample2(out, axis + 1, n)
    return out.astype(np.float32)


def _upsample2(a: np.ndarray, axis: int, n: int) -> np.ndarray:
    """Linear 2x upsampling along ``axis`` (sample ``j`` -> ``2 j``), to length ``n``."""
    a = np.moveaxis(a, axis, 0)
    out = np.empty((2 * a.shape[0], *a.shape[1:]), dtype=a.dtype)
    out[0::2] = a
    out[1:-1:2] = 0.5 * (a[:-1] + a[1:])
    out[-1] = a[-1]
    return np.moveaxis(out[:n], 0, axis)


def warp_source(
    brain: SourceBrain, field: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The source brain warped by a case's field (before intensity augmentation).

    Returns
    -------
    image : numpy.ndarray
        ``clip(warp(brain.image, field), 0, 1)`` float32 (trilinear).
    mask : numpy.ndarray
        ``warp(brain mask, field) > 0.5`` bool.
    labels : numpy.ndarray or None
        ``warp(labels, field)`` (nearest).
    """
    image = np.clip(_warp_np(np.asarray(brain.image.array, dtype=np.float32), field), 0.0, 1.0)
    mask = _warp_np(brain.brain_mask().astype(np.float32), field) > 0.5
    labels = None
    if brain.labels is not None:
        labels = _warp_np(np.asarray(brain.labels.array), field, mode="nearest")
    return image.astype(np.float32), mask, labels


def min_jacobian_det(field: np.ndarray) -> float:
    """Smallest ``det(I + grad u)`` of a voxel displacement ``(3, X, Y, Z)`` (central
    differences, ``numpy.gradient``); > 0 everywhere means no folding."""
    grads = [np.gradient(field[c].astype(np.float64)) for c in range(3)]
    j = [[grads[r][c] + (1.0 if r == c else 0.0) for c in range(3)] for r in range(3)]
    det = (
        j[0][0] * (j[1][1] * j[2][2] - j[1][2] * j[2][1])
        - j[0][1] * (j[1][0] * j[2][2] - j[1][2] * j[2][0])
        + j[0][2] * (j[1][0] * j[2][1] - j[1][1] * j[2][0])
    )
    return float(det.min())


# --------------------------------------------------------------------------- cases
def _appearance_for_mask(
    kind: str,
    healthy: np.ndarray,
    lesion: np.ndarray,
    stats: la.TissueStats,
    rng: np.random.Generator,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Recipe for a stroke or MS mask (drawn), applied; returns (scan, recipe record)."""
    if kind == "stroke":
        recipe = ("rank_transplant", "csf_like_chronic", "csf_like_subacute")[int(rng.integers(3))]
    else:
        recipe = ("rank_transplant", "csf_like_ms")[int(rng.integers(2))]
    texture_sigma = float(rng.uniform(0.7, 2.0))
    pv_sigma = float(rng.uniform(0.4, 0.9))
    if recipe == "rank_transplant":
        lo, hi = (0.8, 1.0) if kind == "stroke" else (0.4, 0.9)
        contrast = float(rng.uniform(lo, hi))
        scan = la.rank_transplant(
            healthy,
            lesion,
            stats.csf_values,
            rng,
            contrast=contrast,
            texture_sigma=texture_sigma,
            pv_sigma=pv_sigma,
        )
        params = {"contrast": contrast, "reference": f"healthy CSF ({stats.source})"}
    else:
        lo, hi = {"csf_like_chronic": (0.7, 1.0), "csf_like_subacute": (0.3, 0.6)}.get(
            recipe, (0.3, 0.8)
        )
        contrast = float(rng.uniform(lo, hi))
        texture = float(rng.uniform(0.1, 0.35))
        scan = la.csf_like(
            healthy,
            lesion,
            stats.csf,
            rng,
            contrast=contrast,
            texture=texture,
            texture_sigma=texture_sigma,
            pv_sigma=pv_sigma,
        )
        params = {"contrast": contrast, "texture": texture, "csf_level": stats.csf}
    params.update({"texture_sigma_vox": texture_sigma, "pv_sigma_vox": pv_sigma})
    return scan, {"recipe": recipe, "params": params}


def _csf_mask(labels: np.ndarray | None, csf_values: Sequence[int]) -> np.ndarray | None:
    if labels is None or not csf_values:
        return None
    return np.isin(labels, np.asarray(csf_values))


def make_library_case(
    brain: SourceBrain,
    kind: str,
    rng: np.random.Generator,
    *,
    lesion_mask: np.ndarray | None = None,
    lesion_source: str = "",
    csf_labels: Sequence[int] = (),
    peak_range: tuple[float, float] = (2.0, 8.0),
    tumour_ml: tuple[float, float] = (5.0, 150.0),
    mass_effect_probability: float = 0.5,
    min_inside: float = 0.5,
    min_lesion_ml: float = 0.5,
    augment: bool = True,
    flip_probability: float = 0.5,
) -> PseudoCase:
    """One library case (method in the module docstring); all draws from ``rng``.

    Parameters
    ----------
    brain : SourceBrain
        Healthy brain on the working grid.
    kind : str
        ``"tumour"`` (synthetic; ``lesion_mask`` ignored), ``"stroke"`` or ``"ms"`` (needs
        ``lesion_mask``, bool on the brain's grid).
    rng : numpy.random.Generator
        Randomness.
    csf_labels : sequence of int
        Label values of CSF in ``brain.labels`` (reference of the lesion intensities; without
        them the darkest 5 % of the brain are used).
    peak_range : tuple of float
        Peak displacement range of the random diffeomorphism, mm.
    tumour_ml : tuple of float
        Synthetic tumour volume range, mL (log-uniform).
    mass_effect_probability : float
        Probability of a mass effect for a synthetic tumour.
    min_inside, min_lesion_ml : float
        A mask lesion must keep ``min_inside`` of its voxels inside the deformed brain and at
        least ``min_lesion_ml`` mL.
    augment : bool
        Apply the whole-scan intensity augmentation to scan and healthy.
    flip_probability : float
        Probability to mirror a mask lesion left-right.

    Returns
    -------
    PseudoCase
        Manifest keys added to those of :func:`~napari_girnet.data.synthetic.make_case`:
        ``lesion_kind``, ``appearance`` (recipe and parameters), ``mass_effect``,
        ``augmentation``, ``lesion_volume_ml``, ``tissue_levels``.

    Raises
    ------
    LesionPlacementError
        The lesion does not fit the deformed brain (draw another one).
    """
    if kind not in CASE_KINDS:
        raise LibraryError(f"lesion kind must be one of {CASE_KINDS}, got {kind!r}")
    grid = brain.image
    spacing = np.asarray(grid.spacing, dtype=np.float64)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    peak = float(rng.uniform(*peak_range))
    field_seed = int(rng.integers(2**31))
    flip = bool(rng.random() < flip_probability)
    field = coarse_diffeomorphism(grid.shape, spacing, peak, field_seed)
    mass: dict[str, Any] = {"applied": False}
    appearance: dict[str, Any]
    src_mask = brain.brain_mask().astype(np.float32)
    if kind == "tumour":
        mask0 = _warp_np(src_mask, field) > 0.5
        volume_ml = float(np.exp(rng.uniform(np.log(tumour_ml[0]), np.log(tumour_ml[1]))))
        radius_vox = (3.0 * volume_ml * 1000.0 / (4.0 * np.pi)) ** (1 / 3) / float(spacing.mean())
        depth = ndi.distance_transform_edt(mask0)
        need = min(0.6 * radius_vox, 0.8 * float(depth.max()))
        candidates = np.argwhere(depth >= need)
        centre = candidates[int(rng.integers(len(candidates)))].astype(np.float64)
        if rng.random() < mass_effect_probability:
            strength = float(rng.uniform(0.1, 0.4))
            sigma = float(radius_vox * rng.uniform(0.8, 1.3))
            push = la.radial_push(grid.shape, centre, sigma, strength)
            field = compose_fields(field, push)
            mass = {
                "applied": True,
                "strength": strength,
                "radius_vox": sigma,
                "centre_vox": centre.tolist(),
                "peak_push_mm": float(
                    np.sqrt(((push * spacing[:, None, None, None]) ** 2).sum(0)).max()
                ),
            }
        healthy, mask, labels = warp_source(brain, field)
        stats = la.tissue_stats(healthy, mask, _csf_mask(labels, csf_labels))
        scan, lesion, params = la.synthetic_tumour(
            healthy, mask, stats, centre, volume_ml, spacing, rng
        )
        appearance = {"recipe": "synthetic_tumour", "params": params}
        fraction = 1.0
    else:
        if lesion_mask is None:
            raise LibraryError(f"kind {kind!r} needs a lesion mask")
        healthy, mask, labels = warp_source(brain, field)
        lm = np.asarray(lesion_mask, dtype=bool)
        if flip:
            lm = np.flip(lm, axis=_lr_axis(grid))
        total = int(lm.sum())
        lesion = lm & mask
        fraction = int(lesion.sum()) / max(total, 1)
        if total == 0 or fraction < min_inside or lesion.sum() * voxel_ml < min_lesion_ml:
            raise LesionPlacementError(
                f"lesion {lesion_source!r} (flip={flip}): {lesion.sum() * voxel_ml:.2f} mL, "
                f"{fraction:.0%} inside brain {brain.name!r} (need {min_lesion_ml} mL and "
                f"{min_inside:.0%})"
            )
        stats = la.tissue_stats(healthy, mask, _csf_mask(labels, csf_labels))
        scan, appearance = _appearance_for_mask(kind, healthy, lesion, stats, rng)
    augmentation: dict[str, Any] | None = None
    if augment:
        augmentation = la.draw_augmentation(rng)
        scan = la.augment_intensity(scan, mask, augmentation, reference=healthy)
        healthy = la.augment_intensity(healthy, mask, augmentation)
    det = float(min_jacobian_det(field))
    mag = np.sqrt(((field * spacing.astype(np.float32)[:, None, None, None]) ** 2).sum(0))
    volume_ml_out = float(lesion.sum()) * voxel_ml
    manifest: dict[str, Any] = {
        "source_brain": brain.name,
        "lesion_source": lesion_source if kind != "tumour" else "synthetic",
        "lesion_kind": kind,
        "flip": flip if kind != "tumour" else False,
        "peak_mm_requested": peak,
        "field_seed": field_seed,
        "peak_mm": float(mag.max()),
        "mean_displacement_in_brain_mm": float(mag[mask].mean()),
        "min_jacobian_det": det,
        "smoothness_mm": 16.0,
        "integration_steps": 7,
        "mass_effect": mass,
        "appearance": appearance,
        "augmentation": augmentation,
        "tissue_levels": stats.as_dict(),
        "lesion_volume_mm3": volume_ml_out * 1000.0,
        "lesion_volume_ml": volume_ml_out,
        "lesion_fraction_inside_brain": float(fraction),
        "grid_shape": list(grid.shape),
        "grid_affine": [[float(v) for v in row] for row in grid.affine],
        "field_convention": FIELD_CONVENTION.format(name=brain.name),
        "napari_girnet_version": __version__,
    }
    name = f"{brain.name}+{manifest['lesion_source']}"
    affine = grid.affine
    return PseudoCase(
        scan=Volume(scan.astype(np.float32), affine, name=f"pseudo {name}"),
        lesion=Volume(lesion, affine, name=f"pseudo {name} lesion"),
        healthy=Volume(healthy.astype(np.float32), affine, name=f"pseudo {name} healthy"),
        labels=None if labels is None else Volume(labels, affine, name=f"{name} labels"),
        field=field,
        brain_mask=Volume(mask, affine, name=f"pseudo {name} brain mask"),
        manifest=manifest,
    )


def _parse_mix(mix: Mapping[str, float], available: Sequence[str]) -> dict[str, float]:
    bad = [k for k in mix if k not in CASE_KINDS]
    if bad:
        raise LibraryError(f"unknown lesion kinds in the mix: {bad}; valid: {CASE_KINDS}")
    weights = {k: float(mix.get(k, 0.0)) for k in CASE_KINDS if k in available}
    weights = {k: w for k, w in weights.items() if w > 0}
    total = sum(weights.values())
    if total <= 0:
        raise LibraryError(
            f"no lesion kind available for the mix {dict(mix)} (available: {list(available)})"
        )
    return {k: w / total for k, w in weights.items()}


def make_library_cases(
    out_dir: str | os.PathLike[str],
    n: int,
    seed: int,
    healthy_dirs: Sequence[str | os.PathLike[str]],
    lesion_dirs: Sequence[tuple[str | os.PathLike[str], str | None]] = (),
    *,
    synthetic_tumours: bool = True,
    mix: Mapping[str, float] | None = None,
    resolution: str = "2mm",
    val_fraction: float = 0.25,
    start: int = 0,
    skip_existing: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
    max_attempts: int = 50,
    augment: bool = True,
    min_lesion_ml: float = 0.5,
) -> list[Path]:
    """Make and write cases ``start .. n-1`` from folders, deterministically.

    Case ``i`` (written to ``out_dir / f"case_{i:04d}"``) uses
    ``numpy.random.default_rng([seed, i])``; its outcome depends only on ``(seed, i)`` and
    the inputs (not on ``start`` or on which cases already exist). Its ``case.json`` records
    ``split`` (``"train"`` / ``"val"``), ``healthy_subject``, ``lesion_source``,
    ``lesion_kind``, ``appearance``, ``lesion_volume_ml`` and the ``split_rule``.

    Parameters
    ----------
    out_dir : path
        Output folder.
    n : int
        Index after the last case.
    seed : int
        Batch seed.
    healthy_dirs : sequence of path
        Folders for :func:`scan_healthy_dir` (ids must be unique across folders).
    lesion_dirs : sequence of (path, kind or None)
        Folders for :func:`scan_lesion_dir`.
    synthetic_tumours : bool
        Include synthetic tumour cases.
    mix : mapping or None
        Weights of the kinds (default :data:`DEFAULT_MIX`), renormalised over the kinds
        available.
    resolution : str
        Atlas preset (``"2mm"``, ``"1mm"``, ``"<N>mm"``).
    val_fraction : float
        Fraction of validation cases (:func:`case_split`).
    start : int
        First index.
    skip_existing : bool
        Keep a case folder that already has a ``case.json`` (resume).
    cache_dir : path or None
        Cache of aligned healthy brains (default ``out_dir/_healthy_cache/<resolution>``).
    max_attempts : int
        Lesion draws per case.
    augment : bool
        Intensity augmentation.
    min_lesion_ml : float
        Smallest lesion mask (mL on the working grid) used; smaller ones are redrawn.

    Returns
    -------
    list of pathlib.Path
        Case folders ``start .. n-1``.

    Raises
    ------
    LibraryError
        Bad folders or arguments, a split without brains, or no lesion fits.
    """
    if int(n) < 0 or int(start) < 0:
        raise LibraryError(f"n and start must be >= 0, got n={n}, start={start}")
    if not healthy_dirs:
        raise LibraryError("at least one healthy-brain folder is needed")
    atlas = load_atlas(resolution)
    out = Path(out_dir)
    cache = Path(cache_dir) if cache_dir is not None else out / "_healthy_cache" / resolution
    subjects: list[tuple[HealthyFile, tuple[int, ...]]] = []
    seen: set[str] = set()
    for folder in healthy_dirs:
        csf = _csf_labels(Path(folder))
        for subject in scan_healthy_dir(folder):
            if subject.id in seen:
                raise LibraryError(f"{subject.image}: healthy subject id {subject.id} repeated")
            seen.add(subject.id)
            subjects.append((subject, csf))
    lesions: list[LesionFile] = []
    for folder, kind in lesion_dirs:
        lesions += [f for f in scan_lesion_dir(folder, kind) if f.split != "held_out"]
    available = sorted({f.kind for f in lesions} | ({"tumour"} if synthetic_tumours else set()))
    weights = _parse_mix(DEFAULT_MIX if mix is None else mix, available)
    kinds = sorted(weights)
    probs = np.asarray([weights[k] for k in kinds])
    brains: dict[str, SourceBrain] = {}
    too_small: set[Path] = set()
    voxel_ml = float(np.prod(atlas.image.spacing)) / 1000.0

    def brain_of(subject: HealthyFile) -> SourceBrain:
        if subject.id not in brains:
            logger.info("preparing healthy brain %s", subject.id)
            brains[subject.id] = load_healthy(subject, atlas, cache)
        return brains[subject.id]

    paths: list[Path] = []
    for i in range(int(start), int(n)):
        folder = out / f"case_{i:04d}"
        if skip_existing and (folder / "case.json").is_file():
            paths.append(folder)
            continue
        rng = np.random.default_rng([int(seed), i])
        split = case_split(i, val_fraction)
        kind = kinds[int(rng.choice(len(kinds), p=probs))]
        pool = [s for s in subjects if s[0].split == split]
        if not pool:
            raise LibraryError(f"no healthy brain in the {split} split")
        subject, csf = pool[int(rng.integers(len(pool)))]
        lesion_pool = [f for f in lesions if f.kind == kind and f.split == split]
        if kind != "tumour" and not lesion_pool:
            raise LibraryError(f"no {kind} lesion mask in the {split} split")
        brain = brain_of(subject)
        case = None
        lesion_file: LesionFile | None = None
        for attempt in range(int(max_attempts)):
            mask = None
            if kind != "tumour":
                lesion_file = lesion_pool[int(rng.integers(len(lesion_pool)))]
            case_rng = np.random.default_rng(int(rng.integers(2**63)))
            if lesion_file is not None:
                if lesion_file.path in too_small:
                    continue
                mask = load_lesion_mask(lesion_file.path, atlas)
                if float(mask.sum()) * voxel_ml < min_lesion_ml:
                    too_small.add(lesion_file.path)
                    logger.info("case %d: %s under %s mL", i, lesion_file.source, min_lesion_ml)
                    continue
            try:
                case = make_library_case(
                    brain,
                    kind,
                    case_rng,
                    lesion_mask=mask,
                    lesion_source="" if lesion_file is None else lesion_file.source,
                    csf_labels=csf,
                    augment=augment,
                    min_lesion_ml=min_lesion_ml,
                )
            except LesionPlacementError as exc:
                logger.info("case %d, attempt %d: %s", i, attempt, exc)
                continue
            case.manifest.update(
                {
                    "attempt": attempt,
                    "batch_seed": int(seed),
                    "case_index": i,
                    "split": split,
                    "split_rule": SPLIT_RULE,
                    "healthy_subject": subject.id,
                    "healthy_file": subject.image.name,
                    "lesion_file": None if lesion_file is None else lesion_file.path.name,
                    "lesion_split": "fresh" if lesion_file is None else lesion_file.split,
                }
            )
            break
        if case is None:
            raise LibraryError(
                f"case {i}: no {kind} lesion fits brain {subject.id} in {max_attempts} draws"
            )
        paths.append(write_case(case, folder))
        logger.info(
            "wrote %s (%s, %s, %s, %.1f mL)",
            folder,
            split,
            subject.id,
            case.manifest["lesion_source"],
            case.manifest["lesion_volume_ml"],
        )
    return paths
