"""The stages of ``register``: each a small function of the working-grid :class:`WorkState`.

prepare -> [fine_tune] -> detect -> [instance_optimise] -> [detect_registered] -> predict ->
[refine] -> map_back -> [metrics]. :class:`~napari_girnet.pipeline.session.RegistrationSession`
runs them in order and times them. References: Liu & Gu, GIRNet, MICCAI 2023 (networks, "TH"
and "PP" of Table 1); instance optimisation with the network's own loss as in
:mod:`napari_girnet.core.instance`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import asdict, replace
from typing import Any

import numpy as np
import torch

from ..core.colearn import TrainingReport
from ..core.config import GIRNetConfig
from ..core.instance import refine_registration
from ..core.runtime import resolve_runtime
from ..core.spatial import warp
from ..data.atlas import Atlas
from ..data.preprocess import prepare_scan
from ..data.skullstrip import preprocess_raw
from ..data.volume import Volume, VolumeError, check_brain_size, describe_grid_mismatch
from ..detection import (
    InferenceConfig,
    detect,
    fill_mask,
    outlier_detection,
    refine_on_grid,
    resolve_inference,
)
from ..evaluation.measure import mask_metrics
from .inputs import ScanLike, as_volume, load_atlas_for, resolve_config, to_tensor
from .mapback import intensity_range, map_back
from .models import LoadedModel, ModelLike, load_model
from .state import RegisterOptions, WorkState
from .training import fit

__all__ = [
    "detect_first",
    "detect_registered",
    "fine_tune",
    "instance_optimise",
    "map_to_native",
    "measure",
    "predict",
    "prepare_state",
    "refine",
    "resolve_run",
]


def resolve_run(
    config: GIRNetConfig | str | None,
    model: ModelLike,
    seed: int,
    device: str | None,
    inference: InferenceConfig | dict[str, Any] | None,
    fine_tune_steps: int | None,
) -> tuple[GIRNetConfig, LoadedModel, int]:
    """The run's config, the model to apply and the number of fine-tuning steps.

    Fine-tuning defaults to ``config.schedule.fine_tune_steps`` for random weights (no model
    ships for the preset) and to none for a trained model (bundled or given), as GIRNet applies
    its networks without per-scan co-learning. Without ``config`` the model's own config is used
    (``"cpu-2mm"`` for the bundled/random model); with it, a model made with another preset is
    refused. ``seed`` seeds the random weights (when no model ships) and every later random
    choice.
    """
    loaded = load_model(model, resolve_config(config), seed, explicit=config is not None)
    cfg = loaded.net.config if config is None else resolve_config(config)
    runtime: dict[str, Any] = {"seed": int(seed)}
    if device is not None:
        runtime["device"] = device
    cfg = cfg.override(runtime=runtime)
    icfg = resolve_inference(cfg.inference, inference)
    if icfg != cfg.inference:
        cfg = cfg.override(inference=asdict(icfg))
    if fine_tune_steps is not None:
        steps = int(fine_tune_steps)
    else:  # GIRNet applies a trained model as is; only random weights are co-learned per scan
        steps = cfg.schedule.fine_tune_steps if loaded.untrained else 0
    cfg = cfg.override(schedule={"steps": steps, "pretrain_inp_steps": 0})
    return cfg, loaded, steps


def prepare_state(
    scan: ScanLike,
    atlas: ScanLike | str | Atlas,
    truth: ScanLike | None,
    cfg: GIRNetConfig,
    loaded: LoadedModel,
    options: RegisterOptions,
) -> WorkState:
    """Stage "prepare": read and check the inputs, brain mask, normalisation, affine alignment.

    Raises
    ------
    VolumeError, PreprocessError
        Bad scan, atlas or truth (the message names the input).
    """
    seed = cfg.runtime.seed
    scan_vol = as_volume(scan, name=str(scan) if isinstance(scan, str | os.PathLike) else None)
    check_brain_size(scan_vol)
    truth_vol = as_volume(truth, name="truth") if truth is not None else None
    if truth_vol is not None:
        mismatch = describe_grid_mismatch(truth_vol, scan_vol)
        if mismatch is not None:
            raise VolumeError(f"truth mask: {mismatch}")
    atlas_obj = atlas if isinstance(atlas, Atlas) else load_atlas_for(cfg, atlas, seed)
    raw = preprocess_raw(scan_vol, mode=options.skull_strip, seed=seed)  # type: ignore[arg-type]
    if raw.decision.get("extracted"):
        prepared = prepare_scan(raw.brain, atlas_obj, seed=seed, mask=raw.brain_mask)
    else:
        prepared = prepare_scan(scan_vol, atlas_obj, seed=seed)
    runtime = resolve_runtime(cfg.runtime)
    brain = torch.from_numpy(np.asarray(prepared.mask.array, dtype=bool))[None, None]
    return WorkState(
        cfg=cfg,
        model=loaded,
        options=options,
        runtime=runtime,
        scan=scan_vol,
        atlas=atlas_obj,
        prepared=prepared,
        truth=truth_vol,
        raw=raw,
        scan_range=intensity_range(prepared),
        scan_t=to_tensor(prepared.image)[None].to(runtime.device),
        atlas_t=to_tensor(atlas_obj.image)[None].to(runtime.device),
        brain_t=brain.to(runtime.device),
    )


def fine_tune(state: WorkState) -> Iterator[TrainingReport]:
    """Stage "fine_tune": co-learning on this scan (and pseudo cases); yields every report."""
    opts = state.options
    session = fit(
        [state.prepared],
        state.atlas,
        state.cfg,
        checkpoint_dir=opts.checkpoint_dir,
        init=state.model.net,
        resume=False,
        pseudo_cases=opts.pseudo_cases,
        exclude_lesions=opts.exclude_lesions,
        preview=False,
    )
    for rep in session:
        if not rep.is_final:
            state.history.append({"step": rep.step, "phase": rep.phase, "loss": rep.loss})
        yield rep
    state.model = replace(state.model, net=session.model)
    state.checkpoint = session.checkpoint


def detect_first(state: WorkState) -> None:
    """Stage "detect": SegNet's mask, or the atlas outlier against the affinely aligned atlas."""
    net = state.model.net
    net.to(state.runtime.device)
    state.detection = detect(
        net, state.scan_t, state.atlas_t, state.brain_t, state.prepared.image, state.cfg
    )


