"""Where the working-grid lesion mask comes from: SegNet's threshold or the atlas outlier.

GIRNet's own mask is SegNet's probability thresholded at ``config.loss.mask_threshold`` (the
paper's "TH", Liu & Gu, MICCAI 2023, Table 1). When SegNet's mask is empty or implausibly
large (an untrained or collapsed SegNet), ``InferenceConfig.detector = "auto"`` falls back on the
atlas outlier (:func:`napari_girnet.detection.outlier.atlas_outlier_mask`) against the atlas
histogram-matched to the scan (``T^M``).

All tensors here are on the working grid (the atlas grid the aligned scan was resampled to),
``(1, 1, X, Y, Z)``, intensities in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..core.config import GIRNetConfig
from ..core.model import GIRNet
from ..core.similarity import histogram_match
from ..data.volume import Volume
from .outlier import atlas_outlier_mask

__all__ = ["Detection", "detect", "fill_mask", "matched_atlas", "outlier_detection"]


@dataclass(frozen=True)
class Detection:
    """A lesion mask on the working grid and where it came from.

    Attributes
    ----------
    probability : torch.Tensor
        ``(1, 1, X, Y, Z)`` float in [0, 1] (SegNet's probability inside the brain, or the
        outlier score).
    mask : torch.Tensor
        ``(1, 1, X, Y, Z)`` bool.
    source : str
        ``"segnet"`` or ``"atlas-outlier"``.
    info : dict
        JSON-ready description (fraction of the brain, thresholds, reason) for the report.
    """

    probability: torch.Tensor
    mask: torch.Tensor
    source: str
    info: dict[str, Any]


def matched_atlas(
    atlas_on_scan: torch.Tensor, scan: torch.Tensor, reference_mask: torch.Tensor
) -> torch.Tensor:
    """``T^M``: the atlas on the scan, histogram-matched to the scan inside ``reference_mask``.

    InpNet's training target (Liu & Gu, MICCAI 2023, Eq. (3), ``L_inp``);
    :func:`napari_girnet.core.similarity.histogram_match`.
    """
    with torch.no_grad():
        return histogram_match(
            atlas_on_scan.float(),
            scan.float(),
            source_mask=atlas_on_scan > 0,
            reference_mask=reference_mask,
        )


def detect(
    net: GIRNet,
    scan: torch.Tensor,
    atlas: torch.Tensor,
    brain: torch.Tensor,
    grid: Volume,
    cfg: GIRNetConfig,
) -> Detection:
    """First-pass mask: SegNet's threshold, or the atlas outlier against the affine atlas.

    ``cfg.inference.detector`` chooses; ``"auto"`` takes SegNet's mask when it is non-empty and
    under ``max_mask_fraction`` of the brain. ``grid`` is the working grid (its voxel size in
    mm and its voxel -> RAS mm affine drive the outlier's smoothing and left-right mirror).
    """
    icfg = cfg.inference
    brain_b = brain.bool()
    with torch.no_grad():
        prob = net.segment(scan).float()
    seg_mask = (prob > cfg.loss.mask_threshold) & brain_b
    frac = float(seg_mask.sum()) / max(int(brain_b.sum()), 1)
    plausible = 0.0 < frac < icfg.max_mask_fraction
    source = icfg.detector
    if source == "auto":
        source = "segnet" if plausible else "atlas-outlier"
    info: dict[str, Any] = {"segnet_mask_fraction_of_brain": frac, "source": source}
    if source == "segnet":
        info["reason"] = "SegNet mask" if plausible else "SegNet mask (forced; implausible)"
        return Detection(prob * brain_b, seg_mask, "segnet", info)
    info["reason"] = (
        "requested" if icfg.detector == "atlas-outlier" else "SegNet mask empty or implausible"
    )
    return outlier_detection(scan, atlas, brain, grid, cfg, info, reference="affine atlas")


def outlier_detection(
    scan: torch.Tensor,
    atlas_on_scan: torch.Tensor,
    brain: torch.Tensor,
    grid: Volume,
    cfg: GIRNetConfig,
    info: dict[str, Any],
    reference: str,
) -> Detection:
    """The atlas outlier (settings ``cfg.inference``) against ``atlas_on_scan``.

    ``info`` is copied and extended with the thresholds, the component count and the mask's
    fraction of the brain; ``reference`` names the atlas used (affine or registered).
    """
    icfg = cfg.inference
    brain_b = brain.bool()
    healthy = matched_atlas(atlas_on_scan, scan, brain_b) * brain_b
    res = atlas_outlier_mask(
        scan[0, 0].cpu().numpy(),
        healthy[0, 0].cpu().numpy(),
        brain_b[0, 0].cpu().numpy(),
        tuple(float(s) for s in grid.spacing),
        smoothing_mm=icfg.outlier_smoothing_mm,
        affine=np.asarray(grid.affine) if icfg.outlier_asymmetry else None,
        k_mad=icfg.outlier_k_mad,
        k_asym=icfg.outlier_k_asym,
        min_contrast=icfg.outlier_min_contrast,
        polarity=icfg.outlier_polarity,
        largest_only=icfg.outlier_largest_only,
        min_volume_mm3=icfg.outlier_min_volume_mm3,
        hysteresis=icfg.outlier_hysteresis,
    )
    mask = torch.from_numpy(res.mask)[None, None].to(scan.device)
    probability = torch.from_numpy(res.probability)[None, None].to(scan.device)
    out = {
        **info,
        "source": "atlas-outlier",
        "reference": reference,
        "threshold": res.threshold,
        "asymmetry_threshold": res.asymmetry_threshold,
        "components": res.components,
        "mask_fraction_of_brain": float(mask.sum()) / max(int(brain_b.sum()), 1),
    }
    return Detection(probability.float(), mask, "atlas-outlier", out)


def fill_mask(
    net: GIRNet,
    scan: torch.Tensor,
    mask: torch.Tensor,
    atlas_warped: torch.Tensor,
    brain: torch.Tensor,
    mode: str,
) -> torch.Tensor:
    """The scan with ``mask`` filled by InpNet (``"inpnet"``) or by ``T^M`` (``"atlas"``).

    ``atlas_warped`` is the atlas deformed onto the scan (working grid). An empty mask returns
    a copy of the scan.
    """
    m = mask.float()
    if not bool(mask.any()):
        return scan.clone()
    if mode == "inpnet":
        with torch.no_grad():
            return net.inpaint(scan, m, atlas_warped, keep_outside=True)
    healthy = matched_atlas(atlas_warped, scan, brain.bool() & ~mask.bool())
    return scan * (1 - m) + healthy * m
