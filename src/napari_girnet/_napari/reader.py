"""npe2 reader: NIfTI volumes, NIfTI displacement fields and landmark CSVs.

``*.nii`` / ``*.nii.gz``
    3D images open as Image layers, or as Labels when they look like a label map (see
    :func:`looks_like_labels`); a displacement field in the ITK (5D ``(X, Y, Z, 1, 3)``) or
    girnet voxel (4D ``(X, Y, Z, 3)``, ``intent_name "girnet-vox"``) convention opens as a
    Vectors layer. Volumes are reoriented to canonical RAS and shown with the slider along S
    (:func:`~napari_girnet._napari.layers.volume_to_layer_data`); the file's affine is kept in
    ``metadata["girnet"]`` for writing back.
``*.csv``
    Landmark CSVs with the header ``Landmark,X,Y,Z`` (BraTS-Reg, LPS mm) or ``id,x,y,z`` (RAS
    mm) open as a Points layer in world mm (scale 1, ``(S, A, R)`` order), overlaying the
    images. Other CSVs are left to other readers.

BraTS-Reg grid convention
-------------------------
BraTS-Reg (Baheti et al., arXiv 2112.06979) ships 240 x 240 x 155 scans at 1 mm in LPS voxel
order (SRI24 space); their NIfTI affine is ``diag(-1, -1, 1)`` with RAS translation
``(0, 239, 0)``. Its landmark CSVs (``Landmark,X,Y,Z``) hold **LPS world millimetres** (ITK
physical space), not voxel indices: a landmark ``(X, Y, Z)`` is the RAS point ``(-X, -Y, Z)``
(:func:`napari_girnet.data.landmarks.read_landmarks`), which is voxel ``(X, Y + 239, Z)`` of the
file's array. Because both the scan layer (through its affine) and the Points layer live in the
same RAS world, the points land on the right voxels of the scan without any per-file offset; on
the displayed ``(S, A, R)`` array of the scan (canonical RAS: the L and P axes flipped) the
landmark is at index ``(Z, -Y, 239 - X)``.
"""

from __future__ import annotations

import csv
import logging
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from napari_girnet._napari.layers import (
    LayerDataTuple,
    field_to_vectors,
    volume_to_layer_data,
    world_to_points_data,
)
from napari_girnet.data.landmarks import read_landmarks
from napari_girnet.data.nifti import read_displacement, read_nifti, voxel_to_mm_displacement
from napari_girnet.data.volume import Volume

__all__ = [
    "looks_like_labels",
    "napari_get_reader",
    "read_landmark_csv",
    "read_nifti_layers",
]

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]
ReaderFunction = Callable[[PathLike | Sequence[PathLike]], list[LayerDataTuple]]

_LANDMARK_HEADERS = {("landmark", "x", "y", "z"): "brats", ("id", "x", "y", "z"): "ras"}
_LABEL_NAME_HINTS = (
    "mask",
    "label",
    "seg",
    "lesion",
    "tumor",
    "tumour",
    "aseg",
    "parc",
    "aal",
    "atlas_lab",
    "truth",
)
_NIFTI_INTENT_LABEL = 1002
_MAX_VECTORS = 20_000


def _nifti_stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _single_path(path: PathLike | Sequence[PathLike]) -> Path | None:
    if isinstance(path, str | os.PathLike):
        return Path(path)
    if isinstance(path, Sequence) and len(path) == 1 and isinstance(path[0], str | os.PathLike):
        return Path(path[0])
    return None


def _landmark_format(path: Path) -> str | None:
    """``"brats"`` / ``"ras"`` when the first data line of ``path`` is a landmark header, else
    None (cheap: reads at most 64 KiB)."""
    with path.open("r", encoding="utf-8-sig", errors="replace") as fh:
        head = fh.read(65536)
    for row in csv.reader(head.splitlines()):
        if not any(c.strip() for c in row) or row[0].lstrip().startswith("#"):
            continue
        cells = [c.strip().lower() for c in row[:4]] + [""] * 4
        return _LANDMARK_HEADERS.get((cells[0], cells[1], cells[2], cells[3]))
    return None


def napari_get_reader(path: PathLike | Sequence[PathLike]) -> ReaderFunction | None:
    """Return a reader for one ``.nii`` / ``.nii.gz`` / landmark ``.csv`` path, else None.

    Parameters
    ----------
    path : str, path or a list holding one of them

    Returns
    -------
    callable or None
        :func:`read_nifti_layers` or :func:`read_landmark_csv`; None for anything else (other
        extensions, several paths, directories, CSVs without a landmark header). Never raises.
    """
    try:
        p = _single_path(path)
        if p is None or p.is_dir():
            return None
        lower = p.name.lower()
        if lower.endswith((".nii", ".nii.gz")):
            return read_nifti_layers
        if lower.endswith(".csv") and p.is_file() and _landmark_format(p) is not None:
            return read_landmark_csv
    except Exception:  # the reader hook must never raise
        logger.debug("napari_get_reader: %r not claimed", path, exc_info=True)
    return None


def _paths(path: PathLike | Sequence[PathLike]) -> list[Path]:
    if isinstance(path, str | os.PathLike):
        return [Path(path)]
    return [Path(p) for p in path]


