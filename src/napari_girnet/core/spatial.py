"""Spatial transforms on voxel grids: warping, scaling and squaring, composition, Jacobians.

All functions take tensors shaped ``(B, C, *spatial)`` with ``spatial`` = ``(X, Y, Z)`` in 3D or
``(H, W)`` in 2D, in the array's own axis order. A displacement field ``disp`` has shape
``(B, ndim, *spatial)``: channel ``k`` is the displacement along spatial axis ``k``, in **voxels
of the grid it is defined on**. A field maps each voxel ``x`` of its own grid to the point
``x + disp(x)`` of the image being sampled (backward / pull-back warping), exactly like
VoxelMorph's ``SpatialTransformer`` and MONAI's ``Warp``, but with zero padding.

One code path serves 2D and 3D. References: Balakrishnan et al., VoxelMorph, TMI 2019 (spatial
transformer); Arsigny et al. 2006 and Dalca et al. MICCAI 2018 (scaling and squaring of
stationary velocity fields); Mok & Chung, SymNet, CVPR 2020 (composition, Jacobian penalty).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "compose",
    "identity_grid",
    "integrate",
    "jacobian_determinant",
    "spatial_ndim",
    "warp",
]


def spatial_ndim(x: torch.Tensor) -> int:
    """Number of spatial dimensions of a ``(B, C, *spatial)`` tensor (2 or 3).

    Raises
    ------
    ValueError
        If the tensor is not 4D (2D images) or 5D (3D volumes).
    """
    if x.dim() not in (4, 5):
        raise ValueError(
            f"expected a (B, C, H, W) or (B, C, X, Y, Z) tensor, got shape {tuple(x.shape)}"
        )
    return x.dim() - 2


def identity_grid(
    shape: tuple[int, ...] | torch.Size,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Voxel coordinates of a grid.

    Parameters
    ----------
    shape : tuple of int
        Spatial shape ``(X, Y, Z)`` or ``(H, W)``.

    Returns
    -------
    torch.Tensor
        ``(1, ndim, *shape)``; channel ``k`` holds the index along axis ``k`` (voxels).
    """
    axes = [torch.arange(s, device=device, dtype=dtype) for s in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=0).unsqueeze(0)


def _check_field(image: torch.Tensor, disp: torch.Tensor, what: str = "displacement") -> int:
    ndim = spatial_ndim(image)
    if disp.dim() != ndim + 2 or disp.shape[1] != ndim:
        raise ValueError(
            f"{what} must have shape (B, {ndim}, *spatial) for a {ndim}D image, "
            f"got {tuple(disp.shape)}"
        )
    nb_img, nb_disp = image.shape[0], disp.shape[0]
    if nb_img != nb_disp and 1 not in (nb_img, nb_disp):
        raise ValueError(f"batch sizes differ: image has {nb_img}, {what} has {nb_disp}")
    return ndim


def _sampling_grid(disp: torch.Tensor) -> torch.Tensor:
    """Convert a voxel displacement ``(B, ndim, *S)`` to a ``grid_sample`` grid ``(B, *S, ndim)``.

    Normalised coordinates use ``align_corners=True``: voxel 0 -> -1, voxel ``s - 1`` -> +1.
    ``grid_sample`` wants the last axis first (x = W), so the channel order is reversed.
    """
    shape = disp.shape[2:]
    ndim = len(shape)
    coords = identity_grid(shape, device=disp.device, dtype=disp.dtype) + disp
    scale = torch.tensor(
        [2.0 / max(s - 1, 1) for s in shape], device=disp.device, dtype=disp.dtype
    ).view(1, ndim, *([1] * ndim))
    norm = coords * scale - 1.0
    return norm.permute(0, *range(2, ndim + 2), 1).flip(-1)


