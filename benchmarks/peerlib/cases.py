"""Pseudo-pathological benchmark cases with an exact ground-truth deformation.

A case = a healthy brain ``H`` on a working grid (an OASIS-1 brain affinely aligned to the 2 mm
MNI grid with :func:`napari_girnet.api.prepare`, or the MNI atlas itself), deformed by a known
smooth diffeomorphism and with a lesion pasted in, by
:func:`napari_girnet.data.synthetic.make_case`. Stored per case (``write_case`` files plus the
undeformed source): ``scan`` (pathological image), ``healthy`` (its lesion-free twin), ``lesion``,
``brain_mask``, ``labels`` (``warp(H labels, field)``), ``field`` (voxels, scan grid: scan voxel
``x`` corresponds to source voxel ``x + field(x)``), ``source.nii.gz`` / ``source_mask.nii.gz`` /
``source_labels.nii.gz`` (``H``) and ``peers.json`` (the :class:`CaseSpec`).

Lesions (all on the working grid):

* ``tumour``: a **synthetic** tumour-like lesion (:func:`synthetic_tumour`): a smooth-bordered
  ellipsoid of 12-20 mm radii deep in the brain, a dark necrotic core (CSF-like intensity) and
  a hypo-intense rim. The bundled real glioma is a held-out sample and is not used.
* ``ms``: real MS consensus masks (open_ms_data) on the 2 mm grid, with the real lesion
  intensities of :func:`napari_girnet.datasets.lesion_library` (patients 20, 18, 17, ... in that
  order: the largest indices, never 07 or 19).
* ``stroke``: real SOOP acute-stroke masks, resampled by affine (their SPM MNI grid shares the
  atlas world frame), linear coverage > 0.3, largest file indices first, keeping masks of at
  least ``min_stroke_ml``; the lesion is filled with a dark (CSF-like) texture
  (:func:`dark_lesion`), as acute/chronic infarcts look on T1.

Held out for validation (training uses the others): OASIS subjects 1119, 1122, 1125, 1128 and
the lesions with the largest indices. Every random choice takes a seed; same seed, same cases.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from napari_girnet.data.nifti import read_nifti, write_nifti
from napari_girnet.data.synthetic import (
    LesionSource,
    PseudoCase,
    SourceBrain,
    make_case,
    read_case,
    write_case,
)
from napari_girnet.data.volume import Volume

log = logging.getLogger(__name__)

KINDS: tuple[str, ...] = ("tumour", "ms", "stroke")
HELD_OUT_OASIS: tuple[str, ...] = ("1119", "1122", "1125", "1128")
HELD_OUT_MS_ORDER: tuple[str, ...] = ("20", "18", "17", "16", "15", "14")  # never 07 / 19
STROKE_THRESHOLD = 0.3
CASE_VERSION = 1


@dataclass(frozen=True)
class CaseSpec:
    """What one case is made of (its identity in the cache).

    Attributes
    ----------
    name : str
        Folder name, e.g. ``"c00-tumour-oasis1119"``.
    kind : str
        ``"tumour"``, ``"ms"`` or ``"stroke"``.
    brain : str
        ``"oasis<ID>"`` or ``"mni152"``.
    lesion : str
        ``"synthetic"`` (tumour), ``"ms<NN>"`` or ``"stroke<N>"`` (SOOP ``bwsrsub-<N>``).
    seed : int
        Seed of :func:`make_case` and of the synthetic lesion.
    """

    name: str
    kind: str
    brain: str
    lesion: str
    seed: int


def case_seed(seed: int, index: int) -> int:
    """Deterministic per-case seed from the batch seed (31-bit)."""
    return int(np.random.default_rng([int(seed), int(index)]).integers(2**31))


def plan_cases(
    n: int,
    seed: int,
    brains: Sequence[str] = tuple(f"oasis{s}" for s in HELD_OUT_OASIS),
    kinds: Sequence[str] = KINDS,
    stroke_ids: Sequence[str] = (),
) -> list[CaseSpec]:
    """The ``n`` case specs: lesion kinds ``kinds`` in turn, brains in turn.

    With the defaults and ``n = 6``: tumour, ms, stroke, tumour, ms, stroke on OASIS 1119,
    1122, 1125, 1128, 1119, 1122. MS masks in :data:`HELD_OUT_MS_ORDER`; strokes from
    ``stroke_ids`` (largest indices first, :func:`stroke_candidates`).

    Raises
    ------
    ValueError
        Unknown kind, no brain, or too few stroke / MS lesions for ``n``.
    """
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise ValueError(f"lesion kinds must be among {KINDS}, got {list(kinds)}")
    if not brains:
        raise ValueError("at least one healthy brain is needed")
    counters = dict.fromkeys(KINDS, 0)
    specs = []
    for i in range(int(n)):
        kind = kinds[i % len(kinds)]
        j = counters[kind]
        counters[kind] += 1
        if kind == "tumour":
            lesion = "synthetic"
        elif kind == "ms":
            if j >= len(HELD_OUT_MS_ORDER):
                raise ValueError(f"only {len(HELD_OUT_MS_ORDER)} held-out MS masks")
            lesion = f"ms{HELD_OUT_MS_ORDER[j]}"
        else:
            if j >= len(stroke_ids):
                raise ValueError(f"case {i}: only {len(stroke_ids)} stroke masks given")
            lesion = f"stroke{stroke_ids[j]}"
        brain = brains[i % len(brains)]
        specs.append(CaseSpec(f"c{i:02d}-{kind}-{brain}", kind, brain, lesion, case_seed(seed, i)))
    return specs


# --------------------------------------------------------------------------- lesions
def _brain_values(brain: SourceBrain) -> np.ndarray:
    image = np.asarray(brain.image.array, dtype=np.float32)
    values = image[brain.brain_mask() & (image > 0)]
    if values.size == 0:
        raise ValueError(f"source brain {brain.name!r} has no positive voxel in its mask")
    return values


def _smooth_noise(shape: tuple[int, ...], rng: np.random.Generator, sigma: float) -> np.ndarray:
    noise = ndi.gaussian_filter(rng.standard_normal(shape), sigma=sigma)
    return (noise / max(float(noise.std()), 1e-12)).astype(np.float32)


def dark_lesion(
    brain: SourceBrain,
    mask: np.ndarray,
    name: str,
    kind: str,
    seed: int,
    quantiles: tuple[float, float] = (0.01, 0.08),
    description: str = "",
) -> LesionSource:
    """A lesion source whose voxels are dark tissue of ``brain`` with a smooth texture.

    The appearance image is ``brain.image`` with the voxels of ``mask`` replaced by values
    rank-mapped from smooth noise (Gaussian sigma 1 voxel) onto the ``quantiles`` range of the
    brain's own intensities (the darkest brain voxels: CSF), so histogram matching in
    :func:`make_case` keeps the lesion dark.

    Parameters
    ----------
    brain : SourceBrain
        Healthy brain on the working grid ``(X, Y, Z)``.
    mask : numpy.ndarray
        ``(X, Y, Z)`` bool lesion mask on that grid (non-empty).
    name, kind, description : str
        Of the :class:`~napari_girnet.data.synthetic.LesionSource` (kind ``"ms"``/``"glioma"``).
    seed : int
        Seed of the texture.
    quantiles : tuple of float
        Intensity range as quantiles of the brain's voxels.

    Raises
    ------
    ValueError
        Empty mask or a mask not on the brain's grid.
    """
    m = np.asarray(mask, dtype=bool)
    if m.shape != brain.image.shape or not m.any():
        raise ValueError(f"lesion {name!r}: mask empty or not on the grid {brain.image.shape}")
    lo, hi = np.quantile(_brain_values(brain), quantiles)
    rng = np.random.default_rng(int(seed))
    noise = _smooth_noise(m.shape, rng, 1.0)[m]
    ranks = np.argsort(np.argsort(noise, kind="stable"), kind="stable")
    q = (ranks + 0.5) / ranks.size
    appearance = np.array(brain.image.array, dtype=np.float32, copy=True)
    appearance[m] = np.maximum(lo + q * (hi - lo), 1e-3).astype(np.float32)
    grid = brain.image
    return LesionSource(
        name,
        kind,
        Volume(m, grid.affine, name=f"{name} mask"),
        Volume(appearance, grid.affine, name=f"{name} appearance"),
        description,
    )


def synthetic_tumour(
    brain: SourceBrain, seed: int, radius_mm: tuple[float, float] = (12.0, 20.0)
) -> LesionSource:
    """A synthetic tumour-like lesion inside ``brain`` (kind ``"glioma"``).

    Centre: a random brain voxel at least the largest drawn radius deep (distance to the brain
    border, mm; the deepest voxels if none is that deep). Shape: ellipsoid with radii drawn
    uniformly in ``radius_mm`` whose normalised radius ``r`` is modulated by smooth noise
    (sigma 8 mm, amplitude 0.2): lesion = ``r' <= 1`` inside the brain. Appearance: necrotic
    core ``r' <= 0.5`` at the brain's 1-5 % intensity quantiles, rim at the 8-20 %
    quantiles (hypo-intense oedema / tumour tissue), each with a smooth texture.

    Returns
    -------
    LesionSource
        On ``brain``'s grid, name ``"tumour-s<seed>"``.
    """
    rng = np.random.default_rng(int(seed))
    grid = brain.image
    spacing = np.asarray(grid.spacing, dtype=np.float64)
    inside = brain.brain_mask()
    radii = rng.uniform(radius_mm[0], radius_mm[1], size=3)
    depth = ndi.distance_transform_edt(inside, sampling=spacing)
    need = min(float(radii.max()), 0.8 * float(depth.max()))
    candidates = np.argwhere(depth >= need)
    centre = candidates[int(rng.integers(len(candidates)))]
    idx = np.indices(grid.shape, dtype=np.float64)
    r2 = sum(((idx[k] - centre[k]) * spacing[k] / radii[k]) ** 2 for k in range(3))
    noise = _smooth_noise(grid.shape, rng, 8.0 / float(spacing.mean()))
    r = np.sqrt(r2) * (1.0 + 0.2 * noise)
    mask = (r <= 1.0) & inside
    core = (r <= 0.5) & mask
    values = _brain_values(brain)
    appearance = np.array(grid.array, dtype=np.float32, copy=True)
    for region, (qlo, qhi) in ((mask & ~core, (0.08, 0.20)), (core, (0.01, 0.05))):
        if not region.any():
            continue
        lo, hi = np.quantile(values, (qlo, qhi))
        t = _smooth_noise(grid.shape, rng, 1.0)[region]
        q = (np.argsort(np.argsort(t, kind="stable"), kind="stable") + 0.5) / t.size
        appearance[region] = lo + q * (hi - lo)
    appearance[mask] = np.maximum(appearance[mask], 1e-3)
    return LesionSource(
        f"tumour-s{seed}",
        "glioma",
        Volume(mask, grid.affine, name="synthetic tumour"),
        Volume(appearance, grid.affine, name="synthetic tumour appearance"),
        f"synthetic tumour-like lesion (seed {seed}, radii {np.round(radii, 1).tolist()} mm, "
        "dark core, hypo-intense rim)",
    )


def mask_on_grid(mask: Volume, grid: Volume, threshold: float = STROKE_THRESHOLD) -> np.ndarray:
    """A 0/1 mask resampled by affine onto ``grid``: linear coverage ``> threshold``."""
    from napari_girnet.data.preprocess import resample_like

    binary = mask.with_array((np.asarray(mask.array) > 0).astype(np.float32))
    return np.asarray(resample_like(binary, grid, order=1).array) > threshold


_STROKE_RE = re.compile(r"^bwsrsub-(\d+)_lesion\.nii(\.gz)?$")


def stroke_candidates(
    folder: Path, grid: Volume, n: int, min_ml: float = 5.0
) -> list[tuple[str, np.ndarray]]:
    """The ``n`` SOOP masks with the largest indices whose volume on ``grid`` is >= ``min_ml``.

    Returns
    -------
    list of (index, mask)
        Index as in ``bwsrsub-<index>_lesion.nii.gz``; mask ``(X, Y, Z)`` bool on ``grid``.

    Raises
    ------
    FileNotFoundError
        No SOOP mask in ``folder``.
    """
    files = []
    for path in Path(folder).iterdir():
        match = _STROKE_RE.match(path.name)
        if match:
            files.append((int(match.group(1)), path))
    if not files:
        raise FileNotFoundError(f"{folder}: no bwsrsub-<N>_lesion.nii.gz stroke mask")
    voxel_ml = float(np.prod(grid.spacing)) / 1000.0
    out: list[tuple[str, np.ndarray]] = []
    for index, path in sorted(files, reverse=True):
        if len(out) >= n:
            break
        mask = mask_on_grid(read_nifti(path, name=path.name).canonical(), grid)
        if mask.sum() * voxel_ml >= min_ml:
            out.append((str(index), mask))
    return out


# --------------------------------------------------------------------------- brains
def oasis_brain(data_dir: Path, subject: str, seed: int = 0) -> SourceBrain:
    """OASIS-1 subject ``subject`` on the 2 mm MNI working grid, with its labels.

    ``<ID>_SS`` (skull-stripped T1) and ``<ID>_mask`` go through
    :func:`napari_girnet.api.prepare` (intensity normalisation, 12-DOF affine alignment to
    MNI152, resampling); ``<ID>_glm`` (Neuromorphometrics labels) follows the same alignment
    with nearest-neighbour resampling.
    """
    from napari_girnet import api
    from napari_girnet.data.preprocess import to_working_grid

    folder = Path(data_dir)
    scan = read_nifti(folder / f"{subject}_SS.nii.gz", name=f"oasis{subject}")
    mask = read_nifti(folder / f"{subject}_mask.nii.gz", name=f"oasis{subject} mask")
    labels = read_nifti(folder / f"{subject}_glm.nii.gz", name=f"oasis{subject} labels")
    atlas = api.load_atlas_for(api.resolve_config("cpu-2mm"))
    prepared = api.prepare(scan, atlas, seed=seed, mask=mask)
    lab = to_working_grid(labels.canonical(), atlas, prepared.alignment, order=0)
    lab_array = np.asarray(lab.array).astype(np.int16)
    lab_array[~np.asarray(prepared.mask.array, dtype=bool)] = 0
    return SourceBrain(
        f"oasis{subject}",
        prepared.image,
        Volume(lab_array, atlas.affine, name=f"oasis{subject} labels"),
        prepared.mask,
    )


def atlas_brain() -> SourceBrain:
    """The MNI152 2 mm atlas with the AAL parcellation drawn on Colin27 (approximate on MNI)."""
    import dataclasses

    from napari_girnet.data.synthetic import atlas_source_brain
    from napari_girnet.datasets import colin27_source_brain

    return dataclasses.replace(atlas_source_brain("2mm"), labels=colin27_source_brain().labels)


# --------------------------------------------------------------------------- building
def build_case(spec: CaseSpec, brain: SourceBrain, lesion: LesionSource) -> PseudoCase:
    """:func:`make_case` of ``brain`` and ``lesion`` with ``spec.seed`` (peak 2-8 mm)."""
    return make_case(brain, lesion, seed=spec.seed)


def spec_digest(spec: CaseSpec) -> str:
    """Short hash of the spec and :data:`CASE_VERSION` (cache key)."""
    text = json.dumps({**asdict(spec), "version": CASE_VERSION}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def save_case(folder: Path, spec: CaseSpec, case: PseudoCase, brain: SourceBrain) -> Path:
    """Write the case, its undeformed source brain and ``peers.json``."""
    write_case(case, folder)
    write_nifti(brain.image, folder / "source.nii.gz", restore_orientation=False, dtype=np.float32)
    src_mask = brain.image.with_array(brain.brain_mask().astype(np.uint8))
    write_nifti(src_mask, folder / "source_mask.nii.gz", restore_orientation=False)
    if brain.labels is not None:
        lab = brain.labels.with_array(np.asarray(brain.labels.array).astype(np.int16))
        write_nifti(lab, folder / "source_labels.nii.gz", restore_orientation=False)
    meta = {"spec": asdict(spec), "digest": spec_digest(spec), "manifest": case.manifest}
    (folder / "peers.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return folder


def cached(folder: Path, spec: CaseSpec) -> bool:
    """True when ``folder`` holds a complete case built from ``spec``."""
    meta = folder / "peers.json"
    if not meta.is_file() or not (folder / "source.nii.gz").is_file():
        return False
    try:
        return json.loads(meta.read_text()).get("digest") == spec_digest(spec)
    except json.JSONDecodeError:
        return False


@dataclass(frozen=True)
class LoadedCase:
    """A case read back from its folder."""

    spec: CaseSpec
    folder: Path
    case: PseudoCase
    source: Volume
    source_mask: Volume
    source_labels: Volume | None


def load_case(folder: Path) -> LoadedCase:
    """Read a case folder written by :func:`save_case`."""
    meta = json.loads((folder / "peers.json").read_text())
    labels = folder / "source_labels.nii.gz"
    src_mask = read_nifti(folder / "source_mask.nii.gz")
    return LoadedCase(
        CaseSpec(**meta["spec"]),
        folder,
        read_case(folder),
        read_nifti(folder / "source.nii.gz"),
        src_mask.with_array(np.asarray(src_mask.array) > 0),
        read_nifti(labels) if labels.is_file() else None,
    )


def build_cases(
    specs: Sequence[CaseSpec],
    cache: Path,
    oasis_dir: Path,
    strokes: dict[str, np.ndarray] | None = None,
) -> list[Path]:
    """Build (or reuse from ``cache``) every case of ``specs``; returns their folders.

    ``strokes`` maps ``spec.lesion`` names (``"stroke<N>"``) to masks on the 2 mm grid
    (:func:`stroke_candidates`); needed only for stroke cases.
    """
    from napari_girnet.datasets import lesion_library

    cache = Path(cache)
    brains: dict[str, SourceBrain] = {}
    folders = []
    for spec in specs:
        folder = cache / spec.name
        folders.append(folder)
        if cached(folder, spec):
            log.info("reusing %s", folder)
            continue
        if spec.brain not in brains:
            brains[spec.brain] = (
                atlas_brain()
                if spec.brain == "mni152"
                else oasis_brain(oasis_dir, spec.brain.removeprefix("oasis"))
            )
        brain = brains[spec.brain]
        if spec.kind == "tumour":
            lesion = synthetic_tumour(brain, spec.seed)
        elif spec.kind == "ms":
            lesion = next(s for s in lesion_library(("ms",)) if s.name == spec.lesion)
        else:
            if strokes is None or spec.lesion not in strokes:
                raise ValueError(f"{spec.name}: no stroke mask {spec.lesion!r} given")
            lesion = dark_lesion(
                brain,
                strokes[spec.lesion],
                spec.lesion,
                "glioma",
                spec.seed,
                description=f"SOOP stroke mask bwsrsub-{spec.lesion[6:]}, dark (CSF-like) fill",
            )
        log.info("building %s", spec.name)
        save_case(folder, spec, build_case(spec, brain, lesion), brain)
    return folders
