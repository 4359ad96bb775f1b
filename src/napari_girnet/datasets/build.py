"""Build on-grid volumes from the raw public data (Colin27 + AAL, MS patients, TCGA glioma).

Every builder reads the raw files of a data folder holding the public sources listed in
``datasets/files/LICENSES.md`` (``colin27/``, ``ms-lesions/``, ``glioma-tcga-du-7294/``) and
returns :class:`~napari_girnet.data.volume.Volume`
objects on GIRNet's atlas working grid of the requested resolution
(:func:`~napari_girnet.data.atlas.load_atlas`: ``"2mm"`` = 80 x 96 x 80 at 2 mm, ``"1mm"`` =
160 x 192 x 144 at 1 mm; canonical RAS voxel order). Images are float32 in [0, 1] inside the
brain (:func:`~napari_girnet.data.preprocess.normalize_intensity`, 0.5 / 99.5 percentiles on the
native grid, then linear resampling) and exactly 0 outside the brain mask; masks are bool;
label maps are integer.

Geometry per source. A scan "near MNI" is first resampled by its affine (no registration) and
its brain-mask Dice against the atlas mask is measured; when it is below :data:`MIN_BRAIN_DICE`
(0.9) the scan is affinely aligned instead, with the alignment of
:func:`~napari_girnet.data.preprocess.prepare_scan` (12 DOF, Mattes MI; the pipeline's own
alignment), and its masks / labels are resampled through the same mapping. ``image.meta``
records the Dice numbers, the decision and the matrix.

* **Colin27** (``colin27/ch2bet.nii.gz``, MNI/SPM grid, 1 mm): near MNI; measured brain Dice
  0.94 at 2 mm, so it is resampled by affine.
* **MS patients** (``ms-lesions``, FSL MNI grid, LAS, 1 mm): the grid shares world coordinates
  with the atlas, but the brains were registered rigidly (not scaled): brain Dice 0.75 by affine
  (patient 07; brain volume 1.14 L vs 1.88 L for the atlas mask), so the rule above aligns them
  (Dice ~0.97 / ~0.92 for 07 / 19 after alignment, determinant of the alignment ~0.6, so the
  lesion volumes grow by ~1.7 on the grid). The 18 masks without a T1 (:func:`build_ms_masks`)
  are resampled through the mean of the two alignment matrices of patients 07 and 19 (a
  population estimate of the missing scaling), or by affine with ``align=False``.
* **TCGA glioma** (``glioma-tcga-du-7294``, SRI24 / BraTS space, LPS): always affinely aligned.

Lesion masks are resampled by **linear interpolation of the 0/1 mask, then** ``> 0.3``
(:data:`LESION_THRESHOLD`). Resampled by affine onto the 2 mm working grid, every sample point
lies at the common corner of 2 x 2 x 2 voxels of the 1 mm MNI grids, so the interpolated value
is the fraction of the 2 mm voxel covered by lesion (a multiple of 1/8) and the rule keeps a
2 mm voxel when at least 3 of its 8 1-mm voxels are lesion. Measured on the 20 MS masks that
way: 68 % of the 1 mm connected components keep at least one voxel (55 % with the unbiased
``>= 1/2`` rule) at the price of a total lesion volume ~20 % larger. Through an alignment the
value is the trilinear interpolation at the mapped point, and the same threshold is used. At
1 mm by affine the working grid is an integer crop of the MNI grids and the rule is an exact
copy.

Licences: Colin27 (MNI/McGill permissive notice), AAL (research use; cite Tzourio-Mazoyer et
al., NeuroImage 2002), MS data (CC-BY; cite Lesjak et al., Neuroinformatics 2017), TCGA-LGG
images (TCIA, CC BY 3.0; BrainLesion/tutorials repository Apache-2.0). See
``datasets/files/LICENSES.md``.
"""

from __future__ import annotations

import functools
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_girnet.data.atlas import ATLAS_PRESETS, Atlas, load_atlas
from napari_girnet.data.nifti import read_nifti
from napari_girnet.data.preprocess import (
    brain_mask,
    normalize_intensity,
    prepare_scan,
    resample,
)
from napari_girnet.data.volume import Volume
from napari_girnet.evaluation.metrics import dice

__all__ = [
    "LESION_THRESHOLD",
    "MIN_BRAIN_DICE",
    "MS_PATIENTS_WITH_T1",
    "DatasetBuildError",
    "atlas_for",
    "build_colin27",
    "build_glioma",
    "build_ms_masks",
    "build_ms_patient",
    "ms_alignments",
]

