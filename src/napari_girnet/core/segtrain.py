"""Supervised SegNet warm start on pseudo-pathological cases, and lesion-centred crop samplers.

GIRNet trains SegNet without labels (the minimal-mutual-information game, ``core.colearn``).
On CPU schedules of a few hundred steps that game falls into its empty-mask fixed point: an
empty hole is inpainted perfectly, so the foreground term has no gradient (``docs/method.md``,
deviations). Pseudo-pathological cases carry their lesion mask by construction, so SegNet can
be warm-started with supervision first — the public GIRNet code's ``gt_seg`` option (BCE
against the pseudo mask; its "Supervised/GT" column of Table 1), here BCE + soft Dice — and
then handed to the unsupervised game. Figures obtained with this warm start are reported
separately because they use pseudo masks.

Training runs on random crops (a fully convolutional SegNet without normalisation layers
applies unchanged to the whole working grid), which costs about a quarter of a whole-volume
step on the 80 x 96 x 80 grid. Crops are lesion-centred with probability ``lesion_prob`` and
uniform otherwise, so healthy tissue is seen as negatives.

Every random choice comes from a ``torch.Generator`` seeded by ``(seed, step)``: the data of a
step is a pure function of the step, and a resumed run repeats the uninterrupted trajectory.
Only torch is imported here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from .config import GIRNetConfig
from .model import GIRNet
from .runtime import Runtime, resolve_runtime

__all__ = [
    "CropSampler",
    "SegSampler",
    "SupervisedSegTrainer",
    "crop_starts",
    "kaiming_init",
    "supervised_seg_loss",
]

log = logging.getLogger(__name__)

SegSampler = Callable[[int], tuple[torch.Tensor, ...]]
"""``sampler(step) -> (scan, mask, ...)``: ``(B, 1, *S)`` float tensors, scan in [0, 1], mask
0/1; further tensors (e.g. an atlas and a guide for co-learning) are cropped alike."""


def supervised_seg_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    w_dice: float = 1.0,
    smooth: float = 1.0,
    empty_dice: bool = False,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """BCE + soft Dice of SegNet's lesion logits against a 0/1 mask.

    ``BCE`` is computed from the logits (``binary_cross_entropy_with_logits``, voxel mean): a
    BCE on clamped probabilities has no gradient once the sigmoid saturates below the clamp,
    and a SegNet pushed there by the many lesion-free voxels never comes back (measured: every
    prediction was 0 from step ~10 on at lr 1e-3). The soft Dice
    ``1 - (2 sum(p t) + s) / (sum(p) + sum(t) + s)`` with ``p = sigmoid(logits)`` is taken per
    batch item (sums over the spatial axes) and averaged over the items whose mask is not
    empty; lesion-free items (healthy brains, uniform crops) are scored by the BCE alone, and a
    batch without any lesion has no Dice term.

    Why not a Dice over lesion-free crops: there it is ``1 - s / (sum(p) + s)``, near 1 unless
    the *whole* crop holds less than about ``s`` voxels of probability (every logit below about
    -12 on a 48 x 64 x 48 crop). Its value says nothing about the segmentation, so with batch 1
    it put a soft Dice of ~0 into the training log for every lesion-free step (30 % of the crops
    at ``lesion_prob`` 0.7, plus the healthy brains), and once SegNet is sharp its gradient
    asks for an empty crop rather than a correct one. Measured on 24 pseudo cases (32 x 48 x 32
    crops, batch 1, lr 1e-3), the two forms gave the same first 150 steps: this is not what kept
    SegNet at its constant prediction (issue #9). ``empty_dice=True`` keeps the former
    batch-wide Dice for ablation.

    Parameters
    ----------
    logits : torch.Tensor
        ``(B, 1, *S)`` SegNet logits (``SegNet.forward_logits``, with gradient).
    target : torch.Tensor
        ``(B, 1, *S)`` 0/1 mask.
    w_dice : float
        Weight of the soft Dice term.
    smooth : float
        Additive smoothing of the Dice ratio, in voxels.
    empty_dice : bool
        Use one Dice over the whole batch, lesion-free items included (the former loss).

    Returns
    -------
    loss : torch.Tensor
        Scalar ``bce + w_dice (1 - soft_dice)``.
    terms : dict of str to torch.Tensor
        ``bce``, ``soft_dice`` (mean over the items with a lesion; NaN when there is none and
        ``empty_dice`` is False), ``lesion_items`` (their number), ``mask_fraction`` (mean
        probability) and ``target_fraction`` (mean of the mask).
    """
    z = logits.float()
    t = target.float()
    bce = F.binary_cross_entropy_with_logits(z, t)
    p = torch.sigmoid(z)
    if empty_dice:
        inter = (p * t).sum()
        soft_dice = (2.0 * inter + smooth) / (p.sum() + t.sum() + smooth)
        dice_term = 1.0 - soft_dice
        n_pos = (t.flatten(1).sum(1) > 0).sum()
    else:
        pf, tf = p.flatten(1), t.flatten(1)
        pos = tf.sum(1) > 0
        n_pos = pos.sum()
        if bool(pos.any()):
            pp, tp = pf[pos], tf[pos]
            per_item = (2.0 * (pp * tp).sum(1) + smooth) / (pp.sum(1) + tp.sum(1) + smooth)
            soft_dice = per_item.mean()
            dice_term = 1.0 - soft_dice
        else:
            soft_dice = torch.full((), float("nan"), device=z.device)
            dice_term = torch.zeros((), device=z.device)
    loss = bce + w_dice * dice_term
    terms = {
        "bce": bce.detach(),
        "soft_dice": soft_dice.detach(),
        "lesion_items": n_pos.detach().float(),
        "mask_fraction": p.detach().mean(),
        "target_fraction": t.mean(),
    }
    return loss, terms


def kaiming_init(module: torch.nn.Module, seed: int, negative_slope: float = 0.2) -> None:
    """He-normal weights (fan-in, leaky ReLU ``negative_slope``) and zero biases for every conv.

    The reference initialisation N(0, 0.02) of a 10-level U-Net without normalisation shrinks
    the signal by ~0.3 per layer, so SegNet's output starts as its bias alone and a short
    supervised schedule barely moves it (measured: mask fraction 0.0460 -> 0.0457 over 50
    steps at lr 1e-3). The head's bias (``net.seg_init_bias``) is kept. Uses a local generator
    seeded by ``seed``.
    """
    g = torch.Generator().manual_seed(int(seed))
    convs = [m for m in module.modules() if isinstance(m, torch.nn.modules.conv._ConvNd)]
    for i, conv in enumerate(convs):
        torch.nn.init.kaiming_normal_(
            conv.weight, a=negative_slope, mode="fan_in", nonlinearity="leaky_relu", generator=g
        )
        if conv.bias is not None and i < len(convs) - 1:
            torch.nn.init.zeros_(conv.bias)


def crop_starts(
    shape: Sequence[int],
    crop: Sequence[int],
    generator: torch.Generator,
    centre: Sequence[int] | None = None,
) -> tuple[int, ...]:
    """Start indices of a crop of size ``crop`` inside ``shape`` (voxels, array axis order).

    With ``centre`` the crop contains that voxel at a uniformly random offset; otherwise the
    start is uniform. Crops never leave the array.

    Raises
    ------
    ValueError
        If the crop is larger than the array along an axis.
    """
    if len(shape) != len(crop):
        raise ValueError(f"crop {tuple(crop)} and array shape {tuple(shape)} differ in rank")
    starts = []
    for a, (n, c) in enumerate(zip(shape, crop, strict=True)):
        if c > n:
            raise ValueError(f"crop {tuple(crop)} larger than the array {tuple(shape)} on axis {a}")
        if centre is None:
            lo, hi = 0, n - c
        else:
            lo, hi = max(0, centre[a] - c + 1), min(n - c, centre[a])
        starts.append(int(torch.randint(lo, hi + 1, (1,), generator=generator)))
    return tuple(starts)


class CropSampler:
    """Deterministic crops of (scan, mask, extra...) volumes, reshuffled every epoch.

    Item ``b`` of step ``t`` is volume ``perm_e[i % n]`` with ``i = t B + b`` (as
    :class:`~napari_girnet.core.colearn.PairSampler`); its crop is centred on a random lesion
    voxel with probability ``lesion_prob`` (when the mask is non-empty), uniform otherwise; with
    ``flip`` the crop is mirrored along ``flip_axis`` (left-right on the RAS working grid) with
    probability 0.5.

    Parameters
    ----------
    volumes : sequence of tuple of torch.Tensor
        Per case ``(scan, mask, *extra)``, each ``(1, *S)`` with the same ``S``; extras whose
        leading size differs are not allowed (stack channels instead).
    crop : tuple of int
        Crop size in voxels (multiples of 16 for the 4-level U-Nets).
    batch_size, seed : int
    lesion_prob : float
    flip : bool
    flip_axis : int
        Spatial axis mirrored by the flip augmentation (0 = left-right on RAS grids).
    """

    def __init__(
        self,
        volumes: Sequence[tuple[torch.Tensor, ...]],
        crop: Sequence[int],
        batch_size: int = 1,
        seed: int = 0,
        lesion_prob: float = 0.7,
        flip: bool = True,
        flip_axis: int = 0,
    ) -> None:
        if not volumes:
            raise ValueError("CropSampler needs at least one volume")
        shape = volumes[0][0].shape
        for i, vols in enumerate(volumes):
            for v in vols:
                if v.shape != shape:
                    raise ValueError(
                        f"case {i}: tensor shape {tuple(v.shape)} differs from {tuple(shape)}"
                    )
        self.volumes = [tuple(v.float() for v in vols) for vols in volumes]
        self.crop = tuple(int(c) for c in crop)
        self.batch_size = batch_size
        self.seed = seed
        self.lesion_prob = lesion_prob
        self.flip = flip
        self.flip_axis = flip_axis
        self._lesion_voxels = [torch.nonzero(vols[1][0] > 0.5) for vols in self.volumes]

    def __len__(self) -> int:
        return len(self.volumes)

    def _index(self, i: int) -> int:
        n = len(self.volumes)
        epoch, pos = divmod(i, n)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return int(torch.randperm(n, generator=g)[pos])

    def item(self, step: int, b: int) -> tuple[torch.Tensor, ...]:
        """Cropped tensors ``(1, *crop)`` of batch item ``b`` at ``step``."""
        idx = self._index(step * self.batch_size + b)
        g = torch.Generator().manual_seed((self.seed * 7_919 + step) * 131 + b)
        vols = self.volumes[idx]
        lesion = self._lesion_voxels[idx]
        centre = None
        if len(lesion) and float(torch.rand(1, generator=g)) < self.lesion_prob:
            centre = lesion[int(torch.randint(len(lesion), (1,), generator=g))].tolist()
        starts = crop_starts(vols[0].shape[1:], self.crop, g, centre)
        sl = (slice(None), *(slice(s, s + c) for s, c in zip(starts, self.crop, strict=True)))
        out = [v[sl] for v in vols]
        if self.flip and float(torch.rand(1, generator=g)) < 0.5:
            out = [v.flip(1 + self.flip_axis) for v in out]
        return tuple(out)

    def __call__(self, step: int) -> tuple[torch.Tensor, ...]:
        items = [self.item(step, b) for b in range(self.batch_size)]
        return tuple(torch.stack(parts) for parts in zip(*items, strict=True))


@dataclass
class SegTrainReport:
    """One supervised step: ``step`` (1-based), loss, terms, lr, seconds."""

    step: int
    total_steps: int
    loss: float
    terms: dict[str, float] = field(default_factory=dict)
    lr: float = 0.0
    seconds: float = 0.0
    checkpoint: Path | None = None


class SupervisedSegTrainer:
    """SegNet trained alone with :func:`supervised_seg_loss` (AdamW, poly decay), resumable.

    RegNet and InpNet are carried unchanged, so every checkpoint is a whole GIRNet model
    (``core.checkpoint`` format; ``trainer["phase"] = "seg-supervised"``).

    Parameters
    ----------
    model : GIRNet
    sampler : SegSampler
        ``sampler(step) -> (scan, mask, ...)``.
    steps : int
        Planned steps (poly-decay horizon).
    lr : float
        Initial learning rate (AdamW, weight decay ``config.schedule.weight_decay``).
    w_dice : float
        Weight of the soft Dice term.
    empty_dice : bool
        Score lesion-free crops with the Dice term too (the former batch-wide Dice; see
        :func:`supervised_seg_loss`, for ablation only).
    reinit : bool
        Re-initialise SegNet with :func:`kaiming_init` first (a resumed run then loads its
        checkpoint over it).
    checkpoint_dir : path, optional
        ``last.pt`` is written there every ``checkpoint_every`` steps and at the end.
    config : GIRNetConfig, optional
        Defaults to ``model.config`` (runtime and weight decay).
    """

    PHASE = "seg-supervised"

    def __init__(
        self,
        model: GIRNet,
        sampler: SegSampler,
        steps: int,
        lr: float = 1e-3,
        *,
        w_dice: float = 1.0,
        empty_dice: bool = False,
        reinit: bool = False,
        checkpoint_dir: str | Path | None = None,
        checkpoint_every: int = 25,
        config: GIRNetConfig | None = None,
        provenance: dict[str, Any] | None = None,
    ) -> None:
        self.config = (config or model.config).validate()
        self.model = model
        self.sampler = sampler
        self.total_steps = int(steps)
        self.lr = float(lr)
        self.w_dice = float(w_dice)
        self.empty_dice = bool(empty_dice)
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.checkpoint_every = int(checkpoint_every)
        self.provenance = dict(provenance or {})
        if reinit:
            kaiming_init(self.model.seg, self.config.runtime.seed)
        self.runtime: Runtime = resolve_runtime(self.config.runtime)
        self.runtime.prepare_module(self.model)
        self.optimizer = torch.optim.AdamW(
            self.model.seg.parameters(), lr=self.lr, weight_decay=self.config.schedule.weight_decay
        )
        self.step = 0

    def learning_rate(self) -> float:
        frac = min(self.step / max(self.total_steps, 1), 1.0)
        return self.lr * (1.0 - frac) ** self.config.schedule.poly_power

    def train_step(self) -> SegTrainReport:
        """One AdamW update of SegNet on the batch of the current step."""
        t0 = time.perf_counter()
        batch = self.sampler(self.step)
        scan, mask = (self.runtime.prepare(t) for t in batch[:2])
        seg = self.model.seg
        seg.train()
        with self.runtime.autocast():
            logits = seg.forward_logits(scan)
        loss, terms = supervised_seg_loss(logits, mask, self.w_dice, empty_dice=self.empty_dice)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite supervised SegNet loss at step {self.step + 1}")
        lr = self.learning_rate()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.step += 1
        return SegTrainReport(
            step=self.step,
            total_steps=self.total_steps,
            loss=float(loss.detach()),
            terms={k: float(v) for k, v in terms.items()},
            lr=lr,
            seconds=time.perf_counter() - t0,
        )

    def steps(self, n: int | None = None) -> Iterator[SegTrainReport]:
        """Train until ``total_steps`` (or ``n`` more steps), yielding one report per step."""
        end = self.total_steps if n is None else min(self.total_steps, self.step + n)
        while self.step < end:
            rep = self.train_step()
            if self.step % self.checkpoint_every == 0 or self.step == end:
                rep.checkpoint = self.save_last()
            yield rep

    # ------------------------------------------------------------------ state
    def checkpoint(self) -> Checkpoint:
        return Checkpoint(
            config=self.config,
            model={t: net.state_dict() for t, net in self.model.networks.items()},
            step=self.step,
            trainer={
                "phase": self.PHASE,
                "optim": {"seg": self.optimizer.state_dict()},
                "total_steps": self.total_steps,
            },
            provenance={**self.provenance, "seed": self.config.runtime.seed},
        )

    def save_last(self) -> Path | None:
        if self.checkpoint_dir is None:
            return None
        return save_checkpoint(self.checkpoint(), self.checkpoint_dir / "last.pt")

    def load_state(self, ckpt: Checkpoint) -> None:
        """Restore weights, optimizer state and step from a checkpoint of this phase.

        Raises
        ------
        CheckpointError
            If the checkpoint is of another phase or its weights do not fit.
        """
        if (ckpt.trainer or {}).get("phase") != self.PHASE:
            raise CheckpointError(
                f"checkpoint of phase {ckpt.trainer.get('phase')!r}, not {self.PHASE!r}"
            )
        self.model.load_networks(ckpt.model)
        self.runtime.prepare_module(self.model)
        try:
            self.optimizer.load_state_dict(ckpt.trainer["optim"]["seg"])
        except (KeyError, ValueError) as err:
            raise CheckpointError(f"optimizer state does not match SegNet: {err}") from err
        self.step = int(ckpt.step)

    def resume_from(self, path: str | Path) -> bool:
        """Load ``path`` when it exists (returns True), else leave the fresh state (False)."""
        p = Path(path)
        if not p.is_file():
            return False
        self.load_state(load_checkpoint(p))
        log.info("supervised SegNet resumed from %s at step %d", p, self.step)
        return True
