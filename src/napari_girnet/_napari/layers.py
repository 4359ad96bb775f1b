"""Conversions between napari-girnet volumes, fields, landmarks and napari layer data.

Display convention (an interface the readers, writers, sample data and dock widgets share):

* A canonical RAS :class:`~napari_girnet.data.volume.Volume` (array axes X = R, Y = A, Z = S) is
  shown **transposed** to ``(Z, Y, X)`` so that napari's slider runs along S:
  ``data = array.transpose(2, 1, 0)``, ``scale = spacing[::-1]``,
  ``translate = affine[:3, 3][::-1]`` (world position of voxel 0 in ``(S, A, R)`` order),
  ``units = ("mm", "mm", "mm")`` and ``axis_labels = ("S", "A", "R")``. napari's world
  coordinates are therefore RAS millimetres in the order ``(S, A, R)``.
* Only scale and translate are ever given to napari (napari cannot slice rotated layers, see
  napari/napari#7310). A volume whose affine is oblique by more than
  :data:`OBLIQUE_TOLERANCE_DEG` is resampled onto the nearest axis-aligned grid (same spacing,
  covering the field of view) and an :class:`ObliqueResampleWarning` is emitted (napari shows
  warnings as notifications).
* ``layer.metadata["girnet"]`` holds ``"affine"`` (4x4 list: canonical RAS affine of the
  displayed array after transposing back), ``"source_affine"`` (the file's affine, so writers
  restore the file's voxel order), ``"shape"`` (shape of the displayed ``(S, A, R)`` array),
  ``"path"``, ``"axcodes"`` (of the file), ``"kind"`` (``"image"``, ``"labels"``, ``"field"``,
  ``"landmarks"``), ``"role"`` for results (e.g. ``"lesion_probability"``), ``"header"``
  (NIfTI header fields used on writing) and, for results, ``"provenance"`` (dict).

Nothing here needs a running viewer: functions return napari *layer data tuples*
``(data, kwargs, layer_type)``; :func:`points_to_world` and :func:`layer_to_volume` accept layer
objects by duck typing. No Qt import.
"""

from __future__ import annotations

import itertools
import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nibabel as nib
import numpy as np
from nibabel import orientations as ornt

from napari_girnet._version import __version__
from napari_girnet.data.landmarks import LandmarkError
from napari_girnet.data.volume import Volume, VolumeError

if TYPE_CHECKING:  # pragma: no cover
    from napari_girnet.api import RegistrationResult

__all__ = [
    "AXIS_LABELS",
    "OBLIQUE_TOLERANCE_DEG",
    "UNITS",
    "VECTOR_STYLE",
    "LayerDataTuple",
    "ObliqueResampleWarning",
    "field_to_vectors",
    "layer_to_volume",
    "pair_moving_result",
    "pair_to_layers",
    "points_to_world",
    "preview_to_layers",
    "result_to_layers",
    "volume_to_layer_data",
    "world_to_points_data",
]

logger = logging.getLogger(__name__)

LayerDataTuple = tuple[Any, dict[str, Any], str]
"""napari layer data tuple ``(data, layer_kwargs, layer_type)``."""

AXIS_LABELS: tuple[str, str, str] = ("S", "A", "R")
"""``axis_labels`` of every layer: displayed array axes / napari world axes."""
UNITS: tuple[str, str, str] = ("mm", "mm", "mm")
"""``units`` of every layer."""
OBLIQUE_TOLERANCE_DEG = 0.1
"""Largest obliquity (degrees) displayed without resampling (the rotation is then ignored)."""


def _vector_style() -> str:
    try:
        from napari.layers.vectors._vectors_constants import VectorStyle
    except ImportError:  # pragma: no cover - napari layout changed
        return "line"
    return "arrow" if "arrow" in {str(s) for s in VectorStyle} else "line"


VECTOR_STYLE = _vector_style()
"""``vector_style`` of deformation layers: ``"arrow"`` (napari >= 0.4.19), else ``"line"``."""

_HEADER_KEYS = (
    "sform_code",
    "qform_code",
    "descrip",
    "nifti_version",
    "dtype",
    "xyzt_units",
    "intent_code",
)
# Native-grid result volumes: (attribute of RegistrationResult = role, layer name suffix).
_RESULT_NATIVE = (
    ("lesion_probability", "lesion probability"),
    ("lesion_mask", "lesion mask"),
    ("inpainted", "inpainted"),
    ("atlas_to_scan", "atlas→scan"),
)


class ObliqueResampleWarning(UserWarning):
    """An oblique volume was resampled onto an axis-aligned grid for display."""


# ----------------------------------------------------------------------------- geometry
def _canonical_affine(volume: Volume) -> np.ndarray:
    """Affine of ``volume`` reoriented to RAS voxel order (no array copy)."""
    if volume.is_canonical:
        return volume.affine
    transform = ornt.ornt_transform(
        ornt.io_orientation(volume.affine), ornt.axcodes2ornt(("R", "A", "S"))
    )
    return volume.affine @ ornt.inv_ornt_aff(transform, volume.shape)


def _display_grid(volume: Volume) -> tuple[np.ndarray, tuple[int, int, int], float]:
    """Axis-aligned RAS grid used to display ``volume``: ``(affine, shape (X, Y, Z), obliquity)``.

    For an affine oblique by at most :data:`OBLIQUE_TOLERANCE_DEG` this is the canonical grid
    itself (its tiny rotation is ignored by the display). Otherwise it is the grid with the same
    spacing along R, A, S whose voxel centres cover those of ``volume``.
    """
    return _display_grid_of(_canonical_affine(volume), _canonical_shape(volume))