logger = logging.getLogger(__name__)

#: A resampled lesion mask keeps voxels whose linearly interpolated 0/1 value exceeds this.
LESION_THRESHOLD: float = 0.3
#: A near-MNI scan is resampled by affine when its brain mask overlaps the atlas mask at least
#: this much (Dice); below, it is affinely aligned.
MIN_BRAIN_DICE: float = 0.9
#: MS patients of ``ms-lesions`` that come with a T1 scan.
MS_PATIENTS_WITH_T1: tuple[str, ...] = ("07", "19")

_COLIN_T1 = Path("colin27", "ch2bet.nii.gz")
_COLIN_AAL = Path("colin27", "aal.nii.gz")
_MS_T1 = "T1_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz"
_MS_GOLD = "GOLD_STANDARD_N4_noneck_reduced_winsor_regtoFLAIR_regtoMNI.nii.gz"
_MS_MASK_RE = re.compile(r"^patient(\d{2})_lesion_mask_mni\.nii(\.gz)?$")
_GLIOMA_DIR = "glioma-tcga-du-7294"
_GLIOMA_T1 = "TCGA-DU-7294_t1_bet.nii.gz"
_GLIOMA_SEG = "TCGA-DU-7294_tumor_seg_fusion.nii.gz"


class DatasetBuildError(ValueError):
    """A raw data file is missing or unusable, or an argument names no known data."""


# --------------------------------------------------------------------------- helpers
def atlas_for(resolution: str | float) -> Atlas:
    """The atlas on the working grid of ``resolution``.

    Parameters
    ----------
    resolution : str or float
        A preset name (``"2mm"``, ``"1mm"``) or its voxel size in mm (``2``, ``1.0``).

    Raises
    ------
    DatasetBuildError
        If no preset has that resolution.
    """
    if isinstance(resolution, str):
        if resolution not in ATLAS_PRESETS:
            raise DatasetBuildError(
                f"unknown resolution {resolution!r}; valid: {', '.join(sorted(ATLAS_PRESETS))}"
            )
        return load_atlas(resolution)
    for name, spec in ATLAS_PRESETS.items():
        if np.isclose(float(resolution), spec.resolution_mm):
            return load_atlas(name)
    valid = ", ".join(f"{p.resolution_mm:g}" for p in ATLAS_PRESETS.values())
    raise DatasetBuildError(f"no working grid at {resolution} mm; valid resolutions (mm): {valid}")


def _file(data_dir: str | os.PathLike[str], *parts: str | Path) -> Path:
    path = Path(data_dir).joinpath(*parts)
    if not path.is_file():
        raise DatasetBuildError(f"{path}: raw data file not found (data_dir={data_dir})")
    return path


def _image_on_grid(
    native: Volume, native_mask: Volume, atlas: Atlas, transform: np.ndarray | None = None
) -> tuple[Volume, Volume]:
    """Normalise on the native grid, resample linearly; mask = linear coverage > 0.5.

    ``transform`` maps atlas world -> scan world (RAS mm); ``None`` = identity.
    """
    normalised = normalize_intensity(native, native_mask)
    image = resample(normalised, atlas.shape, atlas.affine, transform=transform, order=1)
    cover = resample(
        native_mask.with_array(native_mask.array.astype(np.float32)),
        atlas.shape,
        atlas.affine,
        transform=transform,
        order=1,
    )
    mask = cover.array > 0.5
    array = np.clip(image.array, 0.0, 1.0).astype(np.float32)
    array[~mask] = 0.0
    return (
        Volume(array, atlas.affine, name=native.name),
        Volume(mask, atlas.affine, name=f"{native.name} brain mask"),
    )


def _mask_on_grid(
    mask: Volume, atlas: Atlas, transform: np.ndarray | None = None, name: str | None = None
) -> Volume:
    """Linear interpolation of the 0/1 mask, then ``> LESION_THRESHOLD`` (see module doc)."""
    binary = mask.with_array((np.asarray(mask.array) > 0).astype(np.float32))
    cover = resample(binary, atlas.shape, atlas.affine, transform=transform, order=1)
    return Volume(cover.array > LESION_THRESHOLD, atlas.affine, name=name or mask.name)


def _patient_id(patient: str | int) -> str:
    text = str(patient).lower().removeprefix("patient").removeprefix("ms")
    if not text.isdigit() or not 1 <= int(text) <= 99:
        raise DatasetBuildError(
            f"MS patient {patient!r}: expected a number such as 7, '07' or 'patient07'"
        )
    return f"{int(text):02d}"


