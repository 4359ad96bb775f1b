"""NIfTI-1/2 input and output through nibabel: volumes and displacement fields.

Volumes are returned in canonical RAS voxel order (see ``docs/conventions.md``); the file's own
affine is kept in :attr:`Volume.source_affine` so that :func:`write_nifti` restores the original
voxel order and affine exactly.

Displacement fields have two on-disk conventions:

``"voxel"`` (ours)
    4D ``(X, Y, Z, 3)`` float32, displacement in voxels along the array axes of the file's own
    grid, affine = that grid's affine, ``intent_code = 1006`` (NIFTI_INTENT_DISPVECT),
    ``intent_name = "girnet-vox"``.
``"itk"`` (ITK / ANTs / SimpleITK)
    5D ``(X, Y, Z, 1, 3)`` float32, ``intent_code = 1007`` (NIFTI_INTENT_VECTOR), vectors in
    **LPS millimetres** (ITK physical space), defined on the grid points are mapped from:
    ``T(x) = x + d(x)``.

No torch and no Qt here.
"""

from __future__ import annotations

import gzip
import logging
import math
import os
import secrets
import struct
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import numpy.typing as npt
from nibabel import orientations as ornt
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError
from nibabel.volumeutils import apply_read_scaling

from napari_girnet.data.volume import Volume, VolumeError

__all__ = [
    "INTENT_DISPVECT",
    "INTENT_VECTOR",
    "VOXEL_INTENT_NAME",
    "NiftiError",
    "mm_to_voxel_displacement",
    "read_displacement",
    "read_nifti",
    "voxel_to_mm_displacement",
    "write_displacement",
    "write_nifti",
]

logger = logging.getLogger(__name__)

INTENT_DISPVECT = 1006
"""NIFTI_INTENT_DISPVECT, used by the ``"voxel"`` displacement convention."""
INTENT_VECTOR = 1007
"""NIFTI_INTENT_VECTOR, used by the ``"itk"`` displacement convention (as ANTs writes it)."""
VOXEL_INTENT_NAME = "girnet-vox"
"""``intent_name`` that marks a ``"voxel"``-convention displacement file."""

_CONVENTIONS = ("itk", "voxel")
_LPS_FLIP = np.array([-1.0, -1.0, 1.0])
# Spatial unit code (xyzt_units & 7) -> factor to millimetres.
_UNIT_TO_MM = {1: 1000.0, 2: 1.0, 3: 1e-3}
_UNIT_NAMES = {0: "unknown", 1: "meter", 2: "mm", 3: "micron"}
# Deflate cannot compress better than 1032:1, so a gzip file of n bytes expands to at most this.
_MAX_DEFLATE_RATIO = 1032
_GZIP_MAGIC = b"\x1f\x8b"
# Every exception nibabel/gzip/zlib/numpy raise for a damaged or foreign file.
_READ_ERRORS = (
    ImageFileError,
    HeaderDataError,
    OSError,
    EOFError,
    zlib.error,
    struct.error,
    ValueError,
    KeyError,
    IndexError,
    TypeError,
    OverflowError,
    MemoryError,
)


class NiftiError(VolumeError):
    """A NIfTI file cannot be read or written; the message names the file and the problem."""