def _display_grid_of(
    affine: np.ndarray, shape: Sequence[int]
) -> tuple[np.ndarray, tuple[int, int, int], float]:
    """:func:`_display_grid` of a canonical (RAS-ordered) grid ``(affine, shape)``."""
    shape = tuple(int(n) for n in shape)
    obliquity = float(np.degrees(np.max(np.abs(nib.affines.obliquity(affine)))))
    if obliquity <= OBLIQUE_TOLERANCE_DEG:
        return affine, shape, obliquity  # type: ignore[return-value]
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    corners = np.array(list(itertools.product(*[(0, n - 1) for n in shape])), dtype=np.float64)
    world = corners @ affine[:3, :3].T + affine[:3, 3]
    lo, hi = world.min(axis=0), world.max(axis=0)
    extent = (hi - lo) / spacing
    new_shape = tuple(math.ceil(float(e) - 1e-6) + 1 for e in extent)
    new_affine = np.eye(4)
    new_affine[:3, :3] = np.diag(spacing)
    new_affine[:3, 3] = lo
    return new_affine, new_shape, obliquity  # type: ignore[return-value]


def _canonical_shape(volume: Volume) -> tuple[int, int, int]:
    if volume.is_canonical:
        return volume.shape
    perm = ornt.io_orientation(volume.affine)[:, 0].astype(int)
    shape = [0, 0, 0]
    for axis, world_axis in enumerate(perm):
        shape[world_axis] = volume.shape[axis]
    return tuple(shape)  # type: ignore[return-value]


def _display_volume(volume: Volume, order: int) -> tuple[Volume, float | None]:
    """``volume`` on its display grid; the obliquity (degrees) when it had to be resampled."""
    vol = volume if volume.is_canonical else volume.canonical()
    affine, shape, obliquity = _display_grid(vol)
    if obliquity <= OBLIQUE_TOLERANCE_DEG:
        return vol, None
    from napari_girnet.data.preprocess import resample

    method = "nearest" if order == 0 else "linear"
    msg = (
        f"{volume.name or 'volume'}: the affine is oblique by {obliquity:.2f} degrees; napari "
        f"cannot display rotated grids, so it was resampled ({method}) onto the nearest "
        f"axis-aligned grid {shape} with the same voxel size for display. "
        "Saving this layer writes the resampled grid."
    )
    logger.warning(msg)
    warnings.warn(msg, ObliqueResampleWarning, stacklevel=3)
    out = resample(vol, shape, affine, order=order)
    source = vol.source_affine if vol.source_affine is not None else vol.affine
    return replace(out, source_affine=source), obliquity


def _scale_translate(affine: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """napari ``(scale, translate)`` in ``(S, A, R)`` order for an axis-aligned RAS affine."""
    spacing = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))
    scale = tuple(float(s) for s in spacing[::-1])
    translate = tuple(float(t) for t in np.asarray(affine)[:3, 3][::-1])
    return scale, translate


def _affine_from_scale_translate(
    scale: Sequence[float] | None, translate: Sequence[float] | None
) -> np.ndarray:
    """RAS affine of an ``(S, A, R)``-ordered layer from its napari scale and translate."""
    s = np.ones(3) if scale is None else np.asarray(scale, dtype=np.float64)[-3:]
    t = np.zeros(3) if translate is None else np.asarray(translate, dtype=np.float64)[-3:]
    affine = np.eye(4)
    affine[:3, :3] = np.diag(s[::-1])
    affine[:3, 3] = t[::-1]
    return affine


def _girnet_meta(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    """The ``"girnet"`` dict of a layer's metadata (or the dict itself if given directly)."""
    if not metadata:
        return {}
    if "girnet" in metadata and isinstance(metadata["girnet"], Mapping):
        return dict(metadata["girnet"])
    if "affine" in metadata:
        return dict(metadata)
    return {}


def _merge_metadata(ours: dict[str, Any], given: Mapping[str, Any] | None) -> dict[str, Any]:
    """Layer metadata: ``given`` with its ``"girnet"`` entries taking precedence over ``ours``."""
    given = dict(given or {})
    girnet = {**ours, **dict(given.get("girnet") or {})}
    given["girnet"] = girnet
    return given


def _label_array(array: np.ndarray) -> np.ndarray:
    """A writable integer array for a Labels layer."""
    arr = np.asarray(array)
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8)
    if arr.dtype.kind == "f":
        return np.rint(arr).astype(np.int32)
    if arr.dtype.kind not in "iu":
        raise VolumeError(f"labels must be integers or booleans, got dtype {arr.dtype}")
    return arr if arr.flags.writeable else arr.copy()


