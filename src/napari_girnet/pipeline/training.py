"""Co-learning on one or more scans (:func:`fit`, :class:`FitSession`), also the fine-tuning
stage of :func:`napari_girnet.pipeline.register_steps`."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.colearn import CoLearner, PairSampler, TrainingReport
from ..core.config import GIRNetConfig
from ..core.model import GIRNet, Prediction
from ..data.atlas import Atlas
from ..data.preprocess import PreparedScan
from .inputs import ScanLike, load_atlas_for, prepare, resolve_config, to_tensor
from .mapback import intensity_range, map_back
from .models import ModelLike, load_model

__all__ = ["FitSession", "fit", "pseudo_case_images", "training_items"]

log = logging.getLogger(__name__)


def training_items(
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
    from ..data.preprocess import resample_like
    from ..data.synthetic import SourceBrain, atlas_source_brain, make_case
    from ..datasets import lesion_library, load_colin27

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
        images.append(to_tensor(scan))
    return images


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
        return map_back(prediction, p, self.atlas, p.native, intensity_range(p))

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
    atlas, config : "mni152", path, Volume or Atlas; preset name or GIRNetConfig ("cpu-2mm")
    checkpoint_dir : path, optional
        ``last.pt`` is written there; if it already holds one and ``resume`` is true, training
        continues from it (a second Start resumes).
    init : model, checkpoint or path, optional
        Initial weights (default: random, drawn from the seed by a local generator).
    pseudo_cases : int
        Pseudo-pathological cases (bundled real lesions in healthy brains) mixed into training,
        minus the sources in ``exclude_lesions``. ``steps``, ``seed``, ``device`` override
        ``config``. Returns a :class:`FitSession`.
    """
    cfg = _fit_config(config, steps, seed, device)
    seed_value = cfg.runtime.seed
    atlas_obj = atlas if isinstance(atlas, Atlas) else load_atlas_for(cfg, atlas, seed_value)
    prepared = [
        s if isinstance(s, PreparedScan) else prepare(s, atlas_obj, cfg, seed=seed_value)
        for s in scans
    ]
    if not prepared and pseudo_cases <= 0:
        raise ValueError("fit needs at least one scan or pseudo_cases > 0")
    images = [to_tensor(p.image) for p in prepared]
    images += pseudo_case_images(atlas_obj, pseudo_cases, seed_value, exclude_lesions)
    atlas_t = to_tensor(atlas_obj.image)
    items, atlas_items = training_items(images, atlas_t, cfg.data.ndim)
    sampler = PairSampler(items, atlas_items, batch_size=cfg.schedule.batch_size, seed=seed_value)
    preview_pair = None
    if preview and prepared:
        preview_pair = (images[0][None], atlas_t[None])  # whole volume, also for 2D networks
    inputs = [p.native.name for p in prepared]
    provenance = {"inputs": inputs, "pseudo_cases": pseudo_cases, "atlas": atlas_obj.preset}
    provenance["excluded_lesions"] = list(exclude_lesions)
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
        model, sha, desc = _initial_model(init, cfg)
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


def _fit_config(
    config: GIRNetConfig | str | None, steps: int | None, seed: int | None, device: str | None
) -> GIRNetConfig:
    """``config`` with the optional step, seed and device overrides of :func:`fit`."""
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
    return resolve_config(config, **over)


def _initial_model(init: ModelLike, cfg: GIRNetConfig) -> tuple[GIRNet, str | None, str]:
    """(model, sha256 of its file or None, description): ``init``, or random weights drawn from
    ``cfg.runtime.seed`` (a forked generator; the global one is untouched)."""
    if init is None:
        return GIRNet(cfg, seed=cfg.runtime.seed), None, "random"
    loaded = load_model(init, cfg, cfg.runtime.seed, explicit=False)
    model = loaded.net
    if model.config.net != cfg.net or model.ndim != cfg.data.ndim:
        raise ValueError(
            f"initial model ({loaded.description}) does not match the configured networks"
        )
    return model, loaded.sha256, loaded.description
