"""Raw T1 scans in: skull-stripped or not, brain extraction and N4 bias-field correction.

GIRNet (and :func:`~napari_girnet.data.preprocess.prepare_scan`) expects a skull-stripped T1.
A scan straight from the scanner holds the skull, scalp, neck and a smooth multiplicative
intensity bias. This module turns such a scan into the input ``prepare_scan`` expects:

1. :func:`is_skull_stripped` decides whether the scan is already skull-stripped: the volume of
   its foreground (the largest connected non-background component with holes filled, as
   :func:`~napari_girnet.data.preprocess.brain_mask` finds it) is at most ``max_brain_ml``
   (2500 mL). An adult intracranial volume (brain and CSF) is 1100-2000 mL; a head with skull
   and scalp is over 3000 mL.
2. :func:`extract_brain` computes a brain mask on the scan's own grid with one of
   :data:`METHODS`: ``"deepbet"`` (the deepbet U-Nets, Fisch et al., Comput Biol Med 2024,
   github.com/wwu-mmll/deepbet, MIT; the TorchScript weights ship inside the ``deepbet`` wheel,
   optional extra ``napari-girnet[bet]``) or ``"atlas"`` (the MNI152 brain mask mapped onto
   the scan by a 12-DOF affine alignment of the scan's head to the atlas, no extra dependency).
3. :func:`n4_bias_correct` removes the bias field with SimpleITK's
   ``N4BiasFieldCorrectionImageFilter`` (Tustison et al., IEEE TMI 2010) fitted inside the
   brain mask on a grid shrunk by ``shrink`` and re-applied at full resolution.
4. :func:`preprocess_raw` chains the three (``mode`` ``"auto"``, ``"yes"`` or ``"no"``) and
   records what was decided, why, with which method and how long it took, for ``report.json``.

Every volume here lives on the scan's native grid (any orientation; results keep the input's
grid, affine and ``source_affine``). Masks are bool. Volumes are reported in mL (1 mL =
1000 mm^3). Errors are :class:`SkullStripError` (a ``ValueError``) with a one-line message that
names the stage, e.g. ``"brain extraction: 312 mL mask, expected 500-2500 mL"``.
"""

from __future__ import annotations

import importlib.metadata
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from napari_girnet.data.volume import Volume

__all__ = [
    "DEFAULT_METHOD",
    "FALLBACK_METHOD",
    "MAX_BRAIN_ML",
    "METHODS",
    "MIN_BRAIN_ML",
    "MODES",
    "N4_SETTINGS",
    "Decision",
    "RawPreprocessResult",
    "SkullStripError",
    "atlas_brain_mask",
    "check_mask_volume",
    "deepbet_available",
    "deepbet_brain_mask",
    "extract_brain",
    "is_skull_stripped",
    "mask_volume_ml",
    "n4_bias_correct",
    "preprocess_raw",
    "resolve_method",
]

logger = logging.getLogger(__name__)

#: ``mode`` values of :func:`preprocess_raw` (``--skull-strip`` on the CLI).
MODES: tuple[str, ...] = ("auto", "yes", "no")
#: Brain-extraction methods of :func:`extract_brain`.
METHODS: tuple[str, ...] = ("atlas", "deepbet")
#: Method used by ``method="auto"`` when deepbet is installed; without it ``"atlas"`` is used
#: (see docs/raw-scans.md for the measurements behind the choice).
DEFAULT_METHOD = "deepbet"
FALLBACK_METHOD = "atlas"
#: Plausible brain-mask volume (mL) of an adult head: outside it, extraction failed.
MIN_BRAIN_ML = 500.0
MAX_BRAIN_ML = 2500.0
#: N4 settings of :func:`preprocess_raw` (shrink factor, iterations per level, control points).
N4_SETTINGS: dict[str, Any] = {"shrink": 4, "iterations": (50, 50, 50), "control_points": 4}

Mode = Literal["auto", "yes", "no"]
_T = TypeVar("_T")
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


class SkullStripError(ValueError):
    """A raw-scan preprocessing stage failed; the one-line message names the stage."""