# ----------------------------------------------------------------------------- volumes
def volume_to_layer_data(
    volume: Volume, name: str, kind: str = "image", **layer_kwargs: Any
) -> LayerDataTuple:
    """napari layer data for a 3D volume, displayed with the slider along S.

    Parameters
    ----------
    volume : Volume
        Any orientation (reoriented to canonical RAS, a permutation/flip without resampling).
        An affine oblique by more than :data:`OBLIQUE_TOLERANCE_DEG` is resampled (linear for
        images, nearest for labels) onto the nearest axis-aligned grid with an
        :class:`ObliqueResampleWarning`.
    name : str
        Layer name.
    kind : {"image", "labels"}
        Layer type. Labels data are integer (booleans become ``uint8``, floats are rounded) and
        writable (read-only arrays are copied).
    **layer_kwargs
        Extra layer keyword arguments (``colormap``, ``contrast_limits``, ``visible`` ...); they
        override the defaults. A ``metadata`` argument is merged: its ``"girnet"`` entries are
        added to (and override) the geometry entries described in the module docstring.

    Returns
    -------
    tuple
        ``(data, kwargs, layer_type)``; ``data`` has shape ``(Z, Y, X)`` = ``(S, A, R)`` (a
        transposed view of the canonical array, no copy for images), ``kwargs`` holds
        ``name``, ``scale`` (mm, ``(S, A, R)``), ``translate`` (world mm of voxel 0), ``units``,
        ``axis_labels``, ``metadata`` (and ``colormap="gray"`` for images by default).

    Raises
    ------
    ValueError
        For an unknown ``kind``.
    VolumeError
        If labels are requested for a non-numeric array.
    """
    if kind not in ("image", "labels"):
        raise ValueError(f"{name}: kind must be 'image' or 'labels', got {kind!r}")
    disp, obliquity = _display_volume(volume, order=0 if kind == "labels" else 1)
    array = disp.array
    if kind == "labels":
        array = _label_array(array)
    data = array.transpose(2, 1, 0)
    scale, translate = _scale_translate(disp.affine)
    source = volume.source_affine if volume.source_affine is not None else volume.affine
    meta = dict(volume.meta)
    girnet: dict[str, Any] = {
        "kind": kind,
        "affine": np.asarray(disp.affine).tolist(),
        "source_affine": np.asarray(source).tolist(),
        "shape": [int(s) for s in data.shape],
        "path": meta.get("path"),
        "axcodes": list(meta.get("axcodes") or nib.aff2axcodes(source)),
        "header": {k: meta[k] for k in _HEADER_KEYS if k in meta},
    }
    if obliquity is not None:
        girnet["resampled_from_oblique_deg"] = float(obliquity)
        girnet["original_affine"] = np.asarray(volume.affine).tolist()
    kwargs: dict[str, Any] = {
        "name": name,
        "scale": scale,
        "translate": translate,
        "units": UNITS,
        "axis_labels": AXIS_LABELS,
    }
    if kind == "image":
        kwargs["colormap"] = "gray"
    metadata = layer_kwargs.pop("metadata", None)
    kwargs.update(layer_kwargs)
    kwargs["metadata"] = _merge_metadata(girnet, metadata)
    return data, kwargs, kind


def layer_to_volume(
    layer_or_data: Any,
    metadata: Mapping[str, Any] | None = None,
    scale: Sequence[float] | None = None,
    translate: Sequence[float] | None = None,
    name: str | None = None,
) -> Volume:
    """The canonical RAS :class:`Volume` shown by an image or labels layer (inverse of
    :func:`volume_to_layer_data`).

    Parameters
    ----------
    layer_or_data : napari Image/Labels layer or array-like
        A layer (its ``data``, ``metadata``, ``scale``, ``translate`` and ``name`` are used
        unless given explicitly) or the layer's data, shape ``(S, A, R)`` as displayed. Multiscale
        data: the first (full-resolution) level.
    metadata : mapping, optional
        Layer metadata. When it holds ``["girnet"]["affine"]`` (layers made by
        :func:`volume_to_layer_data`) and the data still have the recorded shape, that affine is
        used exactly, and ``["girnet"]["source_affine"]`` / ``["header"]`` are kept so that
        :func:`~napari_girnet.data.nifti.write_nifti` restores the file's orientation.
    scale, translate : sequence of float, optional
        Used only without girnet metadata. **Assumption:** the data axes are ``(S, A, R)`` as
        displayed by this plugin and napari's world is RAS mm in ``(S, A, R)`` order, so the
        affine is ``diag(scale[::-1])`` with translation ``translate[::-1]`` (rotation, shear and
        the layer's ``affine`` are ignored). Defaults: 1 mm, origin 0.
    name : str, optional
        Volume name, used in error messages (default: the layer's name).

    Returns
    -------
    Volume
        Array ``(X, Y, Z)`` = ``(R, A, S)`` (a transposed view of the layer data), RAS affine.

    Raises
    ------
    VolumeError
        For data that are not 3D (2D, 4D, RGB ...) or an empty array; the message names the
        layer.
    """
    data = layer_or_data
    if hasattr(layer_or_data, "data") and hasattr(layer_or_data, "metadata"):
        layer = layer_or_data
        data = layer.data
        metadata = layer.metadata if metadata is None else metadata
        scale = layer.scale if scale is None else scale
        translate = layer.translate if translate is None else translate
        name = layer.name if name is None else name
        if getattr(layer, "rgb", False):
            raise VolumeError(f"layer {name!r}: RGB images cannot be used as volumes")
        if getattr(layer, "multiscale", False):
            data = data[0]
    label = f"layer {name!r}" if name else "layer"
    array = np.asarray(data)
    if array.ndim != 3:
        raise VolumeError(
            f"{label}: expected 3D (S, A, R) data, got {array.ndim}D with shape {array.shape}"
        )
    girnet = _girnet_meta(metadata)
    affine = None
    if "affine" in girnet:
        recorded = girnet.get("shape")
        if recorded is None or tuple(int(s) for s in recorded) == array.shape:
            affine = np.asarray(girnet["affine"], dtype=np.float64)
        else:
            logger.warning(
                "%s: data shape %s differs from the shape %s recorded with its affine; using the "
                "layer's scale and translate",
                label,
                array.shape,
                tuple(recorded),
            )
    source = None
    if affine is None:
        affine = _affine_from_scale_translate(scale, translate)
    elif girnet.get("source_affine") is not None:
        source = np.asarray(girnet["source_affine"], dtype=np.float64)
    meta: dict[str, Any] = dict(girnet.get("header") or {})
    if girnet.get("path"):
        meta["path"] = girnet["path"]
    return Volume(
        array.transpose(2, 1, 0),
        affine,
        name=name or str(girnet.get("path") or "layer"),
        source_affine=source,
        meta=meta,
    )