@dataclass(frozen=True)
class _Placement:
    """How a scan was put on the working grid (see the module docstring)."""

    transform: np.ndarray | None  # atlas world -> scan world RAS mm; None = identity
    dice_by_affine: float | None  # brain Dice vs atlas when resampled by affine
    dice: float  # brain Dice vs atlas of the result
    how: str

    def meta(self) -> dict[str, object]:
        return {
            "alignment": self.how,
            "alignment_matrix": None if self.transform is None else self.transform.tolist(),
            "brain_dice_vs_atlas": self.dice,
            "brain_dice_by_affine": self.dice_by_affine,
        }


def _align(native: Volume, native_mask: Volume, atlas: Atlas, seed: int) -> np.ndarray:
    """The 12-DOF alignment of :func:`~napari_girnet.data.preprocess.prepare_scan` (atlas -> scan).

    ``prepare_scan`` is the alignment the GIRNet pipeline itself uses, so the bundled data are
    placed exactly as a user's scan would be; only its alignment matrix is kept (the
    resampling is redone here with the linear-coverage mask rule).
    """
    return np.array(prepare_scan(native, atlas, seed=seed, mask=native_mask).alignment.matrix)


@functools.lru_cache(maxsize=16)
def _place(path: str, name: str, preset: str, seed: int, force_align: bool) -> _Placement:
    """Decide (and cache) how the scan at ``path`` goes onto the grid of ``preset``."""
    atlas = load_atlas(preset)
    native = read_nifti(path, name=name).canonical()
    native_mask = brain_mask(native)
    by_affine: float | None = None
    if not force_align:
        _, mask = _image_on_grid(native, native_mask, atlas)
        by_affine = dice(mask.array, atlas.mask.array)
        if by_affine >= MIN_BRAIN_DICE:
            logger.info("%s: brain Dice vs atlas %.4f by affine: no registration", name, by_affine)
            return _Placement(None, by_affine, by_affine, "resampled by affine (no registration)")
        logger.info(
            "%s: brain Dice vs atlas %.4f by affine < %.2f: affine alignment",
            name,
            by_affine,
            MIN_BRAIN_DICE,
        )
    matrix = _align(native, native_mask, atlas, seed)
    _, mask = _image_on_grid(native, native_mask, atlas, matrix)
    score = dice(mask.array, atlas.mask.array)
    logger.info("%s: brain Dice vs atlas %.4f after affine alignment", name, score)
    return _Placement(matrix, by_affine, score, f"prepare_scan affine alignment (seed {seed})")


def _preset_name(resolution: str | float) -> str:
    return atlas_for(resolution).preset


def _scan_on_grid(
    path: Path, name: str, resolution: str | float, seed: int, force_align: bool
) -> tuple[Volume, _Placement]:
    preset = _preset_name(resolution)
    atlas = load_atlas(preset)
    placement = _place(str(path), name, preset, seed, force_align)
    native = read_nifti(path, name=name).canonical()
    image, _ = _image_on_grid(native, brain_mask(native), atlas, placement.transform)
    meta = {"source": str(path), **placement.meta()}
    return Volume(image.array, atlas.affine, name=name, meta=meta), placement


# --------------------------------------------------------------------------- builders
def build_colin27(
    data_dir: str | os.PathLike[str], resolution: str | float = "2mm"
) -> tuple[Volume, Volume]:
    """Colin27 (skull-stripped ``ch2bet``) and its AAL parcellation on the working grid.

    Colin27 lies on the MNI (SPM) grid, near-aligned to the atlas: it is resampled by affine
    (linear, after :func:`~napari_girnet.data.preprocess.normalize_intensity` inside
    :func:`~napari_girnet.data.preprocess.brain_mask`) unless its brain-mask Dice against the
    atlas mask is below :data:`MIN_BRAIN_DICE`, in which case it is affinely aligned (module
    docstring). The AAL labels follow with nearest neighbour.

    Parameters
    ----------
    data_dir : path
        Root of the raw data (``colin27/ch2bet.nii.gz``, ``colin27/aal.nii.gz``).
    resolution : str or float
        Working-grid preset (``"2mm"``, ``"1mm"``) or voxel size in mm.

    Returns
    -------
    image : Volume
        float32 in [0, 1], 0 outside the brain; working grid, canonical RAS. ``meta``:
        ``brain_dice_vs_atlas``, ``brain_dice_by_affine``, ``alignment``, ``alignment_matrix``.
    labels : Volume
        AAL labels (int16, 0 = background, 1..116; names in ``colin27/aal.nii.txt``), same grid.

    Raises
    ------
    DatasetBuildError
        Missing files or unknown resolution.
    """
    t1_path = _file(data_dir, _COLIN_T1)
    image, placement = _scan_on_grid(t1_path, "colin27", resolution, 0, False)
    aal = read_nifti(_file(data_dir, _COLIN_AAL), name="colin27 AAL").canonical()
    labels = resample(aal, image.shape, image.affine, transform=placement.transform, order=0)
    labels = Volume(labels.array.astype(np.int16), image.affine, name="colin27 AAL")
    return image, labels