@dataclass(frozen=True)
class Decision:
    """Whether a scan is already skull-stripped (:func:`is_skull_stripped`).

    Attributes
    ----------
    stripped : bool
        True when the scan looks skull-stripped.
    reason : str
        One line saying why, with the measure and the threshold.
    measure : float
        Foreground volume in mL (the decision variable).
    """

    stripped: bool
    reason: str
    measure: float


@dataclass(frozen=True)
class RawPreprocessResult:
    """Output of :func:`preprocess_raw`, all on the input scan's grid.

    Attributes
    ----------
    brain : Volume
        float32: ``bias_corrected`` inside ``brain_mask``, 0 outside. The input of
        ``prepare_scan(brain, atlas, mask=brain_mask)``.
    brain_mask : Volume
        bool brain mask.
    bias_corrected : Volume
        float32 whole scan after N4 (the input scan, as float32, when N4 did not run).
    decision : dict
        JSON-serialisable record for ``report.json``: ``mode``, ``skull_stripped_input``,
        ``reason``, ``foreground_ml``, ``extracted``, ``method``, ``mask_ml``,
        ``bias_corrected``, ``n4`` (settings) and ``seconds`` per step.
    """

    brain: Volume
    brain_mask: Volume
    bias_corrected: Volume
    decision: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- helpers
def _label(volume: Volume) -> str:
    return volume.name or "scan"


def mask_volume_ml(mask: Volume) -> float:
    """Volume of a mask in mL: number of non-zero voxels x voxel volume (mm^3) / 1000."""
    return float(np.count_nonzero(mask.array)) * float(np.prod(mask.spacing)) / 1000.0


def check_mask_volume(
    mask: Volume,
    stage: str = "brain extraction",
    low_ml: float = MIN_BRAIN_ML,
    high_ml: float = MAX_BRAIN_ML,
) -> float:
    """Return the mask volume in mL, or raise if it is not a plausible adult brain.

    Raises
    ------
    SkullStripError
        ``"<stage>: empty mask"`` or ``"<stage>: <V> mL mask, expected <low>-<high> mL"``.
    """
    ml = mask_volume_ml(mask)
    if ml == 0.0:
        raise SkullStripError(
            f"{stage}: empty mask ({_label(mask)}), expected {low_ml:.0f}-{high_ml:.0f} mL"
        )
    if not low_ml <= ml <= high_ml:
        raise SkullStripError(
            f"{stage}: {ml:.0f} mL mask, expected {low_ml:.0f}-{high_ml:.0f} mL ({_label(mask)})"
        )
    return ml


def _largest_component_filled(mask: np.ndarray) -> np.ndarray:
    labels, n = ndi.label(mask)
    if n == 0:
        return mask.astype(bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return ndi.binary_fill_holes(labels == int(np.argmax(sizes)))


@contextmanager
def _sitk_threads(threads: int) -> Iterator[None]:
    """SimpleITK's global default thread count set to ``threads`` inside the block."""
    previous = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(max(int(threads), 1))
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(previous)


def _to_sitk(volume: Volume, array: np.ndarray, pixel: int = sitk.sitkFloat32) -> sitk.Image:
    """SimpleITK image of ``array`` on ``volume``'s grid (LPS origin, spacing, direction)."""
    lps = _RAS_TO_LPS @ volume.affine
    spacing = np.sqrt((lps[:3, :3] ** 2).sum(axis=0))
    direction = lps[:3, :3] / spacing
    u, _, vt = np.linalg.svd(direction)  # nearest orthonormal directions (ITK needs them)
    dtype = np.uint8 if pixel == sitk.sitkUInt8 else np.float32
    image = sitk.GetImageFromArray(
        np.ascontiguousarray(np.asarray(array, dtype).transpose(2, 1, 0))
    )
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(o) for o in lps[:3, 3]])
    image.SetDirection([float(d) for d in (u @ vt).ravel()])
    return image


def _from_sitk(image: sitk.Image) -> np.ndarray:
    return np.ascontiguousarray(sitk.GetArrayFromImage(image).transpose(2, 1, 0))


def _timed(func: Callable[..., _T], *args: Any, **kwargs: Any) -> tuple[_T, float]:
    start = time.perf_counter()
    out = func(*args, **kwargs)
    return out, time.perf_counter() - start


