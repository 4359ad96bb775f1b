"""The GIRNet model: RegNet + SegNet + InpNet, and its prediction on a (scan, atlas) pair.

Inference needs RegNet for the deformation and SegNet for the mask; InpNet produces the
inpainted (pseudo-healthy) scan shown to the user. References: Liu & Gu, GIRNet, MICCAI 2023;
Mok & Chung, SymNet, CVPR 2020 (symmetric composition of the half fields).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import Checkpoint, CheckpointError, load_checkpoint
from .config import GIRNetConfig
from .losses import RegistrationFields
from .nets import InpNet, RegNet, SegNet
from .spatial import compose, integrate, jacobian_determinant, spatial_ndim, warp

__all__ = ["GIRNet", "Prediction", "RegistrationFields"]


@dataclass
class Prediction:
    """GIRNet's outputs for one batch of scans on the working grid.

    The scan and the atlas share the working grid (the scan has been affinely aligned to the
    atlas), so "scan grid" and "atlas grid" below have the same shape but different meaning:
    a quantity on the scan grid overlays the (aligned) scan, one on the atlas grid overlays the
    atlas. All tensors are ``(B, C, *spatial)``.

    Attributes
    ----------
    lesion_probability : torch.Tensor
        ``(B, 1, *S)`` SegNet output in [0, 1], scan grid.
    lesion_mask : torch.Tensor
        ``(B, 1, *S)`` bool, ``lesion_probability > threshold``, scan grid.
    inpainted : torch.Tensor
        ``(B, 1, *S)`` scan with the mask filled with atlas-guided healthy tissue (the original
        scan outside the mask), scan grid, intensities as the scan ([0, 1]).
    phi_ts : torch.Tensor
        ``(B, ndim, *S)`` displacement in voxels on the scan grid: scan voxel ``x`` corresponds
        to atlas voxel ``x + phi_ts(x)`` (a displacement, not a map).
    phi_st : torch.Tensor
        ``(B, ndim, *S)`` displacement in voxels on the atlas grid: atlas voxel ``y``
        corresponds to scan voxel ``y + phi_st(y)``.
    atlas_to_scan : torch.Tensor
        ``warp(atlas, phi_ts)``: the atlas deformed onto the scan (scan grid).
    scan_to_atlas : torch.Tensor
        ``warp(scan, phi_st)``: the scan deformed onto the atlas (atlas grid).
    jacobian : torch.Tensor
        ``(B, 1, *S)`` Jacobian determinant of ``x -> x + phi_ts(x)`` on the scan grid: > 1 where
        a region of the scan corresponds to a larger atlas region (scan tissue smaller than the
        atlas'), <= 0 where the map folds.
    threshold : float
        Probability threshold used for ``lesion_mask``.
    """

    lesion_probability: torch.Tensor
    lesion_mask: torch.Tensor
    inpainted: torch.Tensor
    phi_ts: torch.Tensor
    phi_st: torch.Tensor
    atlas_to_scan: torch.Tensor
    scan_to_atlas: torch.Tensor
    jacobian: torch.Tensor
    threshold: float = 0.5

    def to(self, device: torch.device | str) -> Prediction:
        """Copy with every tensor moved to ``device`` (e.g. ``"cpu"`` before handing to a GUI)."""
        values = {
            f.name: (getattr(self, f.name).to(device) if f.name != "threshold" else self.threshold)
            for f in fields(self)
        }
        return Prediction(**values)  # type: ignore[arg-type]

    def item(self, index: int) -> Prediction:
        """The prediction for batch item ``index`` (batch dimension kept, size 1)."""
        values = {
            f.name: (
                getattr(self, f.name)[index : index + 1]
                if f.name != "threshold"
                else self.threshold
            )
            for f in fields(self)
        }
        return Prediction(**values)  # type: ignore[arg-type]


def _check_pair(scan: torch.Tensor, atlas: torch.Tensor) -> None:
    ndim = spatial_ndim(scan)
    if scan.shape[1] != 1 or atlas.shape[1] != 1:
        raise ValueError(
            f"scan and atlas must have one channel, got {scan.shape[1]} and {atlas.shape[1]}"
        )
    if atlas.dim() != ndim + 2 or atlas.shape[2:] != scan.shape[2:]:
        raise ValueError(
            "scan and atlas must be on the same working grid: scan spatial shape "
            f"{tuple(scan.shape[2:])}, atlas {tuple(atlas.shape[2:])}"
        )
    if atlas.shape[0] not in (1, scan.shape[0]):
        raise ValueError(
            f"atlas batch {atlas.shape[0]} must be 1 or the scan batch {scan.shape[0]}"
        )


class GIRNet(nn.Module):
    """RegNet, SegNet and InpNet, trained together without labels (see ``core.colearn``).

    Parameters
    ----------
    config : GIRNetConfig
        ``config.net`` sets the widths, ``config.data.ndim`` 2D or 3D networks.
    seed : int, optional
        Seed of the initial weights. The networks are built under ``torch.random.fork_rng``
        with the forked CPU generator seeded with ``seed``, so the global generator is left
        as it was and the weights equal those of ``torch.manual_seed(seed); GIRNet(config)``.
        None draws from the global generator.
    """

    def __init__(self, config: GIRNetConfig, seed: int | None = None) -> None:
        super().__init__()
        config.validate()
        self.config = config
        if seed is None:
            self._build(config)
            return
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an int or None, got {seed!r}")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self._build(config)

    def _build(self, config: GIRNetConfig) -> None:
        net, ndim = config.net, config.data.ndim
        self.ndim = ndim
        self.reg = RegNet(
            ndim=ndim,
            start_channels=net.reg_start_channels,
            range_flow=net.range_flow,
            head_std=net.reg_head_std,
        )
        self.seg = SegNet(ndim=ndim, enc=net.seg_enc, dec=net.seg_dec, init_bias=net.seg_init_bias)
        self.inp = InpNet(ndim=ndim, enc=net.inp_enc, dec=net.inp_dec)

    @property
    def networks(self) -> dict[str, nn.Module]:
        """The three networks by tag: ``{"reg": RegNet, "seg": SegNet, "inp": InpNet}``."""
        return {"reg": self.reg, "seg": self.seg, "inp": self.inp}

    @classmethod
    def from_checkpoint(cls, source: str | Path | Checkpoint) -> GIRNet:
        """Build the model stored in a checkpoint (path or loaded :class:`Checkpoint`).

        Raises
        ------
        CheckpointError
            If the file is unsafe/corrupt or its weights do not fit the stored configuration.
        """
        ckpt = source if isinstance(source, Checkpoint) else load_checkpoint(source)
        model = cls(ckpt.config)
        model.load_networks(
            ckpt.model, origin=str(source) if not isinstance(source, Checkpoint) else "checkpoint"
        )
        return model

    def load_networks(
        self, state: dict[str, dict[str, torch.Tensor]], origin: str = "weights"
    ) -> None:
        """Load ``{"reg": sd, "seg": sd, "inp": sd}`` strictly (missing/unexpected keys fail)."""
        for tag, net in self.networks.items():
            if tag not in state:
                raise CheckpointError(f"{origin}: no weights for {tag}")
            try:
                net.load_state_dict(state[tag], strict=True)
            except RuntimeError as err:
                raise CheckpointError(
                    f"{origin}: {tag} weights do not match the configured network: {err}"
                ) from err

    # ------------------------------------------------------------------ building blocks
    def register(self, scan: torch.Tensor, atlas: torch.Tensor) -> RegistrationFields:
        """Symmetric diffeomorphic registration of ``scan`` and ``atlas`` (SymNet).

        Velocities ``v_s, v_t`` are integrated by scaling and squaring to the half fields
        ``exp(v_s)``, ``exp(v_t)`` (mid-space); the full fields compose one half with the inverse
        of the other: ``phi_st = exp(v_s) ∘ exp(-v_t)`` and ``phi_ts = exp(v_t) ∘ exp(-v_s)``.
        With ``net.int_downsize = k > 1`` the velocities are integrated on a grid ``k`` times
        coarser and the displacements upsampled (VoxelMorph's ``int_downsize``), which cuts the
        cost of the 4 x ``int_steps`` resamplings by ``k^ndim``.

        Parameters
        ----------
        scan, atlas : torch.Tensor
            ``(B, 1, *spatial)`` on the same grid, intensities in [0, 1]. An atlas with batch 1
            is broadcast.
        """
        v_s, v_t = self._velocities(scan, atlas)
        return self.fields_from_velocities(v_s, v_t)

    def fields_from_velocities(self, v_s: torch.Tensor, v_t: torch.Tensor) -> RegistrationFields:
        """Half and full fields of the symmetric registration from given velocities.

        ``v_s, v_t``: ``(B, ndim, *spatial)`` in voxels (RegNet's output, or velocities refined
        by :func:`napari_girnet.core.instance.refine_registration`). Integration and composition
        run in fp32 outside autocast.
        """
        with torch.autocast(device_type=v_s.device.type, enabled=False):
            v_s, v_t = v_s.float(), v_t.float()
            steps = self.config.net.int_steps
            vs, vt = self._down(v_s), self._down(v_t)
            s_half, t_half = integrate(vs, steps), integrate(vt, steps)
            s_half_inv, t_half_inv = integrate(-vs, steps), integrate(-vt, steps)
            shape = v_s.shape[2:]
            return RegistrationFields(
                v_s=v_s,
                v_t=v_t,
                phi_s_half=self._up(s_half, shape),
                phi_t_half=self._up(t_half, shape),
                phi_st=self._up(compose(s_half, t_half_inv), shape),
                phi_ts=self._up(compose(t_half, s_half_inv), shape),
            )

    def atlas_to_scan_field(self, scan: torch.Tensor, atlas: torch.Tensor) -> torch.Tensor:
        """Only the displacement ``phi_ts`` (scan grid -> atlas voxels): half the integrations.

        Used for the inpainter's guide (the atlas warped onto the scan) in the SegNet and InpNet
        steps, where the other fields are not needed.
        """
        v_s, v_t = self._velocities(scan, atlas)
        with torch.autocast(device_type=scan.device.type, enabled=False):
            steps = self.config.net.int_steps
            t_half = integrate(self._down(v_t), steps)
            s_half_inv = integrate(-self._down(v_s), steps)
            return self._up(compose(t_half, s_half_inv), v_s.shape[2:])

    def _velocities(
        self, scan: torch.Tensor, atlas: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        _check_pair(scan, atlas)
        if atlas.shape[0] != scan.shape[0]:
            atlas = atlas.expand(scan.shape[0], *atlas.shape[1:])
        v_s, v_t = self.reg(scan, atlas)
        # integration and composition in fp32 even under autocast (sub-voxel accuracy)
        return v_s.float(), v_t.float()

    def _coarse_shape(self, shape: torch.Size | tuple[int, ...]) -> tuple[int, ...]:
        k = self.config.net.int_downsize
        return tuple(max(2, -(-s // k)) for s in shape)

    @staticmethod
    def _resize_field(field: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
        """Resize a voxel displacement/velocity field, rescaling its values to the new voxels."""
        src = field.shape[2:]
        if tuple(src) == tuple(size):
            return field
        mode = "bilinear" if len(size) == 2 else "trilinear"
        out = F.interpolate(field, size=size, mode=mode, align_corners=True)
        ratio = torch.tensor(
            [(n - 1) / max(s - 1, 1) for n, s in zip(size, src, strict=True)],
            dtype=out.dtype,
            device=out.device,
        )
        return out * ratio.view(1, -1, *([1] * len(size)))

    def _down(self, v: torch.Tensor) -> torch.Tensor:
        if self.config.net.int_downsize == 1:
            return v
        return self._resize_field(v, self._coarse_shape(v.shape[2:]))

    def _up(self, d: torch.Tensor, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
        return self._resize_field(d, tuple(shape))

    def segment(self, scan: torch.Tensor) -> torch.Tensor:
        """Lesion probability ``(B, 1, *spatial)`` in [0, 1] (SegNet)."""
        return self.seg(scan).float()

    def inpaint(
        self,
        scan: torch.Tensor,
        hole: torch.Tensor,
        atlas_warped: torch.Tensor,
        keep_outside: bool = True,
    ) -> torch.Tensor:
        """Fill ``hole`` in ``scan`` with healthy tissue guided by the warped atlas (InpNet).

        Parameters
        ----------
        scan : torch.Tensor
            ``(B, 1, *spatial)``.
        hole : torch.Tensor
            ``(B, 1, *spatial)`` 0/1 float (or bool) mask of the region to fill.
        atlas_warped : torch.Tensor
            Atlas warped onto the scan, ``(B or 1, 1, *spatial)``.
        keep_outside : bool
            GIRNet's ``ntuc`` ("normal tissue unchanged"): return the original scan outside the
            hole and the network output inside.
        """
        hole = hole.to(scan.dtype)
        if atlas_warped.shape[0] != scan.shape[0]:
            atlas_warped = atlas_warped.expand(scan.shape[0], *atlas_warped.shape[1:])
        fill = self.inp(scan * (1.0 - hole), hole, atlas_warped).float()
        if keep_outside:
            fill = scan * (1.0 - hole) + fill * hole
        return fill

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def predict_volume(
        self,
        scan: torch.Tensor,
        atlas: torch.Tensor,
        threshold: float | None = None,
        slice_batch: int = 8,
        autocast: Callable[[], AbstractContextManager] | None = None,
        fields: RegistrationFields | None = None,
    ) -> Prediction:
        """Predict on a 3D volume ``(1, 1, X, Y, Z)`` with 3D or 2D (axial slice) networks.

        3D networks: :meth:`predict`. 2D networks: axial slices ``[..., z]`` are predicted in
        batches of ``slice_batch`` and stacked; displacement fields get a zero component along
        the slice axis (in-plane registration), the Jacobian is the in-plane determinant.

        Parameters
        ----------
        scan, atlas : torch.Tensor
            ``(1, 1, X, Y, Z)`` on the same grid.
        autocast : callable, optional
            Returns the autocast context to run networks in (see ``Runtime.autocast``).
        fields : RegistrationFields, optional
            Registration to use instead of RegNet's (3D only), e.g. instance-optimised.
        """
        ctx = autocast or contextlib.nullcontext
        if self.ndim == 3:
            with ctx():
                return self.predict(scan, atlas, threshold, fields=fields)
        if fields is not None:
            raise ValueError("given registration fields are supported for 3D networks only")
        if scan.dim() != 5 or scan.shape[0] != 1:
            raise ValueError(f"predict_volume expects (1, 1, X, Y, Z), got {tuple(scan.shape)}")
        _check_pair(scan, atlas)
        n_slices = scan.shape[-1]
        parts: list[Prediction] = []
        for z0 in range(0, n_slices, slice_batch):
            z1 = min(z0 + slice_batch, n_slices)
            s2 = scan[0, :, :, :, z0:z1].permute(3, 0, 1, 2)  # (b, 1, X, Y)
            a2 = atlas[0, :, :, :, z0:z1].permute(3, 0, 1, 2)
            with ctx():
                parts.append(self.predict(s2, a2, threshold))

        def stack(name: str) -> torch.Tensor:
            t = torch.cat([getattr(p, name) for p in parts])  # (Z, C, X, Y)
            return t.permute(1, 2, 3, 0).unsqueeze(0)  # (1, C, X, Y, Z)

        def field3d(name: str) -> torch.Tensor:
            f = stack(name)
            return torch.cat([f, torch.zeros_like(f[:, :1])], dim=1)

        return Prediction(
            lesion_probability=stack("lesion_probability"),
            lesion_mask=stack("lesion_mask"),
            inpainted=stack("inpainted"),
            phi_ts=field3d("phi_ts"),
            phi_st=field3d("phi_st"),
            atlas_to_scan=stack("atlas_to_scan"),
            scan_to_atlas=stack("scan_to_atlas"),
            jacobian=stack("jacobian"),
            threshold=parts[0].threshold,
        )

    @torch.no_grad()
    def predict(
        self,
        scan: torch.Tensor,
        atlas: torch.Tensor,
        threshold: float | None = None,
        fields: RegistrationFields | None = None,
    ) -> Prediction:
        """Run the trained model on ``scan`` (``(B, 1, *spatial)``) and ``atlas``.

        ``fields`` replaces RegNet's registration (e.g. by instance-optimised fields).

        Raises
        ------
        ValueError
            If the inputs are not single-channel tensors on the same grid.
        """
        if threshold is None:
            threshold = self.config.loss.mask_threshold
        was_training = self.training
        self.eval()
        try:
            f = self.register(scan, atlas) if fields is None else fields
            atlas_b = atlas.expand(scan.shape[0], *atlas.shape[1:])
            atlas_to_scan = warp(atlas_b, f.phi_ts)
            prob = self.segment(scan)
            mask = prob > threshold
            inpainted = self.inpaint(scan, mask, atlas_to_scan, keep_outside=True)
            return Prediction(
                lesion_probability=prob,
                lesion_mask=mask,
                inpainted=inpainted,
                phi_ts=f.phi_ts,
                phi_st=f.phi_st,
                atlas_to_scan=atlas_to_scan,
                scan_to_atlas=warp(scan, f.phi_st),
                jacobian=jacobian_determinant(f.phi_ts),
                threshold=float(threshold),
            )
        finally:
            self.train(was_training)