def build_ms_patient(
    data_dir: str | os.PathLike[str],
    patient: str | int,
    resolution: str | float = "2mm",
    seed: int = 0,
) -> tuple[Volume, Volume]:
    """T1 and consensus lesion mask of an MS patient with a T1 (07 or 19) on the working grid.

    The open_ms_data volumes lie on the FSL MNI grid (182 x 218 x 182, 1 mm, LAS) that shares
    world coordinates with the atlas, but the brains are not scaled to MNI: with the rule of the
    module docstring they are affinely aligned (brain Dice 0.75 -> 0.97 for patient 07). The T1
    is normalised on its native grid inside :func:`~napari_girnet.data.preprocess.brain_mask`
    (background -51 .. 0 is handled), then resampled linearly; the ``GOLD_STANDARD`` consensus
    mask goes through the same mapping with the rule of :data:`LESION_THRESHOLD`.

    Parameters
    ----------
    data_dir : path
        Root of the raw data (``ms-lesions/patientNN/...``).
    patient : str or int
        ``7``, ``"07"``, ``"patient07"`` or ``"ms07"``; one of :data:`MS_PATIENTS_WITH_T1`.
    resolution : str or float
        Working-grid preset or voxel size in mm.
    seed : int
        Seed of the alignment's metric sampling (deterministic for a seed).

    Returns
    -------
    t1 : Volume
        float32 in [0, 1], 0 outside the brain (``meta`` as :func:`build_colin27`).
    lesion : Volume
        bool lesion mask, same grid.

    Raises
    ------
    DatasetBuildError
        Unknown patient, missing files or unknown resolution.
    PreprocessError
        If the alignment fails.
    """
    pid = _patient_id(patient)
    if pid not in MS_PATIENTS_WITH_T1:
        raise DatasetBuildError(
            f"MS patient {patient!r}: no T1 in the data; patients with a T1: "
            f"{', '.join(MS_PATIENTS_WITH_T1)}"
        )
    folder = Path("ms-lesions", f"patient{pid}")
    t1, placement = _scan_on_grid(
        _file(data_dir, folder, _MS_T1), f"ms{pid}", resolution, seed, False
    )
    gold = read_nifti(_file(data_dir, folder, _MS_GOLD), name=f"ms{pid} lesion").canonical()
    lesion = _mask_on_grid(gold, atlas_for(resolution), placement.transform, f"ms{pid} lesion")
    return t1, lesion


def ms_alignments(
    data_dir: str | os.PathLike[str], resolution: str | float = "2mm", seed: int = 0
) -> dict[str, np.ndarray | None]:
    """The mapping of each MS patient with a T1 onto the working grid (see module docstring).

    Returns
    -------
    dict of str to numpy.ndarray or None
        Patient id -> 4x4 matrix atlas world -> FSL-MNI world (RAS mm), or ``None`` when the
        patient is resampled by affine.
    """
    preset = _preset_name(resolution)
    out: dict[str, np.ndarray | None] = {}
    for pid in MS_PATIENTS_WITH_T1:
        path = _file(data_dir, "ms-lesions", f"patient{pid}", _MS_T1)
        out[pid] = _place(str(path), f"ms{pid}", preset, seed, False).transform
    return out