# --------------------------------------------------------------------------- detection
def is_skull_stripped(volume: Volume, max_brain_ml: float = MAX_BRAIN_ML) -> Decision:
    """Decide whether a T1 scan is already skull-stripped.

    The foreground is :func:`~napari_girnet.data.preprocess.brain_mask` of the scan (voxels
    that differ from the background value found on the grid's faces, largest 6-connected
    component, holes filled), computed on every second voxel along each axis when the voxels
    are under 1.5 mm (a 2 mm view: about 0.3 s for a 1 mm scan). The scan is skull-stripped
    when this volume is at most ``max_brain_ml``. Measured (docs/raw-scans.md): skull-stripped
    scans 1093-1901 mL (25 OASIS, Colin27 ``ch2bet``, the bundled samples, the MS, TCGA and
    BraTS-Reg scans), heads with skull 3462 mL (chris_t1) and 4152 mL (Colin27 ``ch2``).

    Limitation: a raw scan whose field of view holds less than 2.5 L of head (a thin slab) is
    taken for a skull-stripped one; pass ``mode="yes"`` to :func:`preprocess_raw` then.

    Parameters
    ----------
    volume : Volume
        T1 scan, any grid, orientation and dtype.
    max_brain_ml : float
        Largest foreground volume (mL) of a skull-stripped scan.

    Returns
    -------
    Decision
        ``measure`` is the foreground volume in mL.

    Raises
    ------
    SkullStripError
        If the scan is constant or holds NaN/inf (``"skull-strip detection: ..."``).
    """
    from napari_girnet.data.preprocess import PreprocessError, brain_mask

    view = volume
    step = 2 if float(np.max(volume.spacing)) < 1.5 else 1
    if step > 1:
        scale = np.diag([step, step, step, 1.0])
        view = Volume(
            np.ascontiguousarray(np.asarray(volume.array)[::step, ::step, ::step]),
            volume.affine @ scale,
            name=volume.name,
        )
    try:
        foreground = brain_mask(view)
    except PreprocessError as err:
        raise SkullStripError(f"skull-strip detection: {err}") from err
    ml = mask_volume_ml(foreground)
    stripped = ml <= max_brain_ml
    relation = "<=" if stripped else ">"
    what = "skull-stripped (brain only)" if stripped else "not skull-stripped (head with skull)"
    reason = f"foreground volume {ml:.0f} mL {relation} {max_brain_ml:.0f} mL: {what}"
    logger.info("%s: %s", _label(volume), reason)
    return Decision(stripped=stripped, reason=reason, measure=ml)


# --------------------------------------------------------------------------- extraction
def deepbet_available() -> bool:
    """True when the optional ``deepbet`` package (with its weights) is installed."""
    try:
        _deepbet_weights()
    except SkullStripError:
        return False
    return True


def _deepbet_weights() -> tuple[Path, Path]:
    """Paths of deepbet's TorchScript models inside its installed wheel (no download)."""
    try:
        dist = importlib.metadata.distribution("deepbet")
    except importlib.metadata.PackageNotFoundError as err:
        raise SkullStripError(
            "brain extraction: method 'deepbet' needs the optional package deepbet "
            "(pip install 'napari-girnet[bet]'); or use method 'atlas'"
        ) from err
    paths = []
    for name in ("bbox_model.pt", "model.pt"):
        path = Path(str(dist.locate_file(f"data/models/{name}")))
        if not path.is_file():
            raise SkullStripError(f"brain extraction: deepbet is installed but {path} is missing")
        paths.append(path)
    return paths[0], paths[1]


def _deepbet_normalise(x: Any, low: Any, high: Any) -> Any:
    """deepbet's input normalisation (``deepbet.utils.normalize``)."""
    x = ((x - low) / (high - low)).clamp(min=0.0, max=1.0)
    x = (x - x.mean()) / x.std()
    return 0.226 * x + 0.449


