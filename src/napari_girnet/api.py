"""The Python API shared by the napari widgets, the ``girnet`` CLI and scripts.

Typical use::

    import napari_girnet as ng

    result = ng.register("scan.nii.gz")            # affine + GIRNet, bundled model, fine-tuned
    result.save("out/")                            # NIfTI outputs on the scan's own grid + report
    print(result.metrics)

    session = ng.fit(["a.nii.gz", "b.nii.gz"], config="cpu-2mm", checkpoint_dir="run/")
    for report in session:                         # one TrainingReport per co-learning step
        print(report.step, report.phase, report.loss)

Inputs (``ScanLike``) are :class:`~napari_girnet.data.volume.Volume` objects, NIfTI paths, or
``(array, affine)`` pairs (array indexed like the affine, e.g. napari layer data transposed back
to the file's axes). Everything here runs without Qt or napari.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._version import __version__
from .core.checkpoint import Checkpoint, file_sha256
from .core.colearn import CoLearner, PairSampler, TrainingReport
from .core.config import GIRNetConfig, preset
from .core.model import GIRNet, Prediction
from .core.runtime import resolve_runtime, seed_everything
from .core.spatial import warp
from .data.atlas import Atlas, load_atlas
from .data.fields import atlas_to_scan_fields, scan_to_atlas_field
from .data.nifti import read_nifti, write_displacement, write_nifti
from .data.preprocess import PreparedScan, prepare_scan
from .data.volume import Volume, VolumeError
from .evaluation import metrics

__all__ = [
    "FitSession",
    "RegistrationResult",
    "as_volume",
    "bundled_model_path",
    "evaluate",
    "fit",
    "load_atlas_for",
    "prepare",
    "refine_on_grid",
    "register",
    "resolve_config",
]

log = logging.getLogger(__name__)

ScanLike = Volume | str | os.PathLike | tuple[np.ndarray, np.ndarray]
ModelLike = GIRNet | Checkpoint | str | os.PathLike | None


# ----------------------------------------------------------------------------- inputs
def as_volume(source: ScanLike, name: str | None = None) -> Volume:
    """Turn a path, ``Volume`` or ``(array, affine)`` pair into a canonical RAS :class:`Volume`.

    Raises
    ------
    VolumeError
        (or its subclass ``NiftiError``) naming the input, for 2D/4D data, NaN, empty arrays,
        bad affines, missing or corrupt files.
    """
    if isinstance(source, Volume):
        vol = source
    elif isinstance(source, str | os.PathLike):
        vol = read_nifti(source, name=name)
    elif isinstance(source, tuple) and len(source) == 2:
        array, affine = source
        vol = Volume(np.asarray(array), np.asarray(affine, dtype=np.float64), name=name or "array")
    else:
        raise VolumeError(
            f"{name or 'input'}: expected a Volume, a NIfTI path or an (array, affine) pair, "
            f"got {type(source).__name__}"
        )
    vol = vol.canonical().check_finite()
    if name and not vol.name:
        vol = Volume(vol.array, vol.affine, name, vol.source_affine, vol.meta)
    return vol


def resolve_config(config: GIRNetConfig | str | None = None, **overrides: Any) -> GIRNetConfig:
    """A validated config from a preset name (default ``"cpu-2mm"``) or a config object.

    ``overrides`` are section dicts, e.g. ``schedule={"steps": 50}``.
    """
    if config is None:
        config = "cpu-2mm"
    cfg = preset(config) if isinstance(config, str) else config.validate()
    return cfg.override(**overrides) if overrides else cfg


def load_atlas_for(config: GIRNetConfig, atlas: ScanLike | str = "mni152", seed: int = 0) -> Atlas:
    """The atlas on ``config``'s working grid.

    ``"mni152"`` is the ICBM 2009a symmetric template from nilearn. Any other skull-stripped T1
    template (path or Volume) is affinely aligned to MNI152 and resampled onto the same working
    grid, so the rest of the pipeline is unchanged.
    """
    grid_atlas = load_atlas(config.data.atlas_preset)
    if isinstance(atlas, str) and atlas.lower() in ("mni152", "mni", "default"):
        return grid_atlas
    custom = prepare_scan(as_volume(atlas, name="atlas"), grid_atlas, seed=seed)
    return Atlas(image=custom.image, mask=custom.mask, preset=f"custom:{grid_atlas.preset}")


def prepare(
    scan: ScanLike,
    atlas: Atlas | None = None,
    config: GIRNetConfig | str | None = None,
    *,
    seed: int = 0,
    mask: ScanLike | None = None,
    name: str | None = None,
) -> PreparedScan:
    """Brain mask, intensity normalisation, affine alignment and resampling to the working grid."""
    cfg = resolve_config(config)
    atlas = atlas or load_atlas_for(cfg)
    vol = as_volume(scan, name=name)
    mask_vol = as_volume(mask, name="mask") if mask is not None else None
    if mask_vol is not None:
        mask_vol = mask_vol.with_array(np.asarray(mask_vol.array) > 0)
    return prepare_scan(vol, atlas, seed=seed, mask=mask_vol)


def _tensor(volume: Volume) -> torch.Tensor:
    """``(1, X, Y, Z)`` float32 tensor of a working-grid volume."""
    return torch.from_numpy(np.array(volume.array, dtype=np.float32, copy=True))[None]


def _training_items(
    images: Sequence[torch.Tensor], atlas: torch.Tensor, ndim: int, min_brain: float = 0.05
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Scans and atlases as network inputs: whole volumes (3D) or axial slices (2D).

    2D keeps slices where both scan and atlas have at least ``min_brain`` brain voxels.
    """
    if ndim == 3:
        return list(images), [atlas] * len(images)
    scans, atlases = [], []
    for img in images:
        for z in range(img.shape[-1]):
            s, a = img[..., z], atlas[..., z]
            if (s > 0).float().mean() >= min_brain and (a > 0).float().mean() >= min_brain:
                scans.append(s)
                atlases.append(a)
    if not scans:
        raise ValueError("no axial slice contains enough brain for 2D training")
    return scans, atlases


