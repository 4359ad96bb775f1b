"""Co-learning on one or more scans (:func:`fit`, :class:`FitSession`), also the fine-tuning
stage of :func:`napari_girnet.pipeline.register_steps`.

Two tasks: ``"atlas"`` (every scan is registered to the one atlas) and ``"longitudinal"``
(GIRNet's BraTS-Reg setting: each pre-operative scan is registered to its own follow-up scan,
which plays the atlas ``T`` of co-learning for that scan).
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from ..core.checkpoint import load_checkpoint
from ..core.colearn import CoLearner, PairSampler, TrainingReport
from ..core.config import GIRNetConfig
from ..core.model import GIRNet, Prediction
from ..data.atlas import Atlas
from ..data.preprocess import PreparedScan
from ..data.skullstrip import MODES
from .inputs import ScanLike, load_atlas_for, prepare, resolve_config, to_tensor
from .mapback import intensity_range, map_back
from .models import ModelLike, load_model

__all__ = ["FitSession", "fit", "pseudo_case_images", "read_pairs_csv", "training_items"]

log = logging.getLogger(__name__)


def training_items(
    images: Sequence[torch.Tensor],
    atlas: torch.Tensor | Sequence[torch.Tensor],
    ndim: int,
    min_brain: float = 0.05,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Scans and their atlases as network inputs: whole volumes (3D) or axial slices (2D).

    ``images`` are ``(1, X, Y, Z)`` working-grid tensors; ``atlas`` is one ``(1, X, Y, Z)``
    atlas shared by all images or one per image (a longitudinal pair's follow-up scan). Returns
    ``(scans, atlases)`` of equal length, item ``i`` of one paired with item ``i`` of the other:
    ``(1, X, Y, Z)`` volumes (3D) or ``(1, X, Y)`` axial slices (2D, the last axis sliced).
    2D keeps slices where both scan and atlas have at least ``min_brain`` brain voxels.

    Raises
    ------
    ValueError
        If the number of atlases is neither 1 nor that of the images, or (2D) no slice holds
        enough brain.
    """
    per_image = [atlas] * len(images) if isinstance(atlas, torch.Tensor) else list(atlas)
    if len(per_image) != len(images):
        raise ValueError(f"{len(per_image)} atlases for {len(images)} scans; give one or one each")
    if ndim == 3:
        return list(images), per_image
    scans, atlases = [], []
    for img, target in zip(images, per_image, strict=True):
        for z in range(img.shape[-1]):
            s, a = img[..., z], target[..., z]
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


@dataclass(frozen=True)
class _PreparedPair:
    """The parts of :class:`napari_girnet.pipeline.pair.PairInputs` that training uses."""

    moving: PreparedScan
    fixed: PreparedScan
    fixed_atlas: Atlas