# ----------------------------------------------------------------------------- landmarks
def points_to_world(points_layer: Any) -> tuple[tuple[str, ...], np.ndarray]:
    """Landmark ids and RAS world coordinates (mm) of a napari Points layer.

    Parameters
    ----------
    points_layer : napari.layers.Points
        3D points. The napari world is assumed to be RAS mm in ``(S, A, R)`` order (the
        convention of every layer of this plugin); each point goes through the layer's
        ``data_to_world`` (scale, translate, rotation, affine) and is reversed to ``(R, A, S)``.

    Returns
    -------
    ids : tuple of str
        ``features["id"]`` when present (missing or empty ids become the 1-based row number),
        else ``"1" .. "N"``.
    world : numpy.ndarray
        Shape ``(N, 3)`` float64, RAS mm.

    Raises
    ------
    LandmarkError
        If the layer's points are not 3D; the message names the layer.
    """
    name = getattr(points_layer, "name", "points")
    data = np.asarray(points_layer.data, dtype=np.float64)
    if data.size == 0:
        return (), np.zeros((0, 3))
    if data.ndim != 2 or data.shape[1] != 3:
        raise LandmarkError(
            f"layer {name!r}: landmarks need 3D points (S, A, R), got data of shape {data.shape}"
        )
    world_sar = np.array([points_layer.data_to_world(p) for p in data], dtype=np.float64)
    world = world_sar[:, ::-1].copy()
    ids = [str(i + 1) for i in range(len(data))]
    features = getattr(points_layer, "features", None)
    if features is not None and "id" in getattr(features, "columns", ()):
        column = list(features["id"])
        if len(column) == len(data):
            for i, value in enumerate(column):
                text = "" if value is None else str(value).strip()
                if text and text.lower() != "nan":
                    ids[i] = text
    return tuple(ids), world