def pseudo_case_images(
    atlas: Atlas, n: int, seed: int, exclude: Sequence[str] = ()
) -> list[torch.Tensor]:
    """``n`` pseudo-pathological scans built on the fly from the bundled real lesions.

    Healthy brains: Colin27 and the atlas itself, each under a random smooth diffeomorphism;
    lesions: the bundled real MS and glioma masks with their patients' intensities
    (histogram-matched), excluding sources named in ``exclude``. Only available on the bundled
    2 mm grid (other grids resample the 2 mm cases).
    """
    from .data.preprocess import resample_like
    from .data.synthetic import SourceBrain, atlas_source_brain, make_case
    from .datasets import lesion_library, load_colin27

    if n <= 0:
        return []
    colin, aal = load_colin27()
    brains = [SourceBrain("colin27", colin, aal), atlas_source_brain("2mm")]
    lesions = lesion_library(exclude=exclude)
    if not lesions:
        raise ValueError("no lesion source left after exclusions")
    rng = np.random.default_rng(seed)
    images: list[torch.Tensor] = []
    attempts = 0
    while len(images) < n:
        attempts += 1
        if attempts > 20 * n:
            raise RuntimeError("could not place enough lesions inside the healthy brains")
        brain = brains[int(rng.integers(len(brains)))]
        lesion = lesions[int(rng.integers(len(lesions)))]
        try:
            case = make_case(brain, lesion, seed=int(rng.integers(2**31)))
        except ValueError:
            continue
        scan = case.scan
        if not scan.same_grid(atlas.image):
            scan = resample_like(scan, atlas.image, order=1)
        images.append(_tensor(scan))
    return images


# ----------------------------------------------------------------------------- models
def bundled_model_path(preset_name: str) -> Path | None:
    """Path of the pretrained weights shipped for a preset, or None when none is bundled."""
    path = Path(__file__).parent / "weights" / f"{preset_name}.pt"
    return path if path.is_file() else None


_RANDOM_MODEL = "randomly initialised (no bundled model for this preset)"


def _load_model(model: ModelLike, cfg: GIRNetConfig) -> tuple[GIRNet, str | None, str]:
    """(model, sha256 of the checkpoint or None, description)."""
    if isinstance(model, GIRNet):
        return model, None, "in-memory model"
    if model is None:
        path = bundled_model_path(cfg.preset)
        if path is None:
            seed_everything(cfg.runtime.seed)
            return GIRNet(cfg), None, _RANDOM_MODEL
        model = path
    if isinstance(model, Checkpoint):
        return GIRNet.from_checkpoint(model), None, "checkpoint object"
    path = Path(model)
    if path.is_dir():
        path = path / "last.pt"
    return GIRNet.from_checkpoint(path), file_sha256(path), str(path)


# ----------------------------------------------------------------------------- fit
class FitSession:
    """A co-learning run: iterate it for :class:`TrainingReport` s; stop it from any thread.

    Created by :func:`fit`. ``for report in session: ...`` drives training; ``session.run()``
    drives it to the end; ``session.request_stop()`` ends it at the next step with a checkpoint.
    """

    def __init__(self, learner: CoLearner, prepared: list[PreparedScan], atlas: Atlas) -> None:
        self.learner = learner
        self.prepared = prepared
        self.atlas = atlas

    @property
    def model(self) -> GIRNet:
        return self.learner.model

    @property
    def config(self) -> GIRNetConfig:
        return self.learner.config

    @property
    def checkpoint(self) -> Path | None:
        """Last checkpoint written (None before the first one or without a checkpoint folder)."""
        return self.learner.last_checkpoint

    def __iter__(self) -> Iterator[TrainingReport]:
        return self.learner.steps()

    def request_stop(self) -> None:
        self.learner.request_stop()

    def preview_volumes(self, prediction: Prediction, index: int = 0) -> dict[str, Any]:
        """Map a (working-grid) preview prediction of scan ``index`` onto its native grid.

        Returns the same keys as the volumes of :class:`RegistrationResult` (``lesion_probability``,
        ``lesion_mask``, ``inpainted``, ``atlas_to_scan``, ``jacobian``, ``scan_to_atlas``,
        ``field_atlas_to_scan``, ``field_scan_to_atlas``). Costs about a second at 2 mm; call it
        in the worker thread.
        """
        p = self.prepared[index]
        return _map_back(prediction, p, self.atlas, p.native)

    def run(self, progress: Callable[[TrainingReport], None] | None = None) -> TrainingReport:
        """Train to the end (or until stopped); returns the final report."""
        last = None
        for last in self:
            if progress is not None:
                progress(last)
        assert last is not None
        return last


