"""Inpainter pretraining on random box holes (GIRNet's copy-paste pretraining).

Before co-learning, InpNet learns to fill a random axis-aligned box of a brain with the
corresponding tissue of a guide image (the atlas, histogram-matched to the scan) while copying
the rest of the scan: target = ``scan * (1 - m) + guide * m``, MSE loss, for the box and for its
complement. Box side lengths are independent fractions of each axis drawn from
``linspace(0.1, 0.8, 5)`` with a uniform centre (inpainter pretraining of the upstream code,
github.com/ly1998117/GIRNet). A pretrained inpainter keeps SegNet from winning the
mutual-information game against an inpainter that can only produce noise — and, on a single scan,
from an inpainter that has memorised it.
"""

from __future__ import annotations

import torch

from .runtime import Runtime
from .similarity import histogram_match, mse

__all__ = ["BOX_FRACTIONS", "pretrain_inpainter_loss", "random_box_mask"]

BOX_FRACTIONS: tuple[float, ...] = (0.1, 0.275, 0.45, 0.625, 0.8)


def random_box_mask(
    shape: tuple[int, ...],
    generator: torch.Generator,
    batch: int = 1,
    fractions: tuple[float, ...] = BOX_FRACTIONS,
) -> torch.Tensor:
    """Random axis-aligned box masks.

    Parameters
    ----------
    shape : tuple of int
        Spatial shape (2D or 3D).
    generator : torch.Generator
        Source of randomness (seed it from ``(seed, step)`` for reproducibility).
    batch : int
        Number of masks.
    fractions : tuple of float
        Candidate side lengths as fractions of each axis, drawn independently per axis.

    Returns
    -------
    torch.Tensor
        ``(batch, 1, *shape)`` float32, 1 inside the box.
    """
    masks = torch.zeros((batch, 1, *shape))
    for b in range(batch):
        sl: list[slice] = []
        for size in shape:
            frac = fractions[int(torch.randint(len(fractions), (1,), generator=generator))]
            side = max(1, round(frac * size))
            start = int(torch.randint(0, size - side + 1, (1,), generator=generator))
            sl.append(slice(start, start + side))
        masks[(b, 0, *sl)] = 1.0  # type: ignore[index]
    return masks


def pretrain_inpainter_loss(
    inp: torch.nn.Module,
    scan: torch.Tensor,
    guide: torch.Tensor,
    hole: torch.Tensor,
    runtime: Runtime,
    histmatch: bool = True,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Copy-paste loss for one batch: box and complement filled in one batched forward pass.

    Parameters
    ----------
    inp : InpNet
    scan : torch.Tensor
        ``(B, 1, *S)`` healthy (or pathological) scans in [0, 1].
    guide : torch.Tensor
        ``(B or 1, 1, *S)`` guide image on the same grid: the atlas warped onto the scan by
        the current RegNet (as GIRNet's pretraining uses a pretrained SymNet).
    hole : torch.Tensor
        ``(B, 1, *S)`` box masks.
    histmatch : bool
        Histogram-match the guide to the scan (as the co-learning target ``T^M``).

    Returns
    -------
    (loss, terms)
        ``MSE(fill_box, target_box) + MSE(fill_complement, target_complement)``.
    """
    b = scan.shape[0]
    guide = guide.expand(b, *guide.shape[1:])
    if histmatch:
        guide = histogram_match(guide, scan)
    holes = torch.cat([hole, 1.0 - hole])
    scans = torch.cat([scan, scan])
    guides = torch.cat([guide, guide])
    targets = scans * (1.0 - holes) + guides * holes
    with runtime.autocast():
        fill = inp(scans * (1.0 - holes), holes, guides).float()
    loss_fg = mse(fill[:b], targets[:b])
    loss_bg = mse(fill[b:], targets[b:])
    return loss_fg + loss_bg, {"box_mse": loss_fg.detach(), "complement_mse": loss_bg.detach()}
