"""Regularisers of deformation fields (SymNet's, as used by GIRNet).

All take voxel-unit fields ``(B, ndim, *spatial)`` (2D or 3D) and return scalar tensors.

References: Mok & Chung, "Fast Symmetric Diffeomorphic Image Registration with Convolutional
Neural Networks", CVPR 2020 (smoothness of the velocity fields, negative-Jacobian "local
orientation consistency" penalty, magnitude balance between the two half fields).
"""

from __future__ import annotations

import torch

from .spatial import jacobian_determinant, spatial_ndim

__all__ = ["magnitude", "negative_jacobian", "smoothness"]


def smoothness(field: torch.Tensor) -> torch.Tensor:
    """Mean squared forward difference of a field, averaged over the spatial axes.

    ``(1/ndim) * sum_k mean((field(x + e_k) - field(x))^2)``, in voxels^2. GIRNet applies it to the
    stationary velocity fields (weight 3).
    """
    ndim = spatial_ndim(field)
    total = field.new_zeros(())
    for k in range(ndim):
        total = total + torch.diff(field.float(), dim=2 + k).pow(2).mean()
    return total / ndim


def negative_jacobian(disp: torch.Tensor) -> torch.Tensor:
    """Mean of ``relu(-det J)`` of the map ``x -> x + disp(x)`` (forward differences).

    Zero for any field without folding; GIRNet weight 1 (SymNet repository: 100).
    """
    return torch.relu(-jacobian_determinant(disp.float())).mean()


def magnitude(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """SymNet's magnitude balance ``| sum|a| - sum|b| | / numel(a)`` of the two half fields.

    Keeps the mid-space in the middle: both images travel the same total distance.
    """
    if a.shape != b.shape:
        raise ValueError(f"magnitude: shapes differ {tuple(a.shape)} vs {tuple(b.shape)}")
    return (a.float().abs().sum() - b.float().abs().sum()).abs() / a.numel()