def deepbet_brain_mask(
    volume: Volume, threshold: float = 0.5, threads: int | None = None
) -> Volume:
    """Brain mask with the deepbet networks (CPU, offline), on the scan's grid.

    Re-implements ``deepbet.BrainExtraction.run_model`` (deepbet 1.0.2, MIT,
    github.com/wwu-mmll/deepbet) on the weights of the installed wheel, without deepbet's
    file handling: the scan in RAS voxel order is resized (nearest) to 128^3, intensities are
    scaled with its 0.5/99.5 % quantiles, the bounding-box U-Net gives a coarse brain whose box
    (+10 % margin per side) is resized to 256^3 for the main U-Net; its probability is resized
    back, thresholded at ``threshold``, reduced to the largest 6-connected component and
    hole-filled (scipy instead of deepbet's cc3d/fill_voids). Voxel grid based: the networks
    were trained on ~1 mm T1 heads. About 20-30 s for a 1 mm head on 2 CPU cores.

    Parameters
    ----------
    volume : Volume
        T1 head, any grid and orientation.
    threshold : float
        Probability threshold (deepbet's default 0.5).
    threads : int or None
        ``torch.set_num_threads`` during the call (restored after); ``None`` keeps torch's.

    Returns
    -------
    Volume
        bool mask on ``volume``'s grid.

    Raises
    ------
    SkullStripError
        If deepbet is not installed or the networks find no brain.
    """
    import torch
    import torch.nn.functional as F

    bbox_path, model_path = _deepbet_weights()
    native = volume.canonical()
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    try:
        bbox_model = torch.jit.load(str(bbox_path), map_location="cpu").eval()
        model = torch.jit.load(str(model_path), map_location="cpu").eval()
        x = torch.nan_to_num(torch.from_numpy(np.asarray(native.array, dtype=np.float32).copy()))
        small = F.interpolate(x[None, None], (128, 128, 128), mode="nearest-exact")[0, 0]
        low, high = small.quantile(0.005), small.quantile(0.995)
        if not bool(high > low):
            raise SkullStripError(f"brain extraction: {_label(volume)} is constant")
        with torch.no_grad():
            coarse = bbox_model(_deepbet_normalise(small, low, high)[None, None])[0, 1]
        coarse_mask = _largest_component_filled(coarse.numpy() > 0.5)
        box = _deepbet_box(coarse_mask, x.shape, margin=0.1)
        crop = F.interpolate(x[box][None, None], (256, 256, 256), mode="nearest-exact")[0, 0]
        with torch.no_grad():
            prob = model(_deepbet_normalise(crop, low, high)[None, None])[0, 1]
        full = np.zeros(tuple(x.shape), dtype=np.float32)
        full[box] = F.interpolate(prob[None, None], x[box].shape, mode="nearest-exact")[0, 0]
    finally:
        torch.set_num_threads(previous)
    mask = _largest_component_filled(full > threshold)
    out = native.with_array(mask, name=f"{_label(volume)} brain mask")
    return out.reoriented_like(volume.affine) if not volume.is_canonical else out


def _deepbet_box(coarse: np.ndarray, shape: Sequence[int], margin: float) -> tuple[slice, ...]:
    """deepbet's ``get_bbox_with_margin``: box of the coarse mask, scaled to ``shape``."""
    box = []
    for axis, n in enumerate(shape):
        other = tuple(a for a in range(3) if a != axis)
        idx = np.flatnonzero(coarse.mean(axis=other) > 0.02)
        if idx.size == 0:
            raise SkullStripError("brain extraction: deepbet found no brain (empty coarse mask)")
        scale = n / coarse.shape[axis]
        centre = round((idx.max() + 1 + idx.min()) / 2 * scale)
        size = round((idx.max() + 1 - idx.min()) * scale * (1 + 2 * margin))
        box.append(slice(max(0, int(centre - size / 2)), min(int(n), int(centre + size / 2))))
    return tuple(box)


