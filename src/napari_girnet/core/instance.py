"""Instance optimisation of the registration: refine RegNet's velocities on one scan.

A registration network trained for a few hundred CPU steps predicts only a rough deformation.
Instance optimisation (as in LapIRN-IO, TransMorph-IO and classical SyN) takes the network's
stationary velocity fields as the starting point and optimises them directly, for this one
pair, with GIRNet's own registration loss: the SymNet loss on the *inpainted* scan (SegNet's
lesion replaced by InpNet's healthy fill, original tissue elsewhere), so the lesion still does
not drive the deformation. The velocities keep the symmetric diffeomorphic parametrisation
(scaling and squaring), and the regularisers (smoothness, negative Jacobian, magnitude) are
unchanged, so the result stays smooth and invertible.

References: Balakrishnan et al., VoxelMorph, TMI 2019 (instance-specific optimisation);
Mok & Chung, LapIRN, MICCAI 2020; Liu & Gu, GIRNet, MICCAI 2023 (loss on the inpainted scan).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .losses import RegistrationFields, registration_loss
from .model import GIRNet
from .spatial import warp

__all__ = ["InstanceResult", "refine_registration"]

log = logging.getLogger(__name__)


@dataclass
class InstanceResult:
    """Refined registration and the loss before/after.

    Attributes
    ----------
    fields : RegistrationFields
        Fields from the optimised velocities (no gradient).
    loss_before, loss_after : float
        GIRNet registration loss at the network's velocities and after optimisation.
    steps : int
        Optimisation steps taken.
    """

    fields: RegistrationFields
    loss_before: float
    loss_after: float
    steps: int


def refine_registration(
    model: GIRNet,
    scan: torch.Tensor,
    atlas: torch.Tensor,
    steps: int = 100,
    lr: float = 0.1,
    target: torch.Tensor | None = None,
    progress: Callable[[int, float], None] | None = None,
) -> InstanceResult:
    """Optimise the two velocity fields of one (scan, atlas) pair with GIRNet's registration loss.

    Parameters
    ----------
    model : GIRNet
        Provides the initial velocities (RegNet), the similarity target (SegNet + InpNet), the
        integration settings and the loss configuration (``model.config.loss``).
    scan, atlas : torch.Tensor
        ``(1, 1, *spatial)`` on the same working grid, intensities in [0, 1].
    steps : int
        Adam steps on the velocities (0 returns the network's registration).
    lr : float
        Adam learning rate in voxels per step.
    target : torch.Tensor, optional
        Image used in the similarity terms instead of the scan; default: the inpainted scan
        (SegNet's hard mask filled by InpNet, original tissue kept outside), as in GIRNet's
        registration loss.
    progress : callable, optional
        ``progress(step, loss)`` after each step.

    Returns
    -------
    InstanceResult
    """
    if scan.shape[0] != 1:
        raise ValueError(
            f"instance optimisation works on one pair at a time, got batch {scan.shape[0]}"
        )
    cfg = model.config.loss
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            v_s0, v_t0 = model._velocities(scan, atlas)
            if target is None:
                f0 = model.fields_from_velocities(v_s0, v_t0)
                guide = warp(atlas, f0.phi_ts)
                hole = (model.segment(scan) > cfg.mask_threshold).float()
                target = model.inpaint(scan, hole, guide, keep_outside=cfg.ntuc)
        v_s = v_s0.detach().clone().requires_grad_(True)
        v_t = v_t0.detach().clone().requires_grad_(True)
        params = [v_s, v_t]
        opt = torch.optim.Adam(params, lr=lr)
        with torch.no_grad():
            before = float(
                registration_loss(model.fields_from_velocities(v_s, v_t), target, atlas, cfg)[0]
            )
        loss_value = before
        for step in range(steps):
            opt.zero_grad(set_to_none=True)
            loss, _ = registration_loss(model.fields_from_velocities(v_s, v_t), target, atlas, cfg)
            if not torch.isfinite(loss):
                log.warning("instance optimisation stopped at step %d: non-finite loss", step)
                break
            loss.backward()
            opt.step()
            loss_value = float(loss.detach())
            if progress is not None:
                progress(step + 1, loss_value)
        with torch.no_grad():
            fields = model.fields_from_velocities(v_s.detach(), v_t.detach())
            after = float(registration_loss(fields, target, atlas, cfg)[0])
            if not after <= before:  # diverged (or NaN): keep the network's registration
                log.warning("instance optimisation did not lower the loss; keeping RegNet's")
                fields = model.fields_from_velocities(v_s0, v_t0)
                after = before
        log.info(
            "instance optimisation: registration loss %.4f -> %.4f in %d steps",
            before,
            after,
            steps,
        )
        return InstanceResult(fields=fields, loss_before=before, loss_after=after, steps=steps)
    finally:
        model.train(was_training)