def instance_optimise(state: WorkState) -> None:
    """Stage "instance_optimise": refine this scan's registration with GIRNet's loss.

    The similarity target is the scan with the first-pass mask filled (the atlas is not pulled
    into the lesion); an empty mask leaves the raw scan.
    """
    assert state.detection is not None
    net, cfg, det = state.model.net, state.cfg, state.detection
    n = state.options.instance_steps
    with torch.no_grad():
        guide = warp(state.atlas_t, net.register(state.scan_t, state.atlas_t).phi_ts)
        target = fill_mask(net, state.scan_t, det.mask, guide, state.brain_t, state.fill_mode)
    lr = cfg.schedule.instance_lr
    res = refine_registration(net, state.scan_t, state.atlas_t, steps=n, lr=lr, target=target)
    state.fields = res.fields
    state.instance = {
        "steps": n,
        "lr": lr,
        "target": "inpainted scan" if bool(det.mask.any()) else "raw scan (empty mask)",
        "mask_source": det.source,
        "loss_before": res.loss_before,
        "loss_after": res.loss_after,
    }


def detect_registered(state: WorkState) -> None:
    """Stage "detect_registered": the atlas outlier again, against the atlas registered to the
    scan (``phi_ts`` of the instance-optimised fields is a displacement in voxels)."""
    assert state.detection is not None and state.fields is not None
    with torch.no_grad():
        warped = warp(state.atlas_t, state.fields.phi_ts)
    state.detection = outlier_detection(
        state.scan_t,
        warped,
        state.brain_t,
        state.prepared.image,
        state.cfg,
        state.detection.info,
        reference="atlas registered to the scan with the first-pass mask filled",
    )


def predict(state: WorkState) -> None:
    """Stage "predict": one forward pass (with the instance-optimised fields when present); the
    mask and probability are the detection's, the inpainted scan fills that mask."""
    assert state.detection is not None
    net, det = state.model.net, state.detection
    pred = net.predict_volume(
        state.scan_t, state.atlas_t, autocast=state.runtime.autocast, fields=state.fields
    )
    with torch.no_grad():
        inpainted = fill_mask(
            net, state.scan_t, det.mask, pred.atlas_to_scan, state.brain_t, state.fill_mode
        )
    pred = replace(
        pred, lesion_probability=det.probability, lesion_mask=det.mask, inpainted=inpainted
    )
    state.prediction = pred.to("cpu")


def refine(state: WorkState) -> None:
    """Stage "refine": the random-walker refinement (GIRNet's "PP") of the working-grid mask."""
    assert state.prediction is not None
    pred = state.prediction
    refined, state.refine_info = refine_on_grid(
        state.prepared, pred.lesion_mask[0, 0].numpy(), state.cfg.inference.refine_max_growth
    )
    state.prediction = replace(pred, lesion_mask=torch.from_numpy(refined)[None, None])


def map_to_native(state: WorkState) -> None:
    """Stage "map_back": native-grid volumes, atlas-grid volume and RAS-mm displacement fields."""
    assert state.prediction is not None
    state.volumes = map_back(
        state.prediction, state.prepared, state.atlas, state.scan, state.scan_range
    )


def measure(state: WorkState) -> None:
    """Stage "metrics": Dice, HD95 and volumes of the native-grid mask against the truth."""
    assert state.truth is not None
    mask: Volume = state.volumes["lesion_mask"]
    state.metrics = mask_metrics(
        mask.array, state.truth.array, state.scan.spacing.tolist(), (mask.name, state.truth.name)
    )