def fit(
    scans: Sequence[ScanLike | PreparedScan],
    atlas: ScanLike | str | Atlas = "mni152",
    config: GIRNetConfig | str | None = None,
    *,
    checkpoint_dir: str | os.PathLike | None = None,
    init: ModelLike = None,
    resume: bool = True,
    pseudo_cases: int = 0,
    exclude_lesions: Sequence[str] = (),
    steps: int | None = None,
    seed: int | None = None,
    device: str | None = None,
    preview: bool = True,
) -> FitSession:
    """Set up GIRNet co-learning on one or more scans.

    Parameters
    ----------
    scans : sequence
        Skull-stripped T1 scans (paths, Volumes, (array, affine) pairs) or already prepared
        scans (:func:`prepare`).
    atlas : "mni152", path, Volume or Atlas
    config : preset name or GIRNetConfig (default ``"cpu-2mm"``).
    checkpoint_dir : path, optional
        ``last.pt`` is written there; if it already holds one and ``resume`` is true, training
        continues from it (a second Start resumes).
    init : model, checkpoint or path, optional
        Initial weights (e.g. the bundled pretrained model; default: random).
    pseudo_cases : int
        Number of pseudo-pathological cases (bundled real lesions in healthy brains) mixed into
        the training scans; they give the segmenter many lesion examples and keep the inpainter
        from memorising a single scan.
    exclude_lesions : sequence of str
        Lesion sources to leave out of the pseudo cases (e.g. the scan's own lesion).
    steps, seed, device : optional overrides of ``config``.

    Returns
    -------
    FitSession
    """
    over: dict[str, dict[str, Any]] = {}
    if steps is not None:
        over["schedule"] = {"steps": int(steps)}
    rt: dict[str, Any] = {}
    if seed is not None:
        rt["seed"] = int(seed)
    if device is not None:
        rt["device"] = device
    if rt:
        over["runtime"] = rt
    cfg = resolve_config(config, **over)
    seed_value = cfg.runtime.seed
    atlas_obj = atlas if isinstance(atlas, Atlas) else load_atlas_for(cfg, atlas, seed_value)
    prepared = [
        s if isinstance(s, PreparedScan) else prepare(s, atlas_obj, cfg, seed=seed_value)
        for s in scans
    ]
    if not prepared and pseudo_cases <= 0:
        raise ValueError("fit needs at least one scan or pseudo_cases > 0")
    images = [_tensor(p.image) for p in prepared]
    images += pseudo_case_images(atlas_obj, pseudo_cases, seed_value, exclude_lesions)
    atlas_t = _tensor(atlas_obj.image)
    items, atlas_items = _training_items(images, atlas_t, cfg.data.ndim)
    sampler = PairSampler(items, atlas_items, batch_size=cfg.schedule.batch_size, seed=seed_value)
    preview_pair = None
    if preview and prepared:
        preview_pair = (images[0][None], atlas_t[None])  # whole volume, also for 2D networks
    provenance = {
        "inputs": [p.native.name for p in prepared],
        "pseudo_cases": pseudo_cases,
        "excluded_lesions": list(exclude_lesions),
        "atlas": atlas_obj.preset,
    }
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    last = ckpt_dir / "last.pt" if ckpt_dir is not None else None
    if resume and last is not None and last.is_file():
        log.info("resuming from %s", last)
        learner = CoLearner.resume(
            last,
            sampler,
            config=cfg,
            checkpoint_dir=ckpt_dir,
            preview_pair=preview_pair,
            provenance=provenance,
        )
    else:
        model, sha, desc = _load_model(init, cfg) if init is not None else (None, None, "random")
        if model is None:
            seed_everything(seed_value)
            model = GIRNet(cfg)
        elif model.config.net != cfg.net or model.ndim != cfg.data.ndim:
            raise ValueError(f"initial model ({desc}) does not match the configured networks")
        provenance["init"] = {"source": desc, "sha256": sha}
        learner = CoLearner(
            model,
            sampler,
            cfg,
            checkpoint_dir=ckpt_dir,
            preview_pair=preview_pair,
            provenance=provenance,
        )
    return FitSession(learner, prepared, atlas_obj)