# ----------------------------------------------------------------------------- NIfTI
def looks_like_labels(volume: Volume, name: str = "") -> bool:
    """Guess whether a volume is a label map (opened as Labels) rather than an image.

    Rules, in order: header intent ``NIFTI_INTENT_LABEL`` (1002) -> labels; floating point ->
    labels only when every value is 0 or 1 (a binary mask saved as float); bool -> labels;
    integers -> labels with at most 20 distinct values, or at most 256 distinct values when the
    type is wider than 8 bits or the file name hints at a mask/segmentation (``mask``, ``seg``,
    ``label``, ``lesion``, ``tumour``, ``aseg``, ``aal`` ...). A plain ``uint8`` T1 (up to 256
    grey levels) therefore stays an image.
    """
    if int(volume.meta.get("intent_code", 0) or 0) == _NIFTI_INTENT_LABEL:
        return True
    arr = np.asarray(volume.array)
    if arr.dtype == np.bool_:
        return True
    if arr.dtype.kind == "f":
        return bool(np.all((arr == 0) | (arr == 1)))
    if arr.dtype.kind not in "iu":
        return False
    lo, hi = int(arr.min()), int(arr.max())
    if hi - lo > 1_000_000:
        n_unique = len(np.unique(arr))
    else:
        n_unique = int(np.count_nonzero(np.bincount((arr.ravel() - lo).astype(np.int64))))
    if n_unique <= 20:
        return True
    hinted = any(h in name.lower() for h in _LABEL_NAME_HINTS)
    return n_unique <= 256 and (arr.dtype.itemsize > 1 or hinted)


def _peek_shape(path: Path) -> tuple[int, ...] | None:
    try:
        return tuple(int(s) for s in nib.load(path).shape)  # type: ignore[attr-defined]
    except Exception:  # read_nifti below reports the problem with a clear message
        return None


def _is_field_shape(shape: tuple[int, ...] | None) -> bool:
    if shape is None:
        return False
    return (len(shape) == 5 and shape[3:] == (1, 3)) or (len(shape) == 4 and shape[3] == 3)


def _auto_stride(shape: Sequence[int]) -> int:
    """Stride giving at most about :data:`_MAX_VECTORS` vectors (at least 2)."""
    n = float(np.prod(shape))
    return max(2, math.ceil((n / _MAX_VECTORS) ** (1.0 / 3.0)))


def _read_field(path: Path) -> LayerDataTuple:
    disp_vox, grid = read_displacement(path)
    field_mm = voxel_to_mm_displacement(disp_vox, grid.affine)
    layer = field_to_vectors(
        field_mm,
        grid,
        stride=_auto_stride(grid.shape),
        min_mm=1e-3,
        name=_nifti_stem(path),
        metadata={
            "girnet": {
                "path": str(path),
                "convention": grid.meta.get("convention"),
                "axcodes": list(grid.meta.get("axcodes") or ()),
            }
        },
    )
    return layer


def _read_one_nifti(path: Path) -> list[LayerDataTuple]:
    if _is_field_shape(_peek_shape(path)):
        return [_read_field(path)]
    volume = read_nifti(path)
    name = _nifti_stem(path)
    kind = "labels" if looks_like_labels(volume, name) else "image"
    return [volume_to_layer_data(volume, name, kind=kind)]


def read_nifti_layers(path: PathLike | Sequence[PathLike]) -> list[LayerDataTuple]:
    """Read NIfTI file(s) into napari layer data tuples.

    Parameters
    ----------
    path : path or list of paths
        ``.nii`` / ``.nii.gz`` files.

    Returns
    -------
    list of tuple
        One Image, Labels or Vectors layer per file.

    Raises
    ------
    NiftiError
        For a file that cannot be read (message names the file and the problem).
    """
    layers: list[LayerDataTuple] = []
    for p in _paths(path):
        layers.extend(_read_one_nifti(p))
    return layers


# ----------------------------------------------------------------------------- landmarks
def read_landmark_csv(path: PathLike | Sequence[PathLike]) -> list[LayerDataTuple]:
    """Read landmark CSV(s) into Points layers in world millimetres.

    Parameters
    ----------
    path : path or list of paths
        ``id,x,y,z`` (RAS mm) or BraTS-Reg ``Landmark,X,Y,Z`` (LPS world mm, converted to RAS
        ``(-X, -Y, Z)``). On the BraTS-Reg 240 x 240 x 155 LPS grid (affine ``diag(-1, -1, 1)``,
        translation ``(0, 239, 0)``) the landmark ``(X, Y, Z)`` is file voxel
        ``(X, Y + 239, Z)``; see the module docstring.

    Returns
    -------
    list of tuple
        One Points layer per file: data = RAS mm in ``(S, A, R)`` order, scale 1, translate 0,
        ``features["id"]``, ids shown as text; ``metadata["girnet"]["path"]`` and ``"format"``.

    Raises
    ------
    LandmarkError
        For a malformed file (message names the file and line).
    """
    layers: list[LayerDataTuple] = []
    for p in _paths(path):
        landmarks = read_landmarks(p)
        fmt = _landmark_format(p)
        layers.append(
            world_to_points_data(
                landmarks.ids,
                landmarks.world,
                None,
                name=p.stem,
                metadata={"girnet": {"path": str(p), "format": fmt}},
            )
        )
    return layers
