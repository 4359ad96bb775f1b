"""GIRNet's three losses: registration (SymNet), segmentation (MMI/IEM form), inpainting.

Formulas follow Liu & Gu, "Co-learning Semantic-Aware Unsupervised Segmentation for
Pathological Image Registration", MICCAI 2023, eqs. 1–4, and the upstream code's paper
configuration (github.com/ly1998117/GIRNet). Tensors are ``(B, 1, *spatial)`` images in [0, 1] and
``(B, ndim, *spatial)`` voxel fields (2D or 3D). Each function returns ``(total, terms)`` where
``terms`` maps term names to detached scalar tensors for logging.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import LossConfig
from .regularizers import magnitude, negative_jacobian, smoothness
from .similarity import lncc, mse
from .spatial import warp

__all__ = [
    "RegistrationFields",
    "inpainting_loss",
    "registration_loss",
    "segmentation_loss",
]


@dataclass
class RegistrationFields:
    """Output of the symmetric RegNet for one (scan, atlas) pair on a common working grid.

    All fields are ``(B, ndim, *spatial)`` in voxels of the working grid.

    Attributes
    ----------
    v_s, v_t : torch.Tensor
        Stationary velocity fields of the scan and the atlas towards the mid-space
        (paper's ``v_xy``, ``v_yx`` with x = scan, y = atlas).
    phi_s_half : torch.Tensor
        ``exp(v_s)``: defined on the mid-space grid, samples the scan:
        ``scan_mid = warp(scan, phi_s_half)``.
    phi_t_half : torch.Tensor
        ``exp(v_t)``: defined on the mid-space grid, samples the atlas.
    phi_st : torch.Tensor
        Displacement (voxels) defined on the **atlas** grid: atlas voxel ``y`` corresponds to
        scan voxel ``y + phi_st(y)``;
        ``scan_to_atlas = warp(scan, phi_st)`` (paper's ``phi_ST``: warps S onto T).
    phi_ts : torch.Tensor
        Displacement (voxels) defined on the **scan** grid: scan voxel ``x`` corresponds to
        atlas voxel ``x + phi_ts(x)``;
        ``atlas_to_scan = warp(atlas, phi_ts)`` (paper's ``phi_TS``).
    """

    v_s: torch.Tensor
    v_t: torch.Tensor
    phi_s_half: torch.Tensor
    phi_t_half: torch.Tensor
    phi_st: torch.Tensor
    phi_ts: torch.Tensor


def registration_loss(
    fields: RegistrationFields,
    scan: torch.Tensor,
    atlas: torch.Tensor,
    cfg: LossConfig,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """SymNet registration loss with GIRNet's weights (eq. 1).

    ``L = -w_mid LNCC(scan∘phi_s_half, atlas∘phi_t_half)
          - w_full [LNCC(atlas, scan∘phi_st) + LNCC(scan, atlas∘phi_ts)]
          + w_mag |sum|phi_s_half| - sum|phi_t_half|| / N
          + w_jdet [negJ(phi_st) + negJ(phi_ts)] + w_smooth [smooth(v_s) + smooth(v_t)]``

    Parameters
    ----------
    fields : RegistrationFields
        From :meth:`napari_girnet.core.model.GIRNet.register` (with gradients).
    scan : torch.Tensor
        ``(B, 1, *spatial)`` — in GIRNet the *inpainted* scan (lesion replaced by healthy tissue),
        so that the lesion does not drive the deformation; the flows are still predicted from
        the raw scan.
    atlas : torch.Tensor
        ``(B, 1, *spatial)`` or ``(1, 1, *spatial)``.
    cfg : LossConfig
        ``reg_window`` (7), ``reg_eps`` (0.1), ``reg_form`` (``"girnet"``), weights
        ``w_mid, w_full, w_mag, w_jdet, w_smooth`` (1, 1, 0.1, 1, 3).
    """
    if atlas.shape[0] != scan.shape[0]:
        atlas = atlas.expand(scan.shape[0], *atlas.shape[1:])
    win, eps, form = cfg.reg_window, cfg.reg_eps, cfg.reg_form
    scan_mid = warp(scan, fields.phi_s_half)
    atlas_mid = warp(atlas, fields.phi_t_half)
    l_mid = -lncc(scan_mid, atlas_mid, win, eps, form)
    l_full = -lncc(atlas, warp(scan, fields.phi_st), win, eps, form) - lncc(
        scan, warp(atlas, fields.phi_ts), win, eps, form
    )
    l_mag = magnitude(fields.phi_s_half, fields.phi_t_half)
    l_jdet = negative_jacobian(fields.phi_st) + negative_jacobian(fields.phi_ts)
    l_smooth = smoothness(fields.v_s) + smoothness(fields.v_t)
    total = (
        cfg.w_mid * l_mid
        + cfg.w_full * l_full
        + cfg.w_mag * l_mag
        + cfg.w_jdet * l_jdet
        + cfg.w_smooth * l_smooth
    )
    terms = {
        "mid": l_mid,
        "full": l_full,
        "magnitude": l_mag,
        "neg_jacobian": l_jdet,
        "smoothness": l_smooth,
    }
    return total, {k: v.detach() for k, v in terms.items()}


def segmentation_loss(
    probability: torch.Tensor,
    scan: torch.Tensor,
    fill_fg: torch.Tensor,
    fill_bg: torch.Tensor,
    cfg: LossConfig,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GIRNet's segmentation loss (minimal mutual information / IEM form, eq. 2).

    With ``d_f = 1 - LNCC_15(scan, fill_fg)`` and ``d_b = 1 - LNCC_15(scan, fill_bg)`` as voxel
    maps and ``M`` the soft mask (SegNet's sigmoid output)::

        fg = sum(M d_f) / (sum(M) + e)        bg = sum((1 - M) d_b) / (sum(1 - M) + e)
        L  = -fg + bg   ("minus", eq. 2 and the code)   or   -fg - bg   ("plus", IEM / App. A)

    with ``e = seg_norm_fraction * V`` (V voxels per image; GIRNet: V/32). SegNet maximises the
    inpainting error inside the mask (the lesion cannot be predicted from healthy context) and
    minimises it outside. The fills are computed without gradient, so SegNet learns only
    through ``M`` as a weight map.

    Parameters
    ----------
    probability : torch.Tensor
        ``(B, 1, *spatial)`` soft mask in [0, 1] (with gradient).
    scan : torch.Tensor
        ``(B, 1, *spatial)`` raw scan.
    fill_fg : torch.Tensor
        Scan with the masked region inpainted (``Î_f``), no gradient.
    fill_bg : torch.Tensor
        Scan with the complement inpainted (``Î_b``), no gradient.
    """
    d_f = 1.0 - lncc(scan, fill_fg, cfg.seg_window, cfg.seg_eps, reduction="none")
    d_b = 1.0 - lncc(scan, fill_bg, cfg.seg_window, cfg.seg_eps, reduction="none")
    m = probability.float()
    dims = tuple(range(1, m.dim()))
    n_vox = float(m[0].numel())
    e = cfg.seg_norm_fraction * n_vox
    if cfg.seg_reduction == "exclude":
        fg = (m * d_f).sum(dims) / (m.sum(dims) + e)
        bg = ((1 - m) * d_b).sum(dims) / ((1 - m).sum(dims) + e)
    else:  # "sum": no normalisation by the region size (scaled by V to stay O(1))
        fg = (m * d_f).sum(dims) / n_vox
        bg = ((1 - m) * d_b).sum(dims) / n_vox
    if cfg.seg_single:
        per_item = -fg
    elif cfg.seg_form == "minus":
        per_item = -fg + bg
    else:
        per_item = -fg - bg
    total = per_item.mean()
    terms = {
        "fg_error": fg.mean(),
        "bg_error": bg.mean(),
        "mask_fraction": m.mean(),
    }
    return total, {k: v.detach() for k, v in terms.items()}


def inpainting_loss(
    scan: torch.Tensor,
    fill_fg: torch.Tensor,
    fill_bg: torch.Tensor,
    hole: torch.Tensor,
    atlas_matched: torch.Tensor,
    cfg: LossConfig,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GIRNet's inpainting loss (eqs. 3–4, paper configuration).

    For each fill and the region ``R`` it inpainted — ``(hole, fill_fg)`` and
    ``(1 - hole, fill_bg)``::

        term = -w_ncc LNCC_15(scan, fill) + w_mse MSE(scan (1 - R) + T^M R, fill)

    where ``T^M`` (``atlas_matched``) is the atlas warped to the scan and histogram-matched to it.
    The target keeps the scan's own tissue outside the hole and asks for atlas-like healthy tissue
    inside; the LNCC term (whole image) keeps the fill consistent with the scan. With
    ``inp_target="exclude"`` the MSE is split and normalised per region instead.

    Parameters
    ----------
    scan : torch.Tensor
        ``(B, 1, *spatial)``.
    fill_fg, fill_bg : torch.Tensor
        Raw InpNet outputs (with gradient) for the hole and its complement.
    hole : torch.Tensor
        ``(B, 1, *spatial)`` hard mask (0/1 float) of the region inpainted in ``fill_fg``.
    atlas_matched : torch.Tensor
        ``(B, 1, *spatial)`` target inside holes, no gradient.
    """
    terms: dict[str, torch.Tensor] = {}
    total = scan.new_zeros((), dtype=torch.float32)
    dims = tuple(range(1, scan.dim()))
    for name, region, fill in (("fg", hole, fill_fg), ("bg", 1.0 - hole, fill_bg)):
        sim = lncc(scan, fill, cfg.inp_window, cfg.inp_eps)
        if cfg.inp_target == "composite":
            target = scan * (1.0 - region) + atlas_matched * region
            err = mse(target, fill)
        else:
            f = fill.float()
            r = region.float()
            inside = (r * (atlas_matched.float() - f) ** 2).sum(dims) / r.sum(dims).clamp_min(1)
            outside = ((1 - r) * (scan.float() - f) ** 2).sum(dims) / (1 - r).sum(dims).clamp_min(1)
            err = (inside + outside).mean()
        total = total + (-cfg.w_inp_ncc * sim + cfg.w_inp_mse * err)
        terms[f"{name}_lncc"] = sim.detach()
        terms[f"{name}_mse"] = err.detach()
    return total, terms