def build_ms_masks(
    data_dir: str | os.PathLike[str],
    resolution: str | float = "2mm",
    align: bool = True,
    seed: int = 0,
) -> dict[str, Volume]:
    """All MS consensus lesion masks of ``ms-lesions/masks`` on the working grid.

    Each mask (FSL MNI grid) is resampled with linear interpolation of the 0/1 mask, then
    ``> LESION_THRESHOLD`` (0.3, i.e. at 2 mm at least 3 of the 8 1-mm voxels; see the module
    docstring for the survival statistics).

    Parameters
    ----------
    data_dir : path
        Root of the raw data (``ms-lesions/masks/patientNN_lesion_mask_mni.nii.gz``).
    resolution : str or float
        Working-grid preset or voxel size in mm.
    align : bool
        True (default): patients with a T1 (07, 19) go through their own mapping
        (:func:`ms_alignments`, as :func:`build_ms_patient`), every other mask through the mean
        of those matrices (identity for a patient resampled by affine): the open_ms_data brains
        are not scaled to MNI, so this puts the lesions at atlas-sized positions. False:
        resample by affine (no registration).
    seed : int
        Seed of the alignments.

    Returns
    -------
    dict of str to Volume
        Two-digit patient id (``"01"`` .. ``"20"``) -> bool mask, sorted; ``meta["alignment"]``
        says which mapping was used.

    Raises
    ------
    DatasetBuildError
        If the folder is missing or holds no mask.
    """
    atlas = atlas_for(resolution)
    folder = Path(data_dir, "ms-lesions", "masks")
    if not folder.is_dir():
        raise DatasetBuildError(f"{folder}: MS mask folder not found (data_dir={data_dir})")
    own: dict[str, np.ndarray | None] = {}
    mean: np.ndarray | None = None
    if align:
        own = ms_alignments(data_dir, resolution, seed)
        mats = [np.eye(4) if m is None else m for m in own.values()]
        mean = np.mean(mats, axis=0)
    out: dict[str, Volume] = {}
    for path in sorted(folder.iterdir()):
        match = _MS_MASK_RE.match(path.name)
        if match is None:
            continue
        pid = match.group(1)
        if not align:
            transform, how = None, "resampled by affine (no registration)"
        elif pid in own:
            transform, how = own[pid], f"own alignment of patient {pid}"
        else:
            transform = mean
            how = "mean of the alignments of patients " + " and ".join(own)
        mask = read_nifti(path, name=f"ms{pid} lesion").canonical()
        vol = _mask_on_grid(mask, atlas, transform)
        meta = {
            "source": str(path),
            "alignment": how,
            "alignment_matrix": None if transform is None else transform.tolist(),
        }
        out[pid] = Volume(vol.array, atlas.affine, name=f"ms{pid} lesion", meta=meta)
        logger.debug("ms%s: %d lesion voxels on the grid", pid, int(vol.array.sum()))
    if not out:
        raise DatasetBuildError(f"{folder}: no patientNN_lesion_mask_mni.nii.gz file")
    return out


def build_glioma(
    data_dir: str | os.PathLike[str], resolution: str | float = "2mm", seed: int = 0
) -> tuple[Volume, Volume, Volume]:
    """The TCGA-DU-7294 low-grade glioma: T1, tumour mask and label map on the working grid.

    The T1 (SRI24 / BraTS space, LPS, 1 mm) is always affinely aligned to the atlas with
    :func:`~napari_girnet.data.preprocess.prepare_scan` (12 DOF, Mattes MI), normalised and
    resampled linearly;
    the fused tumour segmentation is resampled through the same alignment with nearest
    neighbour.

    Parameters
    ----------
    data_dir : path
        Root of the raw data (``glioma-tcga-du-7294/...``).
    resolution : str or float
        Working-grid preset or voxel size in mm.
    seed : int
        Seed of the alignment's metric sampling (the result is deterministic for a seed).

    Returns
    -------
    t1 : Volume
        float32 in [0, 1], 0 outside the brain (``meta`` as :func:`build_colin27`).
    tumour : Volume
        bool, all labels > 0 (necrosis / non-enhancing 1, oedema 2, enhancing 4).
    labels : Volume
        uint8 label map (BraTS labels), same grid. A silver standard: fusion of 5 BraTS-2020
        algorithms, not a manual segmentation.

    Raises
    ------
    DatasetBuildError
        Missing files or unknown resolution.
    PreprocessError
        If the alignment fails.
    """
    t1, placement = _scan_on_grid(
        _file(data_dir, _GLIOMA_DIR, _GLIOMA_T1), "glioma", resolution, seed, True
    )
    seg = read_nifti(_file(data_dir, _GLIOMA_DIR, _GLIOMA_SEG), name="glioma tumour").canonical()
    labels = resample(seg, t1.shape, t1.affine, transform=placement.transform, order=0)
    labels_arr = labels.array.astype(np.uint8)
    tumour = Volume(labels_arr > 0, t1.affine, name="glioma tumour")
    return t1, tumour, Volume(labels_arr, t1.affine, name="glioma labels")
