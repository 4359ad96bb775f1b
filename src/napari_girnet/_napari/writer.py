"""npe2 writers: Image/Labels layers to NIfTI, Points layers to landmark CSV.

Volumes are rebuilt with :func:`~napari_girnet._napari.layers.layer_to_volume` and written with
:func:`~napari_girnet.data.nifti.write_nifti`, which restores the source file's voxel order and
affine when the layer was read by this plugin (``metadata["girnet"]["source_affine"]``), and the
on-disk voxel type when the values still fit it. Points are written as ``id,x,y,z`` in RAS mm.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from napari_girnet._napari.layers import layer_to_volume, points_to_world
from napari_girnet.data.landmarks import LandmarkError, Landmarks, write_landmarks
from napari_girnet.data.nifti import write_nifti

__all__ = ["write_image", "write_labels", "write_points"]

logger = logging.getLogger(__name__)


def _nifti_path(path: str) -> Path:
    p = Path(path)
    if not p.name.lower().endswith((".nii", ".nii.gz")):
        p = p.with_name(p.name + ".nii.gz")
    return p


def _fits(array: np.ndarray, dtype: np.dtype) -> bool:
    """True when every value of ``array`` is exactly representable in integer ``dtype``."""
    if array.size == 0:
        return True
    if array.dtype.kind == "f" and not np.array_equal(array, np.rint(array)):
        return False
    info = np.iinfo(dtype)
    return bool(array.min() >= info.min and array.max() <= info.max)


def _disk_dtype(array: np.ndarray, header: Mapping[str, Any], kind: str) -> np.dtype | None:
    """On-disk voxel type: the source file's when the values fit it, else a small one for labels.

    None keeps :func:`write_nifti`'s default (the array's type).
    """
    source = header.get("dtype")
    if source:
        try:
            dt = np.dtype(source)
        except TypeError:
            dt = None
        if dt is not None:
            if dt == array.dtype:
                return None
            if dt.kind in "iu" and array.dtype.kind in "iubf" and _fits(array, dt):
                return dt
            if dt.kind == "f" and array.dtype.kind == "f":
                return dt
    if kind == "labels" and array.dtype.kind in "iub":
        for candidate in (np.uint8, np.uint16, np.int16, np.int32):
            if _fits(array, np.dtype(candidate)):
                return np.dtype(candidate)
    return None


def _write_volume(path: str, data: Any, meta: Mapping[str, Any], kind: str) -> list[str]:
    volume = layer_to_volume(
        data,
        metadata=meta.get("metadata"),
        scale=meta.get("scale"),
        translate=meta.get("translate"),
        name=meta.get("name"),
    )
    header = dict(volume.meta)
    out = write_nifti(volume, _nifti_path(path), dtype=_disk_dtype(volume.array, header, kind))
    logger.info("wrote layer %r to %s", meta.get("name"), out)
    return [str(out)]


def write_image(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """Write one Image layer to ``.nii`` / ``.nii.gz`` (``.nii.gz`` appended if missing).

    Parameters
    ----------
    path : str
        Output file.
    data : array-like
        Layer data, shape ``(S, A, R)`` as displayed by this plugin.
    meta : dict
        Layer attributes (``name``, ``scale``, ``translate``, ``metadata`` ...).

    Returns
    -------
    list of str
        The written path.

    Raises
    ------
    VolumeError, NiftiError
        For non-3D data or a file that cannot be written (message names the layer/file).
    """
    return _write_volume(path, data, meta, "image")


def write_labels(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """Write one Labels layer to ``.nii`` / ``.nii.gz`` (smallest integer type that fits when
    the source type is unknown). See :func:`write_image`."""
    return _write_volume(path, data, meta, "labels")


def write_points(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """Write one Points layer as a landmark CSV ``id,x,y,z`` in RAS millimetres.

    World coordinates come from the layer's data-to-world transform (napari world =
    ``(S, A, R)`` mm); ids from ``features["id"]`` (else ``1..N``). ``.csv`` is appended when
    missing.

    Returns
    -------
    list of str
        The written path.

    Raises
    ------
    LandmarkError
        Empty layer, non-3D points, duplicate ids, or the file cannot be written.
    """
    from napari.layers import Layer

    p = Path(path)
    if p.suffix.lower() != ".csv":
        p = p.with_name(p.name + ".csv")
    name = meta.get("name", "points")
    layer = Layer.create(np.asarray(data), dict(meta), "points")
    ids, world = points_to_world(layer)
    if len(ids) == 0:
        raise LandmarkError(f"{p}: layer {name!r} has no points to write")
    try:
        landmarks = Landmarks(ids, world)
    except LandmarkError as exc:
        raise LandmarkError(f"{p}: layer {name!r}: {exc}") from exc
    out = write_landmarks(landmarks, p, fmt="ras")
    logger.info("wrote %d landmarks of layer %r to %s", len(ids), name, out)
    return [str(out)]