class FitSession:
    """A co-learning run: iterate it for :class:`TrainingReport` s; stop it from any thread.

    Created by :func:`fit`. ``for report in session: ...`` drives training; ``session.run()``
    drives it to the end; ``session.request_stop()`` ends it at the next step with a checkpoint.
    ``prepared[i]`` is registered to ``atlases[i]`` (the atlas, or scan ``i``'s follow-up in a
    longitudinal run, whose prepared scans are ``fixed[i]``).
    """

    def __init__(
        self,
        learner: CoLearner,
        prepared: list[PreparedScan],
        atlas: Atlas,
        *,
        atlases: Sequence[Atlas] | None = None,
        fixed: Sequence[PreparedScan] = (),
    ) -> None:
        self.learner = learner
        self.prepared = prepared
        self.atlas = atlas
        self.atlases = list(atlases) if atlases is not None else [atlas] * len(prepared)
        self.fixed = list(fixed)

    @property
    def task(self) -> str:
        """``"longitudinal"`` (one follow-up scan per scan) or ``"atlas"``."""
        return "longitudinal" if self.fixed else "atlas"

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
        ``field_atlas_to_scan``, ``field_scan_to_atlas``); in a longitudinal run "atlas" is the
        scan's follow-up on the working grid. Costs about a second at 2 mm; call it in the
        worker thread.
        """
        p = self.prepared[index]
        return map_back(prediction, p, self.atlases[index], p.native, intensity_range(p))

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
    fixed: Sequence[ScanLike] | None = None,
    skull_strip: str = "auto",
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
    """Set up GIRNet co-learning on one or more scans, or on longitudinal pairs.

    Parameters
    ----------
    scans : sequence
        Skull-stripped T1 scans (paths, Volumes, (array, affine) pairs) or already prepared
        scans (:func:`prepare`). With ``fixed``: the moving (pre-operative) scan of each pair.
    atlas, config : "mni152", path, Volume or Atlas; preset name or GIRNetConfig ("cpu-2mm")
    fixed : sequence, optional
        Longitudinal training (GIRNet's BraTS-Reg setting): one follow-up scan per scan, in the
        same order, used as that scan's atlas ``T``. Each pair is prepared as pair registration
        prepares it (:func:`napari_girnet.pipeline.pair.prepare_pair`): the follow-up on the
        preset's MNI working grid ``(X, Y, Z)`` by its own affine alignment to MNI152, the
        moving scan aligned directly to the follow-up and resampled onto the same grid.
        Pseudo cases keep ``atlas``. Checkpoints record
        ``provenance["task"] == "longitudinal"`` and the follow-ups' names in
        ``provenance["fixed"]`` (otherwise ``"atlas"``).
    skull_strip : {"auto", "yes", "no"}
        Longitudinal pairs only: brain extraction and N4 before the alignment
        (:func:`napari_girnet.data.skullstrip.preprocess_raw`; ``"auto"`` only for scans that are
        not skull-stripped).
    checkpoint_dir : path, optional
        ``last.pt`` is written there; if it already holds one and ``resume`` is true, training
        continues from it (a second Start resumes).
    init : model, checkpoint or path, optional
        Initial weights (default: random, drawn from the seed by a local generator).
    pseudo_cases : int
        Pseudo-pathological cases (bundled real lesions in healthy brains) mixed into training,
        minus the sources in ``exclude_lesions``. ``steps``, ``seed``, ``device`` override
        ``config``. Returns a :class:`FitSession`.

    Raises
    ------
    ValueError
        No scan and no pseudo case; ``fixed`` not of the length of ``scans``; an unknown
        ``skull_strip``; a ``last.pt`` in ``checkpoint_dir`` of the other task (atlas vs
        longitudinal); unreadable or unusable scans (one line naming the file).
    """
    task = "atlas" if fixed is None else "longitudinal"
    if fixed is not None:
        if len(fixed) != len(scans) or not scans:
            raise ValueError(
                f"longitudinal training needs one fixed (follow-up) scan per scan: got "
                f"{len(scans)} scans and {len(fixed)} fixed scans"
            )
        if skull_strip not in MODES:
            raise ValueError(f"skull_strip must be one of {', '.join(MODES)}, got {skull_strip!r}")
        if any(isinstance(s, PreparedScan) for s in [*scans, *fixed]):
            raise ValueError("longitudinal pairs take scans (paths, Volumes), not prepared scans")
    cfg = _fit_config(config, steps, seed, device)
    seed_value = cfg.runtime.seed
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    last = ckpt_dir / "last.pt" if ckpt_dir is not None else None
    resuming = resume and last is not None and last.is_file()
    previous = load_checkpoint(last) if resuming and last is not None else None
    if previous is not None and previous.provenance.get("task", "atlas") != task:
        raise ValueError(
            f"{last}: a checkpoint of a {previous.provenance.get('task', 'atlas')} run cannot "
            f"resume as a {task} run; use another checkpoint folder"
        )
    atlas_obj = atlas if isinstance(atlas, Atlas) else load_atlas_for(cfg, atlas, seed_value)
    pairs: list[_PreparedPair] = []
    if fixed is not None:
        pairs = [
            _prepare_pair(cast(ScanLike, m), f, cfg, seed=seed_value, skull_strip=skull_strip)
            for m, f in zip(scans, fixed, strict=True)
        ]
        prepared = [p.moving for p in pairs]
        targets = [p.fixed_atlas for p in pairs]
    else:
        prepared = [
            s if isinstance(s, PreparedScan) else prepare(s, atlas_obj, cfg, seed=seed_value)
            for s in scans
        ]
        targets = [atlas_obj] * len(prepared)
    if not prepared and pseudo_cases <= 0:
        raise ValueError("fit needs at least one scan or pseudo_cases > 0")
    images = [to_tensor(p.image) for p in prepared]
    atlas_t = to_tensor(atlas_obj.image)
    target_ts = [atlas_t if t is atlas_obj else to_tensor(t.image) for t in targets]
    pseudo = pseudo_case_images(atlas_obj, pseudo_cases, seed_value, exclude_lesions)
    items, atlas_items = training_items(
        images + pseudo, target_ts + [atlas_t] * len(pseudo), cfg.data.ndim
    )
    sampler = PairSampler(items, atlas_items, batch_size=cfg.schedule.batch_size, seed=seed_value)
    preview_pair = None
    if preview and prepared:  # whole volume, also for 2D networks
        preview_pair = (images[0][None], target_ts[0][None])
    inputs = [p.native.name for p in prepared]
    provenance: dict[str, Any] = {"task": task, "inputs": inputs, "pseudo_cases": pseudo_cases}
    provenance.update(atlas=atlas_obj.preset, excluded_lesions=list(exclude_lesions))
    if pairs:
        provenance.update(fixed=[p.fixed.native.name for p in pairs], skull_strip=skull_strip)
    if previous is not None:
        log.info("resuming from %s", last)
        learner = CoLearner.resume(
            previous,
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
    fixed_prepared = [p.fixed for p in pairs]
    return FitSession(learner, prepared, atlas_obj, atlases=targets, fixed=fixed_prepared)


def read_pairs_csv(path: str | os.PathLike[str]) -> list[tuple[Path, Path]]:
    """Longitudinal pairs from a CSV with (at least) the columns ``moving`` and ``fixed``.

    One pair per line: the moving (pre-operative) scan and its fixed (follow-up) scan, NIfTI
    paths, absolute or relative to the CSV's folder. Blank lines and lines starting with ``#``
    are skipped; other columns (e.g. a patient id) are ignored.

    Returns
    -------
    list of (moving, fixed) paths, in file order.

    Raises
    ------
    ValueError
        One line naming the CSV (and the line): missing file, no ``moving``/``fixed`` header,
        an empty cell, a scan that does not exist, no pair at all.
    """
    csv_path = Path(path)
    if not csv_path.is_file():
        raise ValueError(f"{csv_path}: pairs CSV not found")
    pairs: list[tuple[Path, Path]] = []
    with csv_path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        columns: dict[str, int] | None = None
        for row in reader:
            cells = [c.strip() for c in row]
            if not any(cells) or cells[0].startswith("#"):
                continue
            where = f"{csv_path} line {reader.line_num}"
            if columns is None:
                columns = {c.lower(): i for i, c in enumerate(cells)}
                if "moving" not in columns or "fixed" not in columns:
                    raise ValueError(
                        f"{where}: the header must name the columns 'moving' and 'fixed', "
                        f"found {', '.join(cells)}"
                    )
                continue
            pair = []
            for role in ("moving", "fixed"):
                i = columns[role]
                value = cells[i] if i < len(cells) else ""
                if not value:
                    raise ValueError(f"{where}: empty '{role}' column")
                scan = Path(value).expanduser()
                scan = scan if scan.is_absolute() else csv_path.parent / scan
                if not scan.is_file():
                    raise ValueError(f"{where}: {role} scan {value!r} not found ({scan})")
                pair.append(scan)
            pairs.append((pair[0], pair[1]))
    if not pairs:
        raise ValueError(f"{csv_path}: no pairs (expected a 'moving,fixed' header and rows)")
    return pairs


def _prepare_pair(
    moving: ScanLike, fixed: ScanLike, cfg: GIRNetConfig, *, seed: int, skull_strip: str
) -> _PreparedPair:
    """A longitudinal pair on ``cfg``'s working grid, exactly as pair registration prepares it
    (:func:`napari_girnet.pipeline.pair.prepare_pair`): the fixed scan on the MNI working grid
    by its own affine to MNI152 (its brain there is the pair's atlas ``T``), the moving scan
    aligned directly to the fixed scan and resampled onto the same grid."""
    from .pair import prepare_pair  # deferred: pair imports stages, which imports this module

    pair = prepare_pair(moving, fixed, cfg, seed=seed, skull_strip=skull_strip)
    return _PreparedPair(pair.moving_prepared, pair.fixed_prepared, pair.fixed_atlas)


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