# ----------------------------------------------------------------------------- paths
def _nifti_suffix(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    if name.endswith(".nii"):
        return ".nii"
    return None


def _check_input_path(path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    if not path.exists():
        raise NiftiError(f"{path}: file not found")
    if not path.is_file():
        raise NiftiError(f"{path}: not a regular file")
    suffix = _nifti_suffix(path)
    if suffix is None:
        raise NiftiError(f"{path}: not a NIfTI file name (expected a .nii or .nii.gz extension)")
    size = path.stat().st_size
    if size == 0:
        raise NiftiError(f"{path}: file is empty (0 bytes)")
    if suffix == ".nii":
        with path.open("rb") as fh:
            if fh.read(2) == _GZIP_MAGIC:
                raise NiftiError(
                    f"{path}: file is gzip-compressed but named .nii; rename it to .nii.gz"
                )
    return path


def _check_output_path(path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    if _nifti_suffix(path) is None:
        raise NiftiError(f"{path}: output must end in .nii or .nii.gz")
    if path.is_dir():
        raise NiftiError(f"{path}: is a directory")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise NiftiError(f"{path}: cannot create the parent directory ({exc})") from exc
    return path


# ----------------------------------------------------------------------------- reading helpers
def _load_image(path: Path) -> nib.Nifti1Image | nib.Nifti2Image:
    """Open the header of ``path`` (data is read later), turning every failure into NiftiError."""
    try:
        img = nib.load(path, mmap=False)
    except _READ_ERRORS as exc:
        raise NiftiError(
            f"{path}: not a readable NIfTI file ({type(exc).__name__}: {exc})"
        ) from exc
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise NiftiError(f"{path}: not a NIfTI image (nibabel read it as {type(img).__name__})")
    return img


def _spatial_unit_scale(img: nib.Nifti1Image, path: Path) -> tuple[float, str]:
    code = int(img.header["xyzt_units"]) & 0x07
    name = _UNIT_NAMES.get(code, f"invalid code {code}")
    scale = _UNIT_TO_MM.get(code)
    if scale is None:
        logger.warning("%s: spatial units are %s in the header; assuming millimetres", path, name)
        scale = 1.0
    return scale, name


def _file_affine(img: nib.Nifti1Image, path: Path, scale: float) -> np.ndarray:
    """The file's voxel-to-world affine in mm, validated."""
    try:
        affine = np.array(img.affine, dtype=np.float64)
    except _READ_ERRORS as exc:  # pragma: no cover - nibabel computes it at load time
        raise NiftiError(f"{path}: cannot compute the affine ({exc})") from exc
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise NiftiError(f"{path}: the header's affine contains NaN or infinite values")
    if scale != 1.0:
        affine[:3, :] *= scale
    if abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise NiftiError(
            f"{path}: the header's affine is singular (zero voxel size or collapsed axes)"
        )
    if int(img.header["qform_code"]) == 0 and int(img.header["sform_code"]) == 0:
        logger.warning(
            "%s: neither qform nor sform is set; using nibabel's default affine from the voxel "
            "sizes, the world position is not reliable",
            path,
        )
    if np.isnan(ornt.io_orientation(affine)).any():
        raise NiftiError(
            f"{path}: cannot tell the anatomical direction of every voxel axis from the "
            "header's affine (degenerate or extremely anisotropic)"
        )
    return affine


def _check_data_size(img: nib.Nifti1Image, path: Path) -> None:
    """Refuse headers that declare more voxel data than the file can possibly hold.

    Without this check nibabel would allocate the declared size before noticing that the file
    is short, which for a corrupt ``dim`` field can mean tens of gigabytes.
    """
    proxy: Any = img.dataobj  # nibabel's ArrayProxy (typed as ArrayLike)
    shape = tuple(int(s) for s in proxy.shape)
    if any(s < 0 for s in shape):
        raise NiftiError(f"{path}: header declares a negative dimension, shape {shape}")
    n_bytes = math.prod(shape) * np.dtype(proxy.dtype).itemsize
    offset = int(proxy.offset)
    file_size = path.stat().st_size
    if _nifti_suffix(path) == ".nii.gz":
        limit = file_size * _MAX_DEFLATE_RATIO
        if offset + n_bytes > limit:
            raise NiftiError(
                f"{path}: header declares shape {shape} ({n_bytes} bytes of voxel data) but a "
                f"gzip file of {file_size} bytes cannot hold that much; the file is truncated "
                "or its header is corrupt"
            )
    elif offset + n_bytes > file_size:
        raise NiftiError(
            f"{path}: file is truncated: header declares shape {shape} ({n_bytes} bytes of "
            f"voxel data from byte {offset}) but the file has only {file_size} bytes"
        )


def _read_gzip_data(img: nib.Nifti1Image, path: Path) -> np.ndarray:
    """Unscaled voxel data of a ``.nii.gz``, with the gzip CRC-32 and length verified.

    nibabel stops decompressing once it has the voxel bytes, so it never reaches the gzip
    trailer and a corrupted stream can go unnoticed; here the stream is read to its end.
    """
    proxy: Any = img.dataobj  # the header copy in img.header has its data offset reset to 0
    shape = tuple(int(s) for s in proxy.shape)
    dtype = np.dtype(proxy.dtype)
    offset = int(proxy.offset)
    n_bytes = math.prod(shape) * dtype.itemsize
    buf = bytearray(n_bytes)
    with gzip.open(path, "rb") as fh:
        if len(fh.read(offset)) < offset:
            raise EOFError("the file ends inside the header")
        view = memoryview(buf)
        got = 0
        while got < n_bytes:
            n = fh.readinto(view[got:])
            if not n:
                raise EOFError(f"the file ends after {got} of {n_bytes} bytes of voxel data")
            got += n
        while fh.read(1 << 20):  # reaching the end makes gzip check CRC-32 and length
            pass
    return np.ndarray(shape, dtype, buffer=buf, order="F")


def _apply_scaling(img: nib.Nifti1Image, arr: np.ndarray) -> np.ndarray:
    """Apply scl_slope / scl_inter exactly as nibabel's ``ArrayProxy`` does for no dtype."""
    proxy: Any = img.dataobj
    slope = np.asanyarray(proxy.slope)
    inter = np.asanyarray(proxy.inter)
    if np.can_cast(inter, slope.dtype):
        inter = inter.astype(slope.dtype)
    return apply_read_scaling(arr, slope, inter)


def _read_data(img: nib.Nifti1Image, path: Path) -> np.ndarray:
    """Voxel data as stored (scl_slope/inter applied), native byte order, validated."""
    _check_data_size(img, path)
    try:
        if _nifti_suffix(path) == ".nii.gz":
            arr = _apply_scaling(img, _read_gzip_data(img, path))
        else:
            arr = np.asarray(img.dataobj)
    except _READ_ERRORS as exc:
        raise NiftiError(
            f"{path}: cannot read the voxel data, the file is truncated or corrupt "
            f"({type(exc).__name__}: {exc})"
        ) from exc
    if arr.dtype.fields is not None or arr.dtype.kind not in "biuf":
        raise NiftiError(
            f"{path}: unsupported voxel type {arr.dtype} (expected integer, float or bool data)"
        )
    if arr.dtype.kind == "f" and arr.dtype.itemsize > 8:
        logger.info("%s: converting %s voxels to float64", path, arr.dtype)
        arr = arr.astype(np.float64)
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    if arr.size == 0:
        raise NiftiError(f"{path}: image is empty (shape {arr.shape})")
    if arr.dtype.kind == "f":
        n_bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
        if n_bad:
            raise NiftiError(
                f"{path}: contains {n_bad} NaN or infinite voxel values (of {arr.size})"
            )
    return arr


def _header_meta(img: nib.Nifti1Image, path: Path, affine: np.ndarray, units: str) -> dict:
    hdr = img.header
    descrip = hdr["descrip"].item()
    if isinstance(descrip, bytes):
        descrip = descrip.split(b"\x00", 1)[0].decode("latin-1").strip()
    return {
        "path": str(path),
        "axcodes": tuple(nib.aff2axcodes(affine)),
        "xyzt_units": units,
        "descrip": descrip,
        "qform_code": int(hdr["qform_code"]),
        "sform_code": int(hdr["sform_code"]),
        "intent_code": int(hdr["intent_code"]),
        "dtype": str(hdr.get_data_dtype().newbyteorder("=")),
        "shape_on_disk": tuple(int(s) for s in img.shape),
        "nifti_version": 2 if isinstance(img, nib.Nifti2Image) else 1,
    }


def _shape_problem(shape: tuple[int, ...]) -> str | None:
    """Why a squeezed on-disk shape is not a 3D image, or None if it is."""
    ndim = len(shape)
    if ndim == 3:
        return None
    if ndim < 3:
        return (
            f"expected a 3D image, got {ndim}D data with shape {shape}: single slices are not "
            "supported; stack the slices into a 3D volume"
        )
    if ndim == 5 and shape[3] == 1 and shape[4] == 3:
        return (
            f"expected a 3D image, got 5D data with shape {shape}: this looks like an ITK "
            "displacement field; read it with read_displacement"
        )
    if ndim == 4:
        hint = (
            "this looks like a vector/displacement field; read it with read_displacement, or "
            if shape[3] == 3
            else ""
        )
        return (
            f"expected a 3D image, got 4D data with shape {shape}: {hint}pick one volume with "
            "e.g. nibabel's img.slicer[..., t] or `fslroi in out t 1`"
        )
    return (
        f"expected a 3D image, got {ndim}D data with shape {shape}: pick one 3D volume out of "
        "it first (e.g. with nibabel's img.slicer)"
    )


# ----------------------------------------------------------------------------- public: volumes
def read_nifti(
    path: str | os.PathLike[str],
    *,
    canonical: bool = True,
    dtype: npt.DTypeLike | None = None,
    name: str | None = None,
) -> Volume:
    """Read a 3D NIfTI image (``.nii`` or ``.nii.gz``) into a :class:`Volume`.

    Parameters
    ----------
    path : str or os.PathLike
        A ``.nii`` or ``.nii.gz`` file (NIfTI-1 or NIfTI-2).
    canonical : bool
        If True (default) the array is reoriented to canonical RAS voxel order (axis 0 -> R,
        1 -> A, 2 -> S; a permutation/flip, no resampling). Either way the file's own affine
        (in mm) is kept in ``source_affine`` so :func:`write_nifti` can restore it.
    dtype : numpy dtype, optional
        Cast the voxel values to this type. By default the on-disk type is kept (in native
        byte order); when the header sets ``scl_slope``/``scl_inter`` nibabel applies them and
        the values are floating point. No float64 copy is made unless asked for.
    name : str, optional
        ``Volume.name``; defaults to the file path.

    Returns
    -------
    Volume
        ``array`` of shape ``(X, Y, Z)``; trailing singleton dimensions of the file
        (``(X, Y, Z, 1)``) are squeezed. ``affine`` maps voxels to RAS+ millimetres; header
        units of metres or microns are converted to mm (unknown units are taken as mm with a
        logged warning). ``meta`` holds ``path``, ``axcodes`` (of the file), ``xyzt_units``
        (spatial unit of the file), ``descrip``, ``qform_code``, ``sform_code``,
        ``intent_code``, ``dtype`` (on disk), ``shape_on_disk`` and ``nifti_version``.

    Raises
    ------
    NiftiError
        Missing file, wrong extension, not a NIfTI file, corrupt or truncated (gzip) data,
        2D / 4D / 5D data, empty image, NaN or infinite voxels, singular or non-finite affine.
        The message names the file.
    """
    path = _check_input_path(path)
    img = _load_image(path)
    shape = tuple(int(s) for s in img.shape)
    squeezed = shape
    while len(squeezed) > 3 and squeezed[-1] == 1:
        squeezed = squeezed[:-1]
    problem = _shape_problem(squeezed)
    if problem is not None:
        raise NiftiError(f"{path}: {problem}")
    if 0 in squeezed:
        raise NiftiError(f"{path}: image is empty (shape {shape})")
    scale, units = _spatial_unit_scale(img, path)
    affine = _file_affine(img, path, scale)
    arr = _read_data(img, path).reshape(squeezed)
    if dtype is not None:
        arr = arr.astype(dtype, copy=False)
    meta = _header_meta(img, path, affine, units)
    label = str(path) if name is None else name
    try:
        if canonical:
            return Volume(arr, affine, name=label, meta=meta).canonical()
        return Volume(arr, affine, name=label, source_affine=affine, meta=meta)
    except VolumeError as exc:  # pragma: no cover - everything is checked above
        raise NiftiError(f"{path}: {exc}") from exc


def _to_disk_dtype(arr: np.ndarray, dtype: npt.DTypeLike | None, path: Path) -> np.ndarray:
    if dtype is not None:
        arr = arr.astype(dtype, copy=False)
    kind = arr.dtype.kind
    if kind == "b":
        return arr.astype(np.uint8)
    if arr.dtype.fields is not None or kind not in "iuf":
        raise NiftiError(f"{path}: cannot write voxels of type {arr.dtype} to NIfTI")
    if kind == "f" and arr.dtype.itemsize < 4:
        return arr.astype(np.float32)
    if dtype is None and kind in "iu" and arr.dtype.itemsize == 8:
        # Many tools cannot read 64-bit integer NIfTI; label maps fit in int32.
        lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
        info = np.iinfo(np.int32)
        if info.min <= lo and hi <= info.max:
            return arr.astype(np.int32)
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return arr


def _xform_codes(meta: Mapping[str, Any]) -> tuple[int, int]:
    """(sform_code, qform_code) to write: the file's codes when known, else 1 (scanner)."""
    s_code = int(meta.get("sform_code") or 0)
    q_code = int(meta.get("qform_code") or 0)
    s_code = s_code or q_code or 1
    q_code = q_code or s_code
    return s_code, q_code


def _make_image(
    data: np.ndarray,
    affine: np.ndarray,
    path: Path,
    *,
    meta: Mapping[str, Any] | None = None,
    intent: tuple[int, str] | None = None,
) -> nib.Nifti1Image:
    meta = meta or {}
    too_big = any(s > np.iinfo(np.int16).max for s in data.shape)
    klass = nib.Nifti2Image if (meta.get("nifti_version") == 2 or too_big) else nib.Nifti1Image
    try:
        img = klass(data, affine, dtype=data.dtype)
        s_code, q_code = _xform_codes(meta)
        img.set_sform(affine, code=s_code)
        img.set_qform(affine, code=q_code)
        img.header.set_xyzt_units(xyz="mm")
        descrip = str(meta.get("descrip") or "")
        if descrip:
            img.header["descrip"] = descrip.encode("latin-1", "replace")[:79]
        if intent is not None:
            img.header.set_intent(intent[0], (), name=intent[1])
    except (HeaderDataError, ValueError, KeyError, TypeError) as exc:
        raise NiftiError(f"{path}: cannot build a NIfTI header ({exc})") from exc
    return img


def _atomic_save(img: nib.Nifti1Image, path: Path) -> Path:
    """Write ``img`` to a temporary file next to ``path`` and move it into place.

    A ``.nii.gz`` is compressed with gzip level 1, ``mtime=0`` and no embedded file name, so the
    same image always gives the same bytes.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        with tmp.open("wb") as raw:
            if _nifti_suffix(path) == ".nii.gz":
                with gzip.GzipFile(
                    filename="", mode="wb", fileobj=raw, compresslevel=1, mtime=0
                ) as gz:
                    img.to_stream(gz)
            else:
                img.to_stream(raw)
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise NiftiError(f"{path}: cannot write the file ({exc})") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _restore_affine(affine: np.ndarray, source: np.ndarray | None) -> np.ndarray:
    """Use the source file's exact affine when the reoriented one matches it."""
    if source is not None and np.allclose(affine, source, rtol=0.0, atol=1e-6):
        return np.array(source, dtype=np.float64)
    return affine


def write_nifti(
    volume: Volume,
    path: str | os.PathLike[str],
    *,
    restore_orientation: bool = True,
    dtype: npt.DTypeLike | None = None,
) -> Path:
    """Write a :class:`Volume` to ``.nii`` / ``.nii.gz``, atomically.

    Parameters
    ----------
    volume : Volume
        The image, shape ``(X, Y, Z)``, any orientation.
    path : str or os.PathLike
        Output file; the extension (``.nii`` or ``.nii.gz``) selects compression. Parent
        directories are created. The data go to a temporary file in the same directory that is
        then renamed over ``path`` (``os.replace``), so an interrupted write never leaves a
        partial file.
    restore_orientation : bool
        If True (default) and ``volume.source_affine`` is set, the array is permuted/flipped
        back to the source file's axis order (no resampling); when the grid is unchanged the
        written affine is then exactly the source file's affine and the voxels are those of the
        source file.
    dtype : numpy dtype, optional
        On-disk voxel type. By default the array's type, except: ``bool`` -> ``uint8``,
        ``float16`` -> ``float32``, and 64-bit integers -> ``int32`` when the values fit
        (many tools cannot read 64-bit integer NIfTI).

    Returns
    -------
    pathlib.Path
        ``path``.

    Notes
    -----
    sform and qform are both set to the affine, with the codes recorded in ``volume.meta``
    (``sform_code`` / ``qform_code`` from :func:`read_nifti`) when non-zero, else 1 (scanner).
    ``xyzt_units`` is mm. NIfTI-2 is written when the source was NIfTI-2 or a dimension exceeds
    32767.

    Raises
    ------
    NiftiError
        Bad extension, unsupported voxel type, or the file cannot be written.
    """
    path = _check_output_path(path)
    vol = volume
    affine = vol.affine
    if restore_orientation and vol.source_affine is not None:
        vol = vol.reoriented_like(vol.source_affine)
        affine = _restore_affine(vol.affine, vol.source_affine)
    data = _to_disk_dtype(vol.array, dtype, path)
    img = _make_image(data, affine, path, meta=vol.meta)
    _atomic_save(img, path)
    logger.debug("wrote %s %s to %s", data.dtype, data.shape, path)
    return path


# ----------------------------------------------------------------------------- displacements
def _linear_map(lin: np.ndarray, disp: np.ndarray) -> np.ndarray:
    """``out[i] = sum_j lin[i, j] * disp[j]`` for channel-first vectors ``(3, ...)``."""
    out_dtype = np.result_type(disp.dtype, np.float32)
    disp = disp.astype(out_dtype, copy=False)
    out = np.zeros_like(disp)
    for i in range(3):
        for j in range(3):
            c = float(lin[i, j])
            if c != 0.0:
                out[i] += c * disp[j] if c != 1.0 else disp[j]
    return out


def _check_vectors(disp: np.ndarray, what: str) -> np.ndarray:
    disp = np.asarray(disp)
    if disp.ndim < 1 or disp.shape[0] != 3:
        raise ValueError(f"{what}: expected a 3-vector field of shape (3, ...), got {disp.shape}")
    return disp


def voxel_to_mm_displacement(disp: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Convert displacement vectors from voxels to RAS millimetres.

    Parameters
    ----------
    disp : numpy.ndarray
        Shape ``(3, ...)`` (e.g. ``(3, X, Y, Z)``), displacement in voxels along the array axes
        of the grid ``affine`` belongs to.
    affine : numpy.ndarray
        4x4 voxel-to-world (RAS mm) affine of that grid; only its linear part is used
        (``d_mm = affine[:3, :3] @ d_vox``).

    Returns
    -------
    numpy.ndarray
        Shape ``(3, ...)``, RAS mm, float32 for float32/integer input (float64 stays float64).

    Raises
    ------
    ValueError
        If ``disp`` does not have 3 channels first.
    """
    disp = _check_vectors(disp, "voxel_to_mm_displacement")
    lin = np.asarray(affine, dtype=np.float64)[:3, :3]
    return _linear_map(lin, disp)


def mm_to_voxel_displacement(disp_mm_ras: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Convert displacement vectors from RAS millimetres to voxels of the grid of ``affine``.

    Parameters
    ----------
    disp_mm_ras : numpy.ndarray
        Shape ``(3, ...)``, displacement in RAS mm.
    affine : numpy.ndarray
        4x4 voxel-to-world affine; ``d_vox = inv(affine[:3, :3]) @ d_mm``.

    Returns
    -------
    numpy.ndarray
        Shape ``(3, ...)``, displacement in voxels along the grid's array axes.

    Raises
    ------
    ValueError
        If the field does not have 3 channels first or the affine is singular.
    """
    disp = _check_vectors(disp_mm_ras, "mm_to_voxel_displacement")
    lin = np.asarray(affine, dtype=np.float64)[:3, :3]
    if abs(np.linalg.det(lin)) < 1e-12:
        raise ValueError("mm_to_voxel_displacement: affine is singular")
    return _linear_map(np.linalg.inv(lin), disp)


def _orientation_transform(from_affine: np.ndarray, to_affine: np.ndarray) -> np.ndarray:
    return ornt.ornt_transform(ornt.io_orientation(from_affine), ornt.io_orientation(to_affine))


def _is_identity_ornt(transform: np.ndarray) -> bool:
    return bool(np.array_equal(transform, [[0, 1], [1, 1], [2, 1]]))


def write_displacement(
    path: str | os.PathLike[str],
    disp: np.ndarray,
    grid: Volume,
    *,
    convention: str = "itk",
    restore_orientation: bool = True,
) -> Path:
    """Write a displacement field to NIfTI in the ``"itk"`` or ``"voxel"`` convention.

    Parameters
    ----------
    path : str or os.PathLike
        ``.nii`` or ``.nii.gz`` output (written atomically, parent dirs created).
    disp : numpy.ndarray
        Shape ``(3, X, Y, Z)``, float, displacement **in voxels** along the array axes of
        ``grid`` (channel ``c`` moves along axis ``c``); a point at voxel ``p`` maps to
        ``p + disp[:, p]``. Must be finite.
    grid : Volume
        The grid the field is defined on, shape ``(X, Y, Z)`` (normally canonical RAS; only
        its geometry is used).
    convention : {"itk", "voxel"}
        ``"voxel"``: 4D ``(X, Y, Z, 3)`` float32 in voxels, affine = ``grid.affine`` (the
        orientation is never restored), intent 1006 named ``"girnet-vox"``.
        ``"itk"``: 5D ``(X, Y, Z, 1, 3)`` float32, intent 1007, vectors in LPS mm:
        ``d_ras = grid.affine[:3, :3] @ d_vox``, ``d_lps = (-d_ras_x, -d_ras_y, d_ras_z)``;
        readable by ``antsApplyTransforms`` and ``sitk.DisplacementFieldTransform``.
    restore_orientation : bool
        ``"itk"`` only: permute/flip the voxel grid back to ``grid.source_affine``'s axis order
        when it is set (the vectors are physical, so only their positions move).

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    NiftiError
        Wrong shape, non-finite values, unknown convention, or the file cannot be written.
    """
    path = _check_output_path(path)
    if convention not in _CONVENTIONS:
        raise NiftiError(
            f"{path}: unknown displacement convention {convention!r}; use one of {_CONVENTIONS}"
        )
    disp = np.asarray(disp)
    if disp.shape != (3, *grid.shape):
        raise NiftiError(
            f"{path}: displacement must have shape (3, {', '.join(map(str, grid.shape))}) to "
            f"match the grid, got {disp.shape}"
        )
    if disp.dtype.kind not in "iuf":
        raise NiftiError(f"{path}: displacement must be real numbers, got dtype {disp.dtype}")
    if not np.all(np.isfinite(disp)):
        n_bad = int(disp.size - np.count_nonzero(np.isfinite(disp)))
        raise NiftiError(f"{path}: displacement contains {n_bad} NaN or infinite values")
    meta = {"descrip": f"napari-girnet displacement ({convention})"}
    if convention == "voxel":
        data = np.moveaxis(disp.astype(np.float32, copy=False), 0, -1)
        img = _make_image(
            np.ascontiguousarray(data),
            grid.affine,
            path,
            meta=meta,
            intent=(INTENT_DISPVECT, VOXEL_INTENT_NAME),
        )
        return _atomic_save(img, path)
    d_ras = voxel_to_mm_displacement(disp.astype(np.float32, copy=False), grid.affine)
    d_lps = (d_ras * _LPS_FLIP[:, None, None, None]).astype(np.float32)
    data = np.moveaxis(d_lps, 0, -1)  # (X, Y, Z, 3)
    affine = grid.affine
    if restore_orientation and grid.source_affine is not None:
        transform = _orientation_transform(grid.affine, grid.source_affine)
        data = ornt.apply_orientation(data, transform)
        affine = _restore_affine(
            grid.affine @ ornt.inv_ornt_aff(transform, grid.shape), grid.source_affine
        )
    data = np.ascontiguousarray(data[:, :, :, None, :])
    img = _make_image(data, affine, path, meta=meta, intent=(INTENT_VECTOR, ""))
    return _atomic_save(img, path)


def read_displacement(path: str | os.PathLike[str]) -> tuple[np.ndarray, Volume]:
    """Read a displacement field written in the ``"itk"`` or ``"voxel"`` convention.

    The convention is detected from the file: 5D ``(X, Y, Z, 1, 3)`` with intent 1006/1007
    is ``"itk"`` (LPS mm vectors); 4D ``(X, Y, Z, 3)`` with ``intent_name == "girnet-vox"`` is
    ``"voxel"``.

    Parameters
    ----------
    path : str or os.PathLike
        ``.nii`` or ``.nii.gz`` file.

    Returns
    -------
    disp : numpy.ndarray
        Shape ``(3, X, Y, Z)`` float32, displacement in voxels along the array axes of the
        returned (canonical RAS) grid: voxel ``p`` maps to ``p + disp[:, p]``.
    grid : Volume
        The field's grid in canonical RAS voxel order: a float32 zeros array of shape
        ``(X, Y, Z)``, ``source_affine`` = the file's affine, ``meta["convention"]``.

    Raises
    ------
    NiftiError
        Unreadable / corrupt file, not a 3-vector displacement field (wrong shape or intent,
        or a 4D field without the ``"girnet-vox"`` name, whose units are unknown), NaN or
        infinite values, bad affine.
    """
    path = _check_input_path(path)
    img = _load_image(path)
    shape = tuple(int(s) for s in img.shape)
    hdr = img.header
    intent_code = int(hdr["intent_code"])
    intent_name = hdr["intent_name"].item()
    if isinstance(intent_name, bytes):
        intent_name = intent_name.split(b"\x00", 1)[0].decode("latin-1").strip()
    if len(shape) == 5 and shape[3] == 1 and shape[4] == 3:
        if intent_code not in (INTENT_DISPVECT, INTENT_VECTOR):
            raise NiftiError(
                f"{path}: 5D (X, Y, Z, 1, 3) data with intent code {intent_code} is not a "
                f"displacement field (expected intent {INTENT_VECTOR} or {INTENT_DISPVECT})"
            )
        convention = "itk"
    elif len(shape) == 4 and shape[3] == 3:
        if intent_name != VOXEL_INTENT_NAME:
            raise NiftiError(
                f"{path}: 4D (X, Y, Z, 3) data without intent_name {VOXEL_INTENT_NAME!r} "
                f"(got {intent_name!r}): the vector units are unknown; expected a 'voxel' "
                "field written by napari-girnet or a 5D (X, Y, Z, 1, 3) ITK field"
            )
        convention = "voxel"
    else:
        raise NiftiError(
            f"{path}: not a 3-vector displacement field: shape {shape}; expected "
            f"(X, Y, Z, 1, 3) (ITK, intent {INTENT_VECTOR}) or (X, Y, Z, 3) "
            f"(voxel, intent_name {VOXEL_INTENT_NAME!r})"
        )
    spatial = shape[:3]
    if 0 in spatial:
        raise NiftiError(f"{path}: displacement field is empty (shape {shape})")
    scale, units = _spatial_unit_scale(img, path)
    file_affine = _file_affine(img, path, scale)
    data = _read_data(img, path).reshape((*spatial, 3)).astype(np.float32, copy=False)
    transform = _orientation_transform(file_affine, np.eye(4))
    can_affine = file_affine @ ornt.inv_ornt_aff(transform, spatial)
    if convention == "voxel" and _is_identity_ornt(transform):
        disp = np.moveaxis(data, -1, 0)
    else:
        vec = np.moveaxis(data, -1, 0)
        if convention == "voxel":
            mm = voxel_to_mm_displacement(vec, file_affine)
        else:
            mm = vec * (_LPS_FLIP * scale).astype(np.float32)[:, None, None, None]
        mm = ornt.apply_orientation(np.moveaxis(mm, 0, -1), transform)
        disp = mm_to_voxel_displacement(np.moveaxis(mm, -1, 0), can_affine)
    disp = np.ascontiguousarray(disp, dtype=np.float32)
    meta = _header_meta(img, path, file_affine, units)
    meta["convention"] = convention
    try:
        grid = Volume(
            np.zeros(spatial, dtype=np.float32),
            can_affine,
            name=str(path),
            source_affine=file_affine,
            meta=meta,
        )
    except VolumeError as exc:  # pragma: no cover - affine checked above
        raise NiftiError(f"{path}: {exc}") from exc
    return disp, grid