def _reference_geometry(reference: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(scale, translate)`` in ``(S, A, R)`` order of a layer, metadata mapping or Volume."""
    if reference is None:
        return np.ones(3), np.zeros(3)
    if isinstance(reference, Volume):
        affine, _, _ = _display_grid(reference)
        scale, translate = _scale_translate(affine)
        return np.asarray(scale), np.asarray(translate)
    if isinstance(reference, Mapping):
        girnet = _girnet_meta(reference)
        if "affine" not in girnet:
            raise LandmarkError("reference metadata has no girnet affine")
        scale, translate = _scale_translate(np.asarray(girnet["affine"], dtype=np.float64))
        return np.asarray(scale), np.asarray(translate)
    if hasattr(reference, "scale") and hasattr(reference, "translate"):
        return (
            np.asarray(reference.scale, dtype=np.float64)[-3:],
            np.asarray(reference.translate, dtype=np.float64)[-3:],
        )
    raise LandmarkError(
        f"reference must be a layer, layer metadata or a Volume, got {type(reference).__name__}"
    )


def world_to_points_data(
    ids: Sequence[str] | None,
    world_ras_mm: np.ndarray,
    reference_layer_or_metadata: Any = None,
    name: str = "landmarks",
    **layer_kwargs: Any,
) -> LayerDataTuple:
    """A Points layer for landmarks given in RAS world millimetres.

    Parameters
    ----------
    ids : sequence of str or None
        Landmark ids (``features["id"]``, shown as text); None = ``"1" .. "N"``.
    world_ras_mm : numpy.ndarray
        Shape ``(N, 3)``, RAS mm.
    reference_layer_or_metadata : layer, metadata mapping, Volume or None
        Image layer (or its metadata, or a Volume) whose scale and translate the points layer
        takes, so that the point data are in that image's voxel coordinates ``(z, y, x)``.
        None: scale 1, translate 0, data = world mm in ``(S, A, R)`` order (overlays every layer
        of this plugin).
    name : str
        Layer name.
    **layer_kwargs
        Extra Points keyword arguments overriding the defaults.

    Returns
    -------
    tuple
        ``(data (N, 3), kwargs, "points")`` with ``features={"id": ids}``,
        ``text={"string": "{id}", ...}``, point size 4 mm, ``units``, ``axis_labels``.

    Raises
    ------
    LandmarkError
        Wrong coordinate shape, length mismatch or an unusable reference.
    """
    world = np.asarray(world_ras_mm, dtype=np.float64)
    if world.size == 0:
        world = np.zeros((0, 3))
    if world.ndim != 2 or world.shape[1] != 3:
        raise LandmarkError(f"{name}: coordinates must have shape (N, 3), got {world.shape}")
    ids_list = [str(i + 1) for i in range(len(world))] if ids is None else [str(i) for i in ids]
    if len(ids_list) != len(world):
        raise LandmarkError(f"{name}: {len(ids_list)} ids but {len(world)} points")
    scale, translate = _reference_geometry(reference_layer_or_metadata)
    data = (world[:, ::-1] - translate) / scale
    kwargs: dict[str, Any] = {
        "name": name,
        "scale": tuple(float(s) for s in scale),
        "translate": tuple(float(t) for t in translate),
        "units": UNITS,
        "axis_labels": AXIS_LABELS,
        "features": {"id": np.asarray(ids_list, dtype=object)},
        "text": {"string": "{id}", "color": "yellow", "size": 10, "anchor": "upper_left"},
        "size": 4.0 / float(np.mean(scale)),
        "face_color": "yellow",
        "border_color": "black",
        "metadata": {"girnet": {"kind": "landmarks", "space": "RAS mm"}},
    }
    metadata = layer_kwargs.pop("metadata", None)
    kwargs.update(layer_kwargs)
    kwargs["metadata"] = _merge_metadata(kwargs["metadata"]["girnet"], metadata)
    return data, kwargs, "points"


# ----------------------------------------------------------------------------- fields
def field_to_vectors(
    field_mm: np.ndarray,
    grid: Volume,
    stride: int = 6,
    mask: Volume | np.ndarray | None = None,
    min_mm: float = 0.0,
    name: str = "deformation",
    **layer_kwargs: Any,
) -> LayerDataTuple:
    """A Vectors layer showing a displacement field, subsampled on a stride grid.

    Parameters
    ----------
    field_mm : numpy.ndarray
        Shape ``(3, X, Y, Z)``: displacement in RAS millimetres (channel 0 = R, 1 = A, 2 = S)
        at the voxels of ``grid``; voxel ``p`` maps to world point ``grid(p) + field_mm[:, p]``.
    grid : Volume
        The grid the field lives on (only its shape and affine are used). The vectors are
        expressed on the display grid of ``grid`` (the grid of its image layer, see
        :func:`volume_to_layer_data`), so the layer overlays that image layer.
    stride : int
        One vector every ``stride`` voxels along each axis, starting at ``stride // 2``.
    mask : Volume or numpy.ndarray, optional
        ``(X, Y, Z)`` on ``grid``; only voxels where it is nonzero get a vector (e.g. the brain).
    min_mm : float
        Vectors with magnitude ``<= min_mm`` are left out when ``min_mm > 0``.
    name : str
        Layer name.
    **layer_kwargs
        Extra Vectors keyword arguments overriding the defaults.

    Returns
    -------
    tuple
        ``(data (N, 2, 3), kwargs, "vectors")``: ``data[:, 0]`` start points and ``data[:, 1]``
        projections, both in **data coordinates** of the displayed ``(S, A, R)`` grid, i.e. voxel
        indices ``(z, y, x)`` and displacement in voxels of that grid in ``(z, y, x)`` order;
        ``scale``/``translate`` as the grid's image layer, so napari shows vectors of the true
        length in mm. ``features={"magnitude_mm": ...}`` colours them (``edge_colormap``
        viridis), ``vector_style`` :data:`VECTOR_STYLE`.

    Raises
    ------
    VolumeError
        If the field or the mask does not match the grid, or ``stride < 1``.

    Notes
    -----
    In a 2D view napari shows vectors whose start point lies in the current slice (plus the
    slice thickness, ``viewer.dims.thickness``); with a stride of ``s`` only every ``s``-th
    slice has vectors unless the thickness is raised to about ``s`` voxels.
    """
    field = np.asarray(field_mm)
    if field.shape != (3, *grid.shape):
        raise VolumeError(
            f"{name}: field must have shape (3, {', '.join(map(str, grid.shape))}) on grid "
            f"{grid.name or ''}, got {field.shape}"
        )
    stride = int(stride)
    if stride < 1:
        raise VolumeError(f"{name}: stride must be >= 1, got {stride}")
    mask_arr = None
    if mask is not None:
        mask_arr = np.asarray(mask.array if isinstance(mask, Volume) else mask)
        if mask_arr.shape != grid.shape:
            raise VolumeError(
                f"{name}: mask shape {mask_arr.shape} does not match the field's grid {grid.shape}"
            )
    grid_affine, grid_shape = grid.affine, grid.shape
    if not grid.is_canonical:  # sample the stride grid in the displayed voxel order
        transform = ornt.ornt_transform(
            ornt.io_orientation(grid.affine), ornt.axcodes2ornt(("R", "A", "S"))
        )
        field = np.moveaxis(ornt.apply_orientation(np.moveaxis(field, 0, -1), transform), -1, 0)
        if mask_arr is not None:
            mask_arr = ornt.apply_orientation(mask_arr, transform)
        grid_affine = grid.affine @ ornt.inv_ornt_aff(transform, grid.shape)
        grid_shape = field.shape[1:]
    disp_affine, _, _ = _display_grid_of(grid_affine, grid_shape)
    axes = [np.arange(stride // 2, n, stride) for n in grid_shape]
    ijk = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    d_mm = field[:, ijk[:, 0], ijk[:, 1], ijk[:, 2]].T.astype(np.float64)
    magnitude = np.linalg.norm(d_mm, axis=1)
    keep = np.ones(len(ijk), dtype=bool)
    if mask_arr is not None:
        keep &= mask_arr[ijk[:, 0], ijk[:, 1], ijk[:, 2]] != 0
    if min_mm > 0:
        keep &= magnitude > min_mm
    ijk, d_mm, magnitude = ijk[keep], d_mm[keep], magnitude[keep]
    to_display = np.linalg.inv(disp_affine) @ grid_affine
    start = ijk @ to_display[:3, :3].T + to_display[:3, 3]
    proj = d_mm @ np.linalg.inv(disp_affine[:3, :3]).T
    data = np.stack([start[:, ::-1], proj[:, ::-1]], axis=1).astype(np.float32)
    scale, translate = _scale_translate(disp_affine)
    top = float(magnitude.max()) if magnitude.size else 0.0
    source = grid.source_affine if grid.source_affine is not None else grid.affine
    girnet = {
        "kind": "field",
        "affine": np.asarray(disp_affine).tolist(),
        "source_affine": np.asarray(source).tolist(),
        "stride": stride,
        "field_units": "RAS mm",
        "max_mm": top,
    }
    kwargs: dict[str, Any] = {
        "name": name,
        "scale": scale,
        "translate": translate,
        "units": UNITS,
        "axis_labels": AXIS_LABELS,
        "features": {"magnitude_mm": magnitude.astype(np.float32)},
        "edge_color": "magnitude_mm",
        "edge_colormap": "viridis",
        "edge_contrast_limits": (0.0, top if top > 0 else 1.0),
        "vector_style": VECTOR_STYLE,
        "edge_width": 0.4,
        "length": 1.0,
    }
    metadata = layer_kwargs.pop("metadata", None)
    kwargs.update(layer_kwargs)
    kwargs["metadata"] = _merge_metadata(girnet, metadata)
    return data, kwargs, "vectors"


# ----------------------------------------------------------------------------- results
def _file_sha256(path: Path) -> str | None:
    """SHA-256 of a file (the checkpoint module's), or None when it cannot be read."""
    from napari_girnet.core.checkpoint import file_sha256

    try:
        return file_sha256(path)
    except OSError:
        return None


def _result_provenance(
    result: RegistrationResult, scan_name: str, extra: Mapping[str, Any] | None
) -> dict[str, Any]:
    """Layer provenance of a registration result: the result's own
    :class:`~napari_girnet.evaluation.report.Provenance` (as made by the pipeline) with the
    layer's inputs, metrics and timings; ``extra`` (widget settings) overrides."""
    given = dict(result.provenance or {})
    config = result.config
    try:
        config_dict = config.to_dict()
    except AttributeError:
        config_dict = None
    checkpoint = Path(result.checkpoint) if result.checkpoint else None
    prov: dict[str, Any] = {
        "napari_girnet_version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "scan_layer": scan_name,
        "input_layers": [scan_name],
        "model": given.get("model"),
        "model_sha256": given.get("model_sha256"),
        "checkpoint": str(checkpoint) if checkpoint else None,
        "checkpoint_sha256": given.get("checkpoint_sha256")
        or (_file_sha256(checkpoint) if checkpoint else None),
        "config": config_dict,
        "preset": getattr(config, "preset", None),
        "seed": getattr(getattr(config, "runtime", None), "seed", None),
        "device": given.get("device"),
        "precision": given.get("precision"),
        "fine_tune_steps": given.get("fine_tune_steps"),
        "metrics": dict(result.metrics or {}),
        "timings_s": {k: round(float(v), 3) for k, v in (result.timings or {}).items()},
    }
    for key, value in given.items():
        prov.setdefault(key, value)
    if extra:
        prov.update(dict(extra))
    return prov


def _on_scan_grid(volume: Volume, scan: Volume) -> Volume:
    """``volume`` with the scan's source affine when it lies on the scan's grid."""
    if volume.source_affine is None and scan.source_affine is not None and volume.same_grid(scan):
        return replace(volume, source_affine=scan.source_affine)
    return volume


def _jacobian_limits(jacobian: np.ndarray, mask: np.ndarray | None) -> tuple[float, float]:
    """Contrast limits ``(1 - r, 1 + r)`` with ``r`` the 99th percentile of ``|J - 1|``."""
    values = jacobian[mask] if mask is not None and mask.any() else jacobian.ravel()
    values = values[np.isfinite(values)]
    r = float(np.percentile(np.abs(values - 1.0), 99)) if values.size else 0.0
    r = max(r, 0.05)
    return 1.0 - r, 1.0 + r


def result_to_layers(
    result: RegistrationResult,
    scan_name: str,
    stride: int = 6,
    provenance: Mapping[str, Any] | None = None,
) -> list[LayerDataTuple]:
    """napari layers for a :class:`~napari_girnet.api.RegistrationResult`.

    Parameters
    ----------
    result : RegistrationResult
        Output of :func:`napari_girnet.api.register`.
    scan_name : str
        Name of the scan's layer; prefixes the layer names and is recorded as input layer.
    stride : int
        Stride (voxels of the scan grid) of the deformation vectors.
    provenance : mapping, optional
        Extra provenance entries (e.g. ``input_layers``, widget settings); they override the
        ones derived from ``result``.

    Returns
    -------
    list of tuple
        In order: ``"<scan> lesion probability"`` (Image, magma, additive, contrast 0..1),
        ``"<scan> lesion mask"`` (Labels), ``"<scan> inpainted"`` (Image, gray),
        ``"<scan> atlas→scan"`` (Image, gray), ``"<scan> scan→atlas"`` (Image on the **atlas**
        grid, hidden: it lives in atlas space and does not overlay the scan),
        ``"<scan> deformation"`` (Vectors of ``field_nonlinear``, GIRNet's non-linear
        displacement without the affine part, inside the brain mask,
        hidden), when the brain was extracted ``"<scan> brain mask"`` (Labels, hidden) and
        ``"<scan> bias corrected"`` (Image, hidden), and ``"<scan> Jacobian"`` (Image, PiYG,
        contrast ``(1 - r, 1 + r)``, hidden).
        All but scan→atlas share the scan layer's scale and translate. Each layer's
        ``metadata["girnet"]`` has ``"role"`` (the result attribute, ``"deformation"`` for the
        vectors) and ``"provenance"`` (version, model and checkpoint SHA-256, config, seed,
        device, input layer names, metrics, timings).
    """
    prov = _result_provenance(result, scan_name, provenance)
    scan = result.scan

    def meta(role: str) -> dict[str, Any]:
        return {"girnet": {"role": role, "provenance": prov, "path": None}}

    native = {attr: _on_scan_grid(getattr(result, attr), scan) for attr, _ in _RESULT_NATIVE}
    names = dict(_RESULT_NATIVE)
    layers: list[LayerDataTuple] = [
        volume_to_layer_data(
            native["lesion_probability"],
            f"{scan_name} {names['lesion_probability']}",
            colormap="magma",
            blending="additive",
            contrast_limits=(0.0, 1.0),
            metadata=meta("lesion_probability"),
        ),
        volume_to_layer_data(
            native["lesion_mask"],
            f"{scan_name} {names['lesion_mask']}",
            kind="labels",
            opacity=0.5,
            metadata=meta("lesion_mask"),
        ),
        volume_to_layer_data(
            native["inpainted"],
            f"{scan_name} {names['inpainted']}",
            colormap="gray",
            visible=False,
            metadata=meta("inpainted"),
        ),
        volume_to_layer_data(
            native["atlas_to_scan"],
            f"{scan_name} {names['atlas_to_scan']}",
            colormap="gray",
            contrast_limits=(0.0, 1.0),
            visible=False,
            metadata=meta("atlas_to_scan"),
        ),
        volume_to_layer_data(
            result.scan_to_atlas,
            f"{scan_name} scan→atlas",
            colormap="gray",
            contrast_limits=(0.0, 1.0),
            visible=False,
            metadata=meta("scan_to_atlas"),
        ),
    ]
    brain = None
    native_mask = getattr(getattr(result, "prepared", None), "native_mask", None)
    if native_mask is not None and native_mask.shape == scan.shape:
        brain = np.asarray(native_mask.array) != 0
    layers.append(
        field_to_vectors(
            result.field_nonlinear,
            scan,
            stride=stride,
            mask=brain,
            name=f"{scan_name} deformation",
            visible=False,
            metadata={
                "girnet": {
                    "role": "deformation",
                    "provenance": prov,
                    "direction": "non-linear part of atlas→scan (after the affine alignment), "
                    "in the scan's world mm",
                }
            },
        )
    )
    if result.brain_mask is not None:
        layers.append(
            volume_to_layer_data(
                _on_scan_grid(result.brain_mask, scan),
                f"{scan_name} brain mask",
                kind="labels",
                opacity=0.3,
                visible=False,
                metadata=meta("brain_mask"),
            )
        )
    if result.bias_corrected is not None:
        layers.append(
            volume_to_layer_data(
                _on_scan_grid(result.bias_corrected, scan),
                f"{scan_name} bias corrected",
                colormap="gray",
                visible=False,
                metadata=meta("bias_corrected"),
            )
        )
    jac = _on_scan_grid(result.jacobian, scan)
    jac_mask = brain if brain is not None and brain.shape == jac.shape else None
    layers.append(
        volume_to_layer_data(
            jac,
            f"{scan_name} Jacobian",
            colormap="PiYG",
            contrast_limits=_jacobian_limits(np.asarray(jac.array), jac_mask),
            visible=False,
            metadata=meta("jacobian"),
        )
    )
    return layers


# Fixed-grid outputs of a pair result: (attribute of PairResult, role, label, layer kwargs).
_PAIR_FIXED: tuple[tuple[str, str, str, dict[str, Any]], ...] = (
    ("moved", "moved_on_fixed", "moved", {"colormap": "gray"}),
    ("inpainted_on_fixed", "inpainted_on_fixed", "inpainted", {"visible": False}),
    ("lesion_mask_on_fixed", "lesion_mask_on_fixed", "lesion mask", {"opacity": 0.5}),
)


def pair_moving_result(pair: Any) -> RegistrationResult:
    """The moving-side :class:`~napari_girnet.api.RegistrationResult` of a pair result
    (``pair.registration``; ``pair.result`` in older builds).

    Raises
    ------
    AttributeError
        If ``pair`` has neither.
    """
    found = getattr(pair, "registration", None)
    if found is None:
        found = getattr(pair, "result", None)
    if found is None:
        raise AttributeError(
            f"{type(pair).__name__} has no moving-side result (registration or result)"
        )
    return found


def _fixed_brain_mask(pair: Any) -> np.ndarray | None:
    """Brain mask on the fixed native grid: ``pair.fixed_prepared.native_mask`` when present;
    otherwise the nonzero voxels of a skull-stripped fixed scan, or None when that keeps
    (almost) everything or nothing (a scan with a non-zero background)."""
    fixed = pair.fixed
    native = getattr(getattr(pair, "fixed_prepared", None), "native_mask", None)
    if native is not None and tuple(native.shape) == tuple(fixed.shape):
        return np.asarray(native.array) != 0
    mask = np.asarray(fixed.array) != 0
    fraction = float(mask.mean()) if mask.size else 0.0
    return mask if 0.0 < fraction < 0.95 else None


def pair_to_layers(
    pair: Any,
    moving_name: str,
    fixed_name: str,
    stride: int = 6,
    provenance: Mapping[str, Any] | None = None,
) -> list[LayerDataTuple]:
    """napari layers for a pair result (:class:`napari_girnet.api.PairResult`) on both grids.

    Parameters
    ----------
    pair : PairResult
        Output of :func:`napari_girnet.api.register_pair` for ``moving`` (e.g. the
        pre-operative scan) and ``fixed`` (the follow-up of the same patient). Used: the
        moving-side :class:`~napari_girnet.api.RegistrationResult`
        (:func:`pair_moving_result`), ``pair.fixed`` (Volume), ``pair.moved``,
        ``pair.inpainted_on_fixed``, ``pair.lesion_mask_on_fixed``, ``pair.jacobian_on_fixed``
        (volumes on the fixed grid), ``pair.field_fixed_to_moving`` (``(3, X, Y, Z)`` RAS mm on
        the fixed grid: fixed point ``p`` maps to moving point ``p + d(p)``) and, for the
        vectors' mask, ``pair.fixed_prepared.native_mask``. A missing (None) fixed-grid output
        is skipped.
    moving_name, fixed_name : str
        Names of the moving and fixed layers.
    stride : int
        Vector stride, in voxels of each grid.
    provenance : mapping, optional
        Extra provenance entries, as for :func:`result_to_layers`.

    Returns
    -------
    list of tuple
        First the layers of :func:`result_to_layers` for ``pair.result`` on the **moving**
        scan's grid, their names suffixed ``" (on <moving>)"`` (except ``scan→atlas``, which
        lives on the working grid); then, on the **fixed** scan's grid (the fixed layer's scale
        and translate): ``"<moving> moved (on <fixed>)"`` (Image, gray),
        ``"<moving> inpainted (on <fixed>)"`` (Image, hidden), ``"<moving> lesion mask (on
        <fixed>)"`` (Labels), ``"<moving> deformation (on <fixed>)"`` (Vectors of
        ``field_fixed_to_moving``, subsampled like the moving-grid deformation, inside the fixed
        brain mask; hidden) and ``"<moving> Jacobian (on <fixed>)"`` (Image, PiYG, hidden).
        Each layer's
        ``metadata["girnet"]`` has ``"role"`` (fixed-grid roles end in ``"_on_fixed"``),
        ``"grid"`` (``"moving"``, ``"fixed"`` or ``"working"``) and ``"provenance"`` (with
        ``moving_layer``, ``fixed_layer`` and ``mode="pair"``).
    """
    extra = {"mode": "pair", "moving_layer": moving_name, "fixed_layer": fixed_name}
    extra.update(dict(provenance or {}))
    out: list[LayerDataTuple] = []
    result = pair_moving_result(pair)
    for data, kwargs, kind in result_to_layers(result, moving_name, stride, extra):
        girnet = kwargs["metadata"]["girnet"]
        if girnet.get("role") == "scan_to_atlas":
            girnet["grid"] = "working"
        else:
            girnet["grid"] = "moving"
            kwargs["name"] = f"{kwargs['name']} (on {moving_name})"
        out.append((data, kwargs, kind))
    prov = _result_provenance(result, moving_name, extra)
    fixed = pair.fixed

    def meta(role: str) -> dict[str, Any]:
        return {"girnet": {"role": role, "grid": "fixed", "provenance": prov, "path": None}}

    for attr, role, label, kwargs in _PAIR_FIXED:
        volume = getattr(pair, attr, None)
        if volume is None:
            continue
        out.append(
            volume_to_layer_data(
                _on_scan_grid(volume, fixed),
                f"{moving_name} {label} (on {fixed_name})",
                kind="labels" if role.startswith("lesion_mask") else "image",
                metadata=meta(role),
                **({"colormap": "gray"} if role == "inpainted_on_fixed" else {}),
                **kwargs,
            )
        )
    field = getattr(pair, "field_fixed_to_moving", None)
    brain = _fixed_brain_mask(pair)
    if field is not None:
        out.append(
            field_to_vectors(
                np.asarray(field),
                fixed,
                stride=stride,
                mask=brain,
                name=f"{moving_name} deformation (on {fixed_name})",
                visible=False,
                metadata={
                    "girnet": {
                        **meta("deformation_on_fixed")["girnet"],
                        "direction": "fixed→moving: a point p of the fixed scan maps to the "
                        "moving scan's point p + d(p), world RAS mm",
                    }
                },
            )
        )
    jacobian = getattr(pair, "jacobian_on_fixed", None)
    if jacobian is not None:
        jac = _on_scan_grid(jacobian, fixed)
        jac_mask = brain if brain is not None and brain.shape == jac.shape else None
        out.append(
            volume_to_layer_data(
                jac,
                f"{moving_name} Jacobian (on {fixed_name})",
                colormap="PiYG",
                contrast_limits=_jacobian_limits(np.asarray(jac.array), jac_mask),
                visible=False,
                metadata=meta("jacobian_on_fixed"),
            )
        )
    return out


_PREVIEW = (
    ("lesion_probability", "lesion probability"),
    ("inpainted", "inpainted"),
    ("atlas_to_scan", "atlas→scan"),
)


def preview_to_layers(
    volumes: Mapping[str, Any], scan_name: str, grid: Volume
) -> list[LayerDataTuple]:
    """Live training preview layers from :meth:`napari_girnet.api.FitSession.preview_volumes`.

    Parameters
    ----------
    volumes : mapping
        ``"lesion_probability"``, ``"inpainted"``, ``"atlas_to_scan"`` (others are ignored;
        missing ones are skipped): :class:`Volume` objects or ``(X, Y, Z)`` arrays on ``grid``.
    scan_name : str
        Name of the scan layer being trained on.
    grid : Volume
        The scan's native (canonical RAS) grid; supplies the affine of plain arrays and the
        file's source affine.

    Returns
    -------
    list of tuple
        ``"preview: <scan> lesion probability"`` (magma, additive, 0..1),
        ``"preview: <scan> inpainted"`` and ``"preview: <scan> atlas→scan"`` (gray), with the
        scan layer's scale and translate; ``metadata["girnet"]["role"]`` is
        ``"preview_<key>"``. To refresh existing layers, assign the new ``data`` to
        ``layer.data``.

    Raises
    ------
    VolumeError
        If an array does not match ``grid``.
    """
    layers: list[LayerDataTuple] = []
    for key, label in _PREVIEW:
        value = volumes.get(key)
        if value is None:
            continue
        vol = value if isinstance(value, Volume) else grid.with_array(np.asarray(value), name=key)
        vol = _on_scan_grid(vol, grid)
        kwargs: dict[str, Any] = {"colormap": "gray"}
        if key == "lesion_probability":
            kwargs = {"colormap": "magma", "blending": "additive", "contrast_limits": (0.0, 1.0)}
        elif key == "atlas_to_scan":
            kwargs["contrast_limits"] = (0.0, 1.0)
        layers.append(
            volume_to_layer_data(
                vol,
                f"preview: {scan_name} {label}",
                metadata={"girnet": {"role": f"preview_{key}", "preview": True, "path": None}},
                **kwargs,
            )
        )
    return layers