def atlas_brain_mask(
    volume: Volume, seed: int = 0, threads: int = 1, clip_to_head: bool = True
) -> Volume:
    """Brain mask from the MNI152 atlas brain mask mapped onto the scan by an affine alignment.

    The head (:func:`~napari_girnet.data.preprocess.brain_mask` of the raw scan: non-background,
    largest component, holes filled) is intensity-normalised (0.5/99.5 percentiles), aligned to
    the full 1 mm atlas with :func:`~napari_girnet.data.preprocess.affine_align` (12 DOF, Mattes
    MI restricted to the atlas brain dilated by 5 mm, so the skull does not drive it), and the
    atlas brain mask (nilearn MNI152 2009a) is sampled on the scan's grid (linear, > 0.5) and
    kept inside the head (``clip_to_head``). No extra dependency; about 7-10 CPU seconds for a
    1 mm head. Its outline is the atlas's, affinely scaled: it does not follow an individual
    cortex (docs/raw-scans.md), so :data:`DEFAULT_METHOD` is deepbet where installed.

    Parameters
    ----------
    volume : Volume
        T1 head, any grid and orientation.
    seed : int
        Seed of the alignment's metric sampling.
    threads : int
        SimpleITK threads (1 = deterministic).
    clip_to_head : bool
        Keep only voxels of the scan's foreground.

    Returns
    -------
    Volume
        bool mask on ``volume``'s grid.

    Raises
    ------
    SkullStripError
        If the scan is constant or the alignment fails.
    """
    from napari_girnet.data.atlas import load_atlas_full
    from napari_girnet.data.preprocess import (
        PreprocessError,
        affine_align,
        brain_mask,
        normalize_intensity,
        resample,
    )

    try:
        head = brain_mask(volume)
        normalised = normalize_intensity(volume, head)
        full = load_atlas_full()
        alignment = affine_align(
            normalised, full.image, fixed_mask=full.mask, seed=seed, threads=threads
        )
    except PreprocessError as err:
        raise SkullStripError(f"brain extraction (atlas): {err}") from err
    atlas_mask = full.mask.with_array(np.asarray(full.mask.array, dtype=np.float32))
    sampled = resample(atlas_mask, volume.shape, volume.affine, alignment.inverse().matrix, order=1)
    mask = np.asarray(sampled.array) > 0.5
    if clip_to_head:
        mask &= np.asarray(head.array, dtype=bool)
    return volume.with_array(_largest_component_filled(mask), name=f"{_label(volume)} brain mask")


def resolve_method(method: str = "auto") -> str:
    """The brain-extraction method ``method`` stands for.

    ``"auto"`` is :data:`DEFAULT_METHOD` (``"deepbet"``) when deepbet is installed, else
    :data:`FALLBACK_METHOD` (``"atlas"``, with a logged warning); any other value is returned
    unchanged (checked by :func:`extract_brain`).
    """
    if method != "auto":
        return method
    if deepbet_available():
        return DEFAULT_METHOD
    logger.warning(
        "brain extraction: deepbet is not installed (pip install 'napari-girnet[bet]'); "
        "using the atlas-mask method, whose outline is less accurate"
    )
    return FALLBACK_METHOD


def extract_brain(
    volume: Volume, method: str = "auto", *, seed: int = 0, threads: int = 1
) -> Volume:
    """Brain mask (bool, ``volume``'s grid) of a raw T1 head with one of :data:`METHODS`.

    ``"auto"``: see :func:`resolve_method`. Methods: :func:`atlas_brain_mask`,
    :func:`deepbet_brain_mask`.

    Raises
    ------
    SkullStripError
        For an unknown method, a missing optional package, or a failed extraction.
    """
    method = resolve_method(method)
    if method == "deepbet":
        return deepbet_brain_mask(volume, threads=threads)
    if method == "atlas":
        return atlas_brain_mask(volume, seed=seed, threads=threads)
    raise SkullStripError(
        f"brain extraction: unknown method {method!r}; valid: auto, {', '.join(METHODS)}"
    )