def warp(
    image: torch.Tensor,
    disp: torch.Tensor,
    mode: str = "bilinear",
    padding_mode: str = "zeros",
) -> torch.Tensor:
    """Warp ``image`` with a voxel displacement field (backward warping).

    ``out(x) = image(x + disp(x))`` for every voxel ``x`` of the field's grid.

    Parameters
    ----------
    image : torch.Tensor
        ``(B, C, *spatial_in)``; may live on a different grid size than ``disp``.
    disp : torch.Tensor
        ``(B, ndim, *spatial_out)``, voxels of ``image``'s grid, channel order = spatial axes.
        A batch of 1 is broadcast against the image's batch and vice versa.
    mode : {"bilinear", "nearest"}
        ``"bilinear"`` is (tri)linear interpolation for images; ``"nearest"`` for label maps
        (the label dtype is preserved).
    padding_mode : {"zeros", "border", "reflection"}
        Value for points that fall outside the image; GIRNet/SymNet use zeros.

    Returns
    -------
    torch.Tensor
        ``(B, C, *spatial_out)``, same dtype as ``image``.

    Raises
    ------
    ValueError
        If shapes are inconsistent or ``mode`` is unknown.
    """
    if mode not in ("bilinear", "nearest"):
        raise ValueError(f"warp mode must be 'bilinear' or 'nearest', got {mode!r}")
    _check_field(image, disp)
    b = max(image.shape[0], disp.shape[0])
    if image.shape[0] != b:
        image = image.expand(b, *image.shape[1:])
    if disp.shape[0] != b:
        disp = disp.expand(b, *disp.shape[1:])
    in_dtype = image.dtype
    work_dtype = disp.dtype if disp.dtype.is_floating_point else torch.float32
    if work_dtype in (torch.float16, torch.bfloat16):
        work_dtype = torch.float32
    grid = _sampling_grid(disp.to(work_dtype))
    src = image if in_dtype == work_dtype else image.to(work_dtype)
    out = F.grid_sample(src, grid, mode=mode, padding_mode=padding_mode, align_corners=True)
    if not in_dtype.is_floating_point:
        return out.round().to(in_dtype)
    return out.to(in_dtype)


def integrate(velocity: torch.Tensor, steps: int = 7) -> torch.Tensor:
    """Exponentiate a stationary velocity field by scaling and squaring.

    ``u = v / 2**steps``, then ``steps`` times ``u <- u + u(x + u(x))``. The result is the
    displacement of the time-1 flow of ``v``, a diffeomorphism for smooth enough ``v``; its
    inverse is (approximately) ``integrate(-v)``.

    Parameters
    ----------
    velocity : torch.Tensor
        ``(B, ndim, *spatial)``, voxels.
    steps : int
        Number of squarings (GIRNet/SymNet: 7). ``0`` returns ``velocity`` unchanged.

    Returns
    -------
    torch.Tensor
        Displacement ``(B, ndim, *spatial)`` in voxels, same grid.
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    _check_field(velocity, velocity, "velocity")
    disp = velocity / (2.0**steps)
    for _ in range(steps):
        disp = disp + warp(disp, disp)
    return disp


def compose(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Compose two displacement fields: apply ``b`` first, then ``a``.

    The returned displacement ``c`` satisfies ``x + c(x) = y + a(y)`` with ``y = x + b(x)``,
    i.e. ``c = b + a ∘ (id + b)``. ``b`` is defined on the output grid and points into the grid
    where ``a`` is defined; ``warp(image, c) == warp(warp(image, a), b)`` up to interpolation.

    Parameters
    ----------
    a, b : torch.Tensor
        ``(B, ndim, *spatial)``, voxels.
    """
    _check_field(b, a)
    return b + warp(a, b)


def jacobian_determinant(disp: torch.Tensor) -> torch.Tensor:
    """Jacobian determinant of the map ``x -> x + disp(x)`` by forward differences.

    Forward differences ``u(x + e_k) - u(x)`` are used everywhere except at the last voxel of an
    axis, which reuses the previous difference (one-sided), so an affine displacement gives its
    exact analytic determinant at every voxel.

    Parameters
    ----------
    disp : torch.Tensor
        ``(B, ndim, *spatial)`` in voxels (ndim 2 or 3; each spatial size >= 2).

    Returns
    -------
    torch.Tensor
        ``(B, 1, *spatial)``; ``<= 0`` marks folding, ``> 1`` local expansion of the grid on which
        the field is defined relative to the sampled image.
    """
    ndim = spatial_ndim(disp)
    if disp.shape[1] != ndim:
        raise ValueError(f"displacement must have {ndim} channels, got {disp.shape[1]}")
    if min(disp.shape[2:]) < 2:
        raise ValueError(f"each spatial size must be >= 2, got {tuple(disp.shape[2:])}")
    grads = []  # grads[k] = d(disp)/dx_k, shape (B, ndim, *spatial)
    for k in range(ndim):
        axis = 2 + k
        d = torch.diff(disp, dim=axis)
        last = d.narrow(axis, d.shape[axis] - 1, 1)
        grads.append(torch.cat([d, last], dim=axis))
    # J[i][k] = delta_ik + d u_i / d x_k
    jac = [[grads[k][:, i] + (1.0 if i == k else 0.0) for k in range(ndim)] for i in range(ndim)]
    if ndim == 2:
        det = jac[0][0] * jac[1][1] - jac[0][1] * jac[1][0]
    else:
        det = (
            jac[0][0] * (jac[1][1] * jac[2][2] - jac[1][2] * jac[2][1])
            - jac[0][1] * (jac[1][0] * jac[2][2] - jac[1][2] * jac[2][0])
            + jac[0][2] * (jac[1][0] * jac[2][1] - jac[1][1] * jac[2][0])
        )
    return det.unsqueeze(1)