# ----------------------------------------------------------------------------- register
@dataclass
class RegistrationResult:
    """Everything :func:`register` produces, on the scan's native grid and on the atlas grid.

    Native-grid volumes (same grid and affine as the input scan; ``source_affine`` restores the
    file's voxel order on writing): ``lesion_probability`` (float32 [0, 1]), ``lesion_mask``
    (uint8 0/1), ``inpainted`` (the scan with the lesion replaced by healthy tissue, in the
    scan's own intensity units), ``atlas_to_scan`` (atlas deformed onto the scan, [0, 1]) and
    ``jacobian`` (det J of the non-linear atlas-to-scan map). Atlas-grid volume:
    ``scan_to_atlas``. Fields (RAS mm, ``(3, X, Y, Z)``): ``field_atlas_to_scan`` on the native
    scan grid (native point ``x`` corresponds to atlas point ``x + d(x)``) and
    ``field_scan_to_atlas`` on the atlas working grid (atlas point ``y`` corresponds to scan
    point ``y + d(y)``), and ``field_nonlinear`` on the native grid: GIRNet's non-linear
    displacement alone, in the scan's world (what the deformation vectors show).
    """

    scan: Volume
    atlas: Atlas
    prepared: PreparedScan
    prediction: Prediction
    lesion_probability: Volume
    lesion_mask: Volume
    inpainted: Volume
    atlas_to_scan: Volume
    jacobian: Volume
    scan_to_atlas: Volume
    field_atlas_to_scan: np.ndarray
    field_scan_to_atlas: np.ndarray
    field_nonlinear: np.ndarray
    config: GIRNetConfig
    checkpoint: Path | None
    provenance: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)

    def report(self) -> dict[str, Any]:
        """JSON-serialisable summary: timings, config, seed, versions, metrics, conventions."""
        vol_mm3 = metrics.volume_mm3(self.lesion_mask.array > 0, self.scan.spacing)
        return {
            "scan": self.scan.name,
            "napari_girnet_version": __version__,
            "torch_version": torch.__version__,
            "python": platform.python_version(),
            "seed": self.config.runtime.seed,
            "preset": self.config.preset,
            "config": self.config.to_dict(),
            "checkpoint": str(self.checkpoint) if self.checkpoint else None,
            "provenance": self.provenance,
            "timings_s": {k: round(v, 3) for k, v in self.timings.items()},
            "lesion_volume_mm3": vol_mm3,
            "alignment": {
                "atlas_world_to_scan_world_ras": np.asarray(
                    self.prepared.alignment.matrix
                ).tolist(),
                "metric": self.prepared.alignment.metric_value,
            },
            "metrics": self.metrics,
            "training": self.history[-1] if self.history else None,
            "conventions": {
                "volumes": "lesion_probability, lesion_mask, inpainted, atlas_to_scan and jacobian "
                "are on the input scan's grid and affine; scan_to_atlas is on the atlas working "
                "grid (MNI152 ICBM 2009a symmetric, RAS mm)",
                "fields": "ITK/ANTs displacement fields (5D NIfTI, intent VECTOR, LPS mm): "
                "field_atlas_to_scan.nii.gz lives on the scan grid and maps scan points to atlas "
                "points (antsApplyTransforms -i atlas -r scan -t field_atlas_to_scan.nii.gz); "
                "field_scan_to_atlas.nii.gz lives on the atlas grid and maps atlas points to "
                "scan points",
                "jacobian": "determinant of the Jacobian of the non-linear atlas-to-scan map "
                "(after the affine alignment); <= 0 marks folding",
            },
        }

    def save(self, out_dir: str | os.PathLike) -> dict[str, Path]:
        """Write the NIfTI outputs and ``report.json`` into ``out_dir``; returns the paths."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {
            "lesion_probability": write_nifti(
                self.lesion_probability, out / "lesion_probability.nii.gz"
            ),
            "lesion_mask": write_nifti(self.lesion_mask, out / "lesion_mask.nii.gz"),
            "inpainted": write_nifti(self.inpainted, out / "inpainted.nii.gz"),
            "atlas_to_scan": write_nifti(self.atlas_to_scan, out / "atlas_to_scan.nii.gz"),
            "scan_to_atlas": write_nifti(self.scan_to_atlas, out / "scan_to_atlas.nii.gz"),
            "jacobian": write_nifti(self.jacobian, out / "jacobian.nii.gz"),
        }
        native_vox = _mm_to_vox(self.field_atlas_to_scan, self.scan.affine)
        paths["field_atlas_to_scan"] = write_displacement(
            out / "field_atlas_to_scan.nii.gz", native_vox, self.scan, convention="itk"
        )
        atlas_vox = _mm_to_vox(self.field_scan_to_atlas, self.atlas.image.affine)
        paths["field_scan_to_atlas"] = write_displacement(
            out / "field_scan_to_atlas.nii.gz", atlas_vox, self.atlas.image, convention="itk"
        )
        report = self.report()
        report["files"] = {k: p.name for k, p in paths.items()}
        report_path = out / "report.json"
        report_path.write_text(json.dumps(_jsonable(report), indent=2, sort_keys=True))
        paths["report"] = report_path
        return paths


def _mm_to_vox(field_mm: np.ndarray, affine: np.ndarray) -> np.ndarray:
    inv = np.linalg.inv(np.asarray(affine)[:3, :3])
    return np.einsum("ij,j...->i...", inv, field_mm).astype(np.float32)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def register(
    scan: ScanLike,
    atlas: ScanLike | str | Atlas = "mni152",
    model: ModelLike = None,
    *,
    config: GIRNetConfig | str | None = None,
    fine_tune_steps: int | None = None,
    instance_steps: int | None = None,
    pseudo_cases: int | None = None,
    exclude_lesions: Sequence[str] = (),
    seed: int = 0,
    device: str | None = None,
    truth: ScanLike | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    refine: bool | None = None,
    detector: str | None = None,
    inference: dict[str, Any] | None = None,
    progress: Callable[[TrainingReport], None] | None = None,
) -> RegistrationResult:
    """Register a pathological scan to the atlas, find and inpaint its lesion.

    Pipeline: brain mask -> intensity normalisation -> affine alignment to the atlas ->
    GIRNet (optionally fine-tuned on this scan by co-learning, mixed with pseudo-pathological
    cases) -> instance optimisation of the registration with GIRNet's loss ->
    results mapped back to the scan's own grid and to the atlas grid.

    Parameters
    ----------
    scan : path, Volume or (array, affine)
        Skull-stripped T1.
    atlas : "mni152", path, Volume or Atlas
    model : GIRNet, checkpoint or path, optional
        Default: the pretrained model bundled for the preset (random weights if none).
    config : preset name or GIRNetConfig (default ``"cpu-2mm"``, or the model's config).
    fine_tune_steps : int, optional
        Co-learning steps on this scan before prediction (default:
        ``config.schedule.fine_tune_steps``; 0 = apply the model as is).
    instance_steps : int, optional
        Instance-optimisation steps refining the registration of this scan (default:
        ``config.schedule.instance_steps``; 0 = RegNet's prediction as is; 3D only).
    pseudo_cases : int, optional
        Pseudo-pathological cases mixed into fine-tuning (default 8 when fine-tuning).
    truth : path/Volume, optional
        Ground-truth lesion mask on the scan's grid: adds ``dice``, ``hd95_mm`` to ``metrics``.
    refine : bool, optional
        Random-walker refinement of the mask (GIRNet's "PP"); default ``config.inference.refine``.
    detector : {"auto", "segnet", "atlas-outlier"}, optional
        Source of the lesion mask (default ``config.inference.detector``, see
        :class:`~napari_girnet.core.config.InferenceConfig`): SegNet's mask, or the scan's
        departure from the histogram-matched atlas (used by ``"auto"`` when SegNet's mask is
        empty or implausibly large, as with an untrained model).
    inference : dict, optional
        Other overrides of ``config.inference``, e.g. ``{"outlier_polarity": "hyper"}`` for
        contrast-enhanced T1 or FLAIR, ``{"outlier_min_volume_mm3": 1000}``.
    progress : callable, optional
        Called with every :class:`TrainingReport` of the fine-tuning.

    Raises
    ------
    VolumeError, PreprocessError, CheckpointError, ConfigError
        For bad inputs, with a message naming the input and the problem.
    """
    t_total = time.perf_counter()
    timings: dict[str, float] = {}
    net, sha, desc = _load_model(model, resolve_config(config))
    cfg = net.config if config is None else resolve_config(config)
    if cfg.net != net.config.net or cfg.data.ndim != net.config.data.ndim:
        raise ValueError(f"the model ({desc}) does not match preset {cfg.preset!r}")
    over: dict[str, Any] = {"seed": int(seed)}
    if device is not None:
        over["device"] = device
    cfg = cfg.override(runtime=over)
    inf_over = dict(inference or {})
    if detector is not None:
        inf_over["detector"] = detector
    if inf_over:
        cfg = cfg.override(inference=inf_over)
    steps = cfg.schedule.fine_tune_steps if fine_tune_steps is None else int(fine_tune_steps)
    cfg = cfg.override(schedule={"steps": steps, "pretrain_inp_steps": 0})

    t0 = time.perf_counter()
    scan_vol = as_volume(scan, name=str(scan) if isinstance(scan, str | os.PathLike) else None)
    atlas_obj = atlas if isinstance(atlas, Atlas) else load_atlas_for(cfg, atlas, seed)
    prepared = prepare_scan(scan_vol, atlas_obj, seed=seed)
    truth_vol = as_volume(truth, name="truth") if truth is not None else None
    if truth_vol is not None and not truth_vol.same_grid(scan_vol):
        raise VolumeError(
            f"truth mask grid {truth_vol.shape} does not match the scan grid {scan_vol.shape}"
        )
    timings["prepare_s"] = time.perf_counter() - t0

    history: list[dict[str, Any]] = []
    ckpt_path: Path | None = None
    if steps > 0:
        t0 = time.perf_counter()
        n_pseudo = 8 if pseudo_cases is None else int(pseudo_cases)
        session = fit(
            [prepared],
            atlas_obj,
            cfg,
            checkpoint_dir=checkpoint_dir,
            init=net,
            resume=False,
            pseudo_cases=n_pseudo,
            exclude_lesions=exclude_lesions,
            preview=False,
        )
        for rep in session:
            if not rep.is_final:
                history.append({"step": rep.step, "phase": rep.phase, "loss": rep.loss})
            if progress is not None:
                progress(rep)
        net = session.model
        ckpt_path = session.checkpoint
        timings["fine_tune_s"] = time.perf_counter() - t0

    runtime = resolve_runtime(cfg.runtime)
    net.to(runtime.device)
    scan_t = _tensor(prepared.image)[None].to(runtime.device)
    atlas_t = _tensor(atlas_obj.image)[None].to(runtime.device)
    brain_t = torch.from_numpy(np.asarray(prepared.mask.array, dtype=bool))[None, None]
    brain_t = brain_t.to(runtime.device)
    icfg = cfg.inference
    untrained = desc == _RANDOM_MODEL
    fill_mode = icfg.fill if icfg.fill != "auto" else ("atlas" if untrained else "inpnet")

    t0 = time.perf_counter()
    detection = _detect(net, scan_t, atlas_t, brain_t, prepared, cfg)
    timings["detect_s"] = time.perf_counter() - t0

    fields = None
    instance: dict[str, Any] = {}
    n_io = cfg.schedule.instance_steps if instance_steps is None else int(instance_steps)
    if n_io > 0 and net.ndim == 3:
        t0 = time.perf_counter()
        with torch.no_grad():
            guide = warp(atlas_t, net.register(scan_t, atlas_t).phi_ts)
            target = _fill(net, scan_t, detection.mask, guide, brain_t, fill_mode)
        fields, instance = _instance_optimise(net, scan_t, atlas_t, cfg, n_io, target, detection)
        timings["instance_s"] = time.perf_counter() - t0
        if detection.source == "atlas-outlier" and icfg.outlier_passes == 2:
            t0 = time.perf_counter()
            with torch.no_grad():
                warped = warp(atlas_t, fields.phi_ts)
            detection = _outlier_detection(
                scan_t,
                warped,
                brain_t,
                prepared,
                cfg,
                detection.info,
                reference="atlas registered to the scan with the first-pass mask filled",
            )
            timings["detect_s"] += time.perf_counter() - t0
    t0 = time.perf_counter()
    pred = net.predict_volume(scan_t, atlas_t, autocast=runtime.autocast, fields=fields)
    with torch.no_grad():
        pred = replace(
            pred,
            lesion_probability=detection.probability,
            lesion_mask=detection.mask,
            inpainted=_fill(net, scan_t, detection.mask, pred.atlas_to_scan, brain_t, fill_mode),
        )
    pred = pred.to("cpu")
    timings["predict_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    do_refine = icfg.refine if refine is None else bool(refine)
    refine_info: dict[str, Any] = {"refine": "off", "growth": 1.0}
    if do_refine:
        refined, refine_info = refine_on_grid(
            prepared, pred.lesion_mask[0, 0].numpy(), icfg.refine_max_growth
        )
        pred = replace(pred, lesion_mask=torch.from_numpy(refined)[None, None])
    result = _map_back(pred, prepared, atlas_obj, scan_vol)
    timings["map_back_s"] = time.perf_counter() - t0
    result_metrics: dict[str, Any] = {}
    if truth_vol is not None:
        result_metrics = _mask_metrics(result["lesion_mask"], truth_vol, scan_vol.spacing)
    timings["total_s"] = time.perf_counter() - t_total
    return RegistrationResult(
        scan=scan_vol,
        atlas=atlas_obj,
        prepared=prepared,
        prediction=pred,
        config=cfg,
        checkpoint=ckpt_path,
        provenance={
            "instance_optimisation": instance,
            "lesion_detection": {
                **detection.info,
                "fill": fill_mode,
                "refine": do_refine,
                "refine_result": refine_info["refine"],
                "refine_growth": refine_info["growth"],
            },
            "model": desc,
            "model_sha256": sha,
            "fine_tune_steps": steps,
            "device": str(runtime.device),
            "precision": runtime.precision,
        },
        metrics=result_metrics,
        timings=timings,
        history=history,
        **result,
    )


@dataclass(frozen=True)
class _Detection:
    """A lesion mask on the working grid and where it came from."""

    probability: torch.Tensor  # (1, 1, *S) float in [0, 1]
    mask: torch.Tensor  # (1, 1, *S) bool
    source: str  # "segnet" or "atlas-outlier"
    info: dict[str, Any]


def _matched_atlas(
    atlas_on_scan: torch.Tensor, scan_t: torch.Tensor, reference_mask: torch.Tensor
) -> torch.Tensor:
    """``T^M``: the atlas on the scan, histogram-matched to the scan inside ``reference_mask``."""
    from .core.similarity import histogram_match

    with torch.no_grad():
        return histogram_match(
            atlas_on_scan.float(),
            scan_t.float(),
            source_mask=atlas_on_scan > 0,
            reference_mask=reference_mask,
        )


def _detect(
    net: GIRNet,
    scan_t: torch.Tensor,
    atlas_t: torch.Tensor,
    brain_t: torch.Tensor,
    prepared: PreparedScan,
    cfg: GIRNetConfig,
) -> _Detection:
    """First-pass lesion mask: SegNet's, or the atlas outlier against the affine atlas.

    ``cfg.inference.detector`` chooses; ``"auto"`` takes SegNet's mask when it is plausible.
    """
    icfg = cfg.inference
    brain = brain_t.bool()
    with torch.no_grad():
        prob = net.segment(scan_t).float()
    seg_mask = (prob > cfg.loss.mask_threshold) & brain
    frac = float(seg_mask.sum()) / max(int(brain.sum()), 1)
    plausible = 0.0 < frac < icfg.max_mask_fraction
    source = icfg.detector
    if source == "auto":
        source = "segnet" if plausible else "atlas-outlier"
    info: dict[str, Any] = {"segnet_mask_fraction_of_brain": frac, "source": source}
    if source == "segnet":
        info["reason"] = "SegNet mask" if plausible else "SegNet mask (forced; implausible)"
        return _Detection(prob * brain, seg_mask, "segnet", info)
    info["reason"] = (
        "requested" if icfg.detector == "atlas-outlier" else "SegNet mask empty or implausible"
    )
    return _outlier_detection(
        scan_t, atlas_t, brain_t, prepared, cfg, info, reference="affine atlas"
    )


def _outlier_detection(
    scan_t: torch.Tensor,
    atlas_on_scan: torch.Tensor,
    brain_t: torch.Tensor,
    prepared: PreparedScan,
    cfg: GIRNetConfig,
    info: dict[str, Any],
    reference: str,
) -> _Detection:
    """The atlas outlier (``cfg.inference``) against ``atlas_on_scan``; ``info`` is extended."""
    from .evaluation.outlier import atlas_outlier_mask

    icfg = cfg.inference
    brain = brain_t.bool()
    healthy = _matched_atlas(atlas_on_scan, scan_t, brain) * brain
    res = atlas_outlier_mask(
        scan_t[0, 0].cpu().numpy(),
        healthy[0, 0].cpu().numpy(),
        brain[0, 0].cpu().numpy(),
        tuple(float(s) for s in prepared.image.spacing),
        smoothing_mm=icfg.outlier_smoothing_mm,
        affine=np.asarray(prepared.image.affine) if icfg.outlier_asymmetry else None,
        k_mad=icfg.outlier_k_mad,
        k_asym=icfg.outlier_k_asym,
        min_contrast=icfg.outlier_min_contrast,
        polarity=icfg.outlier_polarity,
        largest_only=icfg.outlier_largest_only,
        min_volume_mm3=icfg.outlier_min_volume_mm3,
        hysteresis=icfg.outlier_hysteresis,
    )
    mask = torch.from_numpy(res.mask)[None, None].to(scan_t.device)
    probability = torch.from_numpy(res.probability)[None, None].to(scan_t.device)
    info = {
        **info,
        "source": "atlas-outlier",
        "reference": reference,
        "threshold": res.threshold,
        "asymmetry_threshold": res.asymmetry_threshold,
        "components": res.components,
        "mask_fraction_of_brain": float(mask.sum()) / max(int(brain.sum()), 1),
    }
    return _Detection(probability.float(), mask, "atlas-outlier", info)


def _fill(
    net: GIRNet,
    scan_t: torch.Tensor,
    mask: torch.Tensor,
    atlas_warped: torch.Tensor,
    brain_t: torch.Tensor,
    mode: str,
) -> torch.Tensor:
    """The scan with ``mask`` filled by InpNet (``"inpnet"``) or by ``T^M`` (``"atlas"``)."""
    m = mask.float()
    if not bool(mask.any()):
        return scan_t.clone()
    if mode == "inpnet":
        with torch.no_grad():
            return net.inpaint(scan_t, m, atlas_warped, keep_outside=True)
    healthy = _matched_atlas(atlas_warped, scan_t, brain_t.bool() & ~mask.bool())
    return scan_t * (1 - m) + healthy * m


def _instance_optimise(
    net: GIRNet,
    scan_t: torch.Tensor,
    atlas_t: torch.Tensor,
    cfg: GIRNetConfig,
    steps: int,
    target: torch.Tensor,
    detection: _Detection,
) -> tuple[Any, dict[str, Any]]:
    """Refine the registration of this scan (``core.instance``) against ``target``.

    The target is GIRNet's inpainted scan: the detected lesion filled with healthy tissue and
    the original tissue kept outside, so the atlas is not pulled into the lesion. An empty mask
    leaves the raw scan.
    """
    from .core.instance import refine_registration

    res = refine_registration(
        net, scan_t, atlas_t, steps=steps, lr=cfg.schedule.instance_lr, target=target
    )
    info = {
        "steps": steps,
        "lr": cfg.schedule.instance_lr,
        "target": "inpainted scan" if bool(detection.mask.any()) else "raw scan (empty mask)",
        "mask_source": detection.source,
        "loss_before": res.loss_before,
        "loss_after": res.loss_after,
    }
    return res.fields, info


def refine_on_grid(
    prepared: PreparedScan, mask: np.ndarray, max_growth: float = 2.0
) -> tuple[np.ndarray, dict[str, Any]]:
    """GIRNet's random-walker post-processing of a working-grid mask (``(X, Y, Z)`` bool).

    Runs on the working grid, where GIRNet predicts (the reference's settings are in voxels),
    on the normalised scan. The random walker has no shape prior: where the mask sits in tissue
    with weak edges it can flood a whole region (measured: a 7.6 mL false candidate on the
    healthy Colin27 became 62 mL). A refinement that grows the mask more than ``max_growth``
    times is therefore rejected and the mask kept. An empty mask is returned unchanged.

    Returns
    -------
    mask : numpy.ndarray
        Refined (or unchanged) bool mask.
    info : dict
        ``{"refine": "accepted" | "rejected" | "skipped (empty mask)", "growth": float}``.
    """
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return mask, {"refine": "skipped (empty mask)", "growth": 1.0}
    from .evaluation.postprocess import random_walker_refine

    grid_brain = np.asarray(prepared.mask.array, dtype=bool)
    image = np.asarray(prepared.image.array, dtype=np.float32)
    refined = random_walker_refine(image, mask.astype(np.float32), threshold=0.5) & grid_brain
    growth = float(refined.sum()) / float(mask.sum())
    if growth > max_growth:
        log.warning(
            "random-walker refinement grew the mask %.1fx (limit %.1fx): kept the unrefined mask",
            growth,
            max_growth,
        )
        return mask, {"refine": "rejected", "growth": growth}
    return refined, {"refine": "accepted", "growth": growth}


def _map_back(
    pred: Prediction, prepared: PreparedScan, atlas: Atlas, scan: Volume
) -> dict[str, Any]:
    """Working-grid prediction -> native-grid volumes, atlas-grid volume, world-mm fields."""
    grid = atlas.image

    def on_grid(t: torch.Tensor, name: str) -> Volume:
        return grid.with_array(t[0, 0].numpy().astype(np.float32), name=name)

    prob = prepared.to_native(on_grid(pred.lesion_probability, "lesion_probability"), order=1)
    brain = prepared.native_mask.array.astype(bool)
    prob_arr = np.where(brain, prob.array, 0.0).astype(np.float32)
    mask_grid = on_grid(pred.lesion_mask.float(), "lesion_mask")
    mask_arr = (prepared.to_native(mask_grid, order=1).array > 0.5) & brain
    inpainted_norm = prepared.to_native(on_grid(pred.inpainted, "inpainted"), order=1).array
    native = scan.array.astype(np.float32)
    lo, hi = _intensity_range(native, brain)
    inpainted = np.where(mask_arr, inpainted_norm * (hi - lo) + lo, native).astype(np.float32)
    a2s = prepared.to_native(on_grid(pred.atlas_to_scan, "atlas_to_scan"), order=1)
    jac = prepared.to_native(on_grid(pred.jacobian, "jacobian"), order=1)
    phi_ts = pred.phi_ts[0].numpy()
    phi_st = pred.phi_st[0].numpy()
    matrix = np.asarray(prepared.alignment.matrix)
    full, nonlinear = atlas_to_scan_fields(phi_ts, grid, scan, matrix)
    return {
        "lesion_probability": prob.with_array(prob_arr, name="lesion_probability"),
        "lesion_mask": prob.with_array(mask_arr.astype(np.uint8), name="lesion_mask"),
        "inpainted": prob.with_array(inpainted, name="inpainted"),
        "atlas_to_scan": a2s.with_array(a2s.array.astype(np.float32), name="atlas_to_scan"),
        "jacobian": jac.with_array(
            np.where(jac.array == 0, 1.0, jac.array).astype(np.float32), name="jacobian"
        ),
        "scan_to_atlas": on_grid(pred.scan_to_atlas, "scan_to_atlas"),
        "field_atlas_to_scan": full,
        "field_nonlinear": nonlinear,
        "field_scan_to_atlas": scan_to_atlas_field(phi_st, grid, matrix),
    }


def _intensity_range(native: np.ndarray, brain: np.ndarray) -> tuple[float, float]:
    """The (0.5, 99.5) percentile range used to normalise the scan inside the brain."""
    vals = native[brain] if brain.any() else native.ravel()
    lo, hi = np.percentile(vals, [0.5, 99.5])
    return float(lo), float(hi)


def _mask_metrics(pred: Volume, truth: Volume, spacing: np.ndarray) -> dict[str, Any]:
    p = np.asarray(pred.array) > 0
    t = np.asarray(truth.array) > 0
    return {
        "dice": metrics.dice(p, t),
        "hd95_mm": metrics.hd95(p, t, spacing),
        "truth_volume_mm3": metrics.volume_mm3(t, spacing),
        "predicted_volume_mm3": metrics.volume_mm3(p, spacing),
    }


# ----------------------------------------------------------------------------- evaluate
def evaluate(
    *,
    pred: ScanLike | None = None,
    truth: ScanLike | None = None,
    landmarks_moving: str | os.PathLike | None = None,
    landmarks_fixed: str | os.PathLike | None = None,
    field: str | os.PathLike | None = None,
    labels: bool = False,
) -> dict[str, Any]:
    """Dice / HD95 of a predicted mask and/or TRE of landmark pairs.

    Parameters
    ----------
    pred, truth : path, Volume or (array, affine)
        Masks (nonzero = foreground) on the same grid. With ``labels=True`` they are label maps
        and a per-label Dice is added (``dice_per_label``, mean over labels present in truth).
    landmarks_moving, landmarks_fixed : path
        Landmark CSVs (BraTS-Reg ``Landmark,X,Y,Z`` LPS or ``id,x,y,z`` RAS), paired by id.
    field : path, optional
        Displacement field NIfTI (ITK or girnet voxel convention) defined on the fixed grid and
        mapping fixed points to moving points (e.g. ``field_atlas_to_scan.nii.gz`` with the
        scan as fixed and the atlas as moving). Without it TRE is the initial distance.

    Returns
    -------
    dict
        ``dice``, ``hd95_mm`` (masks) and ``tre_mm`` (``mean``, ``sd``, ``median``, ``max``,
        ``n``, ``per_landmark``) as applicable.
    """
    from .data.landmarks import pair_landmarks, read_landmarks
    from .data.nifti import read_displacement

    out: dict[str, Any] = {}
    if (pred is None) != (truth is None):
        raise ValueError("give both pred and truth masks, or neither")
    if pred is not None and truth is not None:
        p = as_volume(pred, name="pred")
        t = as_volume(truth, name="truth")
        if not p.same_grid(t):
            raise VolumeError(
                f"pred ({p.name}, {p.shape}) and truth ({t.name}, {t.shape}) are not on the same "
                "grid; resample one onto the other first"
            )
        out.update(_mask_metrics(p, t, p.spacing))
        if labels:
            per = {}
            for lab in np.unique(t.array):
                if lab == 0:
                    continue
                per[int(lab)] = metrics.dice(p.array == lab, t.array == lab)
            out["dice_per_label"] = per
            out["dice_mean_label"] = float(np.mean(list(per.values()))) if per else float("nan")
    if (landmarks_moving is None) != (landmarks_fixed is None):
        raise ValueError("give both moving and fixed landmarks for TRE")
    if landmarks_moving is not None and landmarks_fixed is not None:
        ids, moving_mm, fixed_mm = pair_landmarks(
            read_landmarks(landmarks_moving), read_landmarks(landmarks_fixed)
        )
        mapped = fixed_mm.copy()
        if field is not None:
            disp_vox, grid = read_displacement(field)
            q = grid.world_to_voxel(fixed_mm)
            d_vox = metrics.sample_displacement(disp_vox, q)
            mapped = grid.voxel_to_world(q + d_vox)
        dist = metrics.tre(mapped, moving_mm)
        summary = metrics.tre_summary(dist)
        summary["per_landmark"] = {i: float(d) for i, d in zip(ids, dist, strict=True)}
        out["tre_mm"] = summary
    if not out:
        raise ValueError("nothing to evaluate: give masks and/or landmarks")
    return out