# --------------------------------------------------------------------------- bias field
def n4_bias_correct(
    volume: Volume,
    mask: Volume,
    shrink: int = 4,
    iterations: Sequence[int] = (50, 50, 50),
    control_points: int = 4,
    convergence: float = 1e-3,
    threads: int = 1,
) -> tuple[Volume, Volume]:
    """N4 bias-field correction fitted inside ``mask`` at a coarse grid, applied at full resolution.

    SimpleITK ``N4BiasFieldCorrectionImageFilter`` (Tustison et al., "N4ITK: improved N3 bias
    correction", IEEE TMI 29(6), 2010) runs on the scan and mask shrunk by ``shrink`` per axis
    (``sitk.Shrink``), with ``len(iterations)`` fitting levels (``iterations`` each) of a cubic
    B-spline log-bias field with ``control_points`` control points per axis at the first level;
    the fitted log field is then evaluated on the full-resolution grid
    (``GetLogBiasFieldAsImage``) and the scan divided by ``exp(log field)``. Intensities are
    made positive first (N4 works on ``log``): ``value - min + 1`` inside the mask, and the
    offset is removed afterwards. About 2-5 s for a 1 mm head on one core.

    Parameters
    ----------
    volume : Volume
        T1 scan, any grid.
    mask : Volume
        bool brain mask on ``volume``'s grid (the field is fitted on these voxels).
    shrink : int
        Shrink factor of the fitting grid (>= 1).
    iterations : sequence of int
        Maximum iterations per fitting level.
    control_points : int
        B-spline control points per axis at the first level (>= 4).
    convergence : float
        N4 convergence threshold.
    threads : int
        SimpleITK threads during the call.

    Returns
    -------
    corrected : Volume
        float32 scan / bias on ``volume``'s grid (whole grid, not only the mask).
    bias : Volume
        float32 multiplicative bias field (> 0) on ``volume``'s grid.

    Raises
    ------
    SkullStripError
        ``"bias-field correction: ..."`` for a mask on another grid, an empty mask, bad
        settings or a failure inside ITK.
    """
    stage = "bias-field correction"
    if not volume.same_grid(mask):
        raise SkullStripError(f"{stage}: mask {_label(mask)!r} is not on {_label(volume)}'s grid")
    if int(shrink) < 1 or int(control_points) < 4 or not iterations:
        raise SkullStripError(
            f"{stage}: need shrink >= 1, control_points >= 4 and at least one level, got "
            f"{shrink}, {control_points}, {list(iterations)}"
        )
    inside = np.asarray(mask.array, dtype=bool)
    if not inside.any():
        raise SkullStripError(f"{stage}: empty mask ({_label(mask)})")
    array = np.asarray(volume.array, dtype=np.float32)
    if not np.all(np.isfinite(array[inside])):
        raise SkullStripError(f"{stage}: {_label(volume)} holds NaN or infinite values")
    offset = float(array[inside].min()) - 1.0
    positive = np.where(inside, array - np.float32(offset), 1.0).astype(np.float32)
    image = _to_sitk(volume, positive)
    mask_image = _to_sitk(volume, inside, sitk.sitkUInt8)
    factors = [int(shrink)] * 3
    try:
        with _sitk_threads(threads):
            small = sitk.Shrink(image, factors)
            small_mask = sitk.Shrink(mask_image, factors)
            n4 = sitk.N4BiasFieldCorrectionImageFilter()
            n4.SetMaximumNumberOfIterations([int(i) for i in iterations])
            n4.SetNumberOfControlPoints([int(control_points)] * 3)
            n4.SetConvergenceThreshold(float(convergence))
            n4.Execute(small, small_mask)
            log_bias = n4.GetLogBiasFieldAsImage(image)
    except RuntimeError as err:
        raise SkullStripError(f"{stage}: {_label(volume)}: {str(err).splitlines()[0]}") from err
    bias = np.exp(_from_sitk(log_bias)).astype(np.float32)
    corrected = np.where(inside, positive / bias + np.float32(offset), array / bias)
    logger.info(
        "%s: N4 bias field range %.3f-%.3f inside the mask",
        _label(volume),
        float(bias[inside].min()),
        float(bias[inside].max()),
    )
    return (
        volume.with_array(corrected.astype(np.float32), name=f"{_label(volume)} bias-corrected"),
        volume.with_array(bias, name=f"{_label(volume)} bias field"),
    )


# --------------------------------------------------------------------------- stage
def preprocess_raw(
    volume: Volume,
    mode: Mode = "auto",
    *,
    method: str = "auto",
    bias_correction: bool = True,
    seed: int = 0,
    threads: int = 1,
) -> RawPreprocessResult:
    """The "preprocess" stage: detect, extract the brain, correct the bias field.

    ``mode``:

    * ``"auto"``: :func:`is_skull_stripped`; a skull-stripped scan is passed through untouched
      (mask = :func:`~napari_girnet.data.preprocess.brain_mask`, no N4: it is not stripped
      again), a raw one is processed as with ``"yes"``.
    * ``"yes"``: :func:`extract_brain` (``method``), :func:`check_mask_volume`, then
      :func:`n4_bias_correct` inside the mask (when ``bias_correction``).
    * ``"no"``: nothing: mask = ``brain_mask`` of the scan as it is.

    Parameters
    ----------
    volume : Volume
        T1 scan, any grid (results stay on it).
    mode : {"auto", "yes", "no"}
        See above (the CLI's ``--skull-strip``).
    method : str
        ``"auto"`` (:func:`resolve_method`: deepbet if installed, else atlas) or one of
        :data:`METHODS`.
    bias_correction : bool
        Run N4 after extraction.
    seed : int
        Seed of the atlas method's alignment sampling.
    threads : int
        SimpleITK / torch threads.

    Returns
    -------
    RawPreprocessResult

    Raises
    ------
    SkullStripError
        Unknown mode, a mask outside 500-2500 mL (``"brain extraction: 3200 mL mask, expected
        500-2500 mL (...)"``), a missing optional package, or a failed N4.
    """
    from napari_girnet.data.preprocess import PreprocessError, brain_mask

    if mode not in MODES:
        raise SkullStripError(f"skull-strip: unknown mode {mode!r}; valid: {', '.join(MODES)}")
    start = time.perf_counter()
    seconds: dict[str, float] = {}
    decision: dict[str, Any] = {"mode": mode, "skull_stripped_input": None}
    strip = mode == "yes"
    if mode == "auto":
        verdict, seconds["detect"] = _timed(is_skull_stripped, volume)
        decision.update(
            skull_stripped_input=verdict.stripped,
            reason=verdict.reason,
            foreground_ml=round(verdict.measure, 1),
        )
        strip = not verdict.stripped
    else:
        decision["reason"] = f"--skull-strip {mode} (no detection)"
    scan32 = volume.with_array(np.asarray(volume.array, dtype=np.float32))
    if not strip:
        try:
            mask, seconds["mask"] = _timed(brain_mask, volume)
        except PreprocessError as err:
            raise SkullStripError(f"brain mask: {err}") from err
        decision.update(
            extracted=False,
            method=None,
            bias_corrected=False,
            mask_ml=round(mask_volume_ml(mask), 1),
        )
        brain = scan32.with_array(np.where(mask.array, scan32.array, 0).astype(np.float32))
        decision["seconds"] = {k: round(v, 2) for k, v in seconds.items()}
        return RawPreprocessResult(brain, mask, scan32, decision)

    chosen = resolve_method(method)
    mask, seconds["extract"] = _timed(extract_brain, volume, chosen, seed=seed, threads=threads)
    ml = check_mask_volume(mask, "brain extraction")
    decision.update(extracted=True, method=chosen, mask_ml=round(ml, 1))
    corrected = scan32
    if bias_correction:
        (corrected, bias), seconds["n4"] = _timed(
            n4_bias_correct, volume, mask, threads=threads, **N4_SETTINGS
        )
        inside = np.asarray(mask.array, dtype=bool)
        decision.update(
            bias_corrected=True,
            n4={
                **N4_SETTINGS,
                "iterations": list(N4_SETTINGS["iterations"]),
                "bias_min": round(float(bias.array[inside].min()), 4),
                "bias_max": round(float(bias.array[inside].max()), 4),
            },
        )
    else:
        decision["bias_corrected"] = False
    brain = corrected.with_array(
        np.where(mask.array, corrected.array, 0).astype(np.float32), name=f"{_label(volume)} brain"
    )
    seconds["total"] = time.perf_counter() - start
    decision["seconds"] = {k: round(v, 2) for k, v in seconds.items()}
    logger.info("%s: raw preprocessing %s", _label(volume), decision)
    return RawPreprocessResult(brain, mask, corrected, decision)
