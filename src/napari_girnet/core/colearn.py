"""Co-learning of RegNet, SegNet and InpNet (GIRNet's alternating schedule).

One network takes one optimizer step per batch, cycling ``reg x k_reg -> seg x k_seg -> inp x
k_inp`` (paper configuration 1/2/2: ``reg, seg, seg, inp, inp, reg, ...``); the other two are
frozen (eval mode, no gradients) and run without autograd. Per step (Liu & Gu, MICCAI 2023,
training procedure of the Method section; upstream code github.com/ly1998117/GIRNet):

``reg``
    flows from the raw (scan, atlas); similarity terms on the inpainted scan (lesion filled by
    InpNet from SegNet's hard mask, original tissue kept outside) -> SymNet loss.
``seg``
    soft mask ``M = SegNet(scan)``; fills of the mask and of its complement by InpNet (no
    gradient) -> MMI loss; SegNet learns only through ``M`` as a weight map.
``inp``
    hard mask and atlas warped to the scan (no gradient); InpNet fills the mask and its
    complement -> LNCC + 100 x MSE to the histogram-matched composite target.

:meth:`CoLearner.steps` is a generator yielding a :class:`TrainingReport` per step, so the
napari worker, the CLI and tests drive the same loop. :meth:`CoLearner.request_stop` (thread
safe) ends it cleanly at the next step boundary with a checkpoint. Data come from a *sampler*,
a function of the global step number, so that the data order is a pure function of
``(seed, step)`` and a resumed run continues the exact trajectory of an uninterrupted one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import distributed
from .checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from .config import GIRNetConfig
from .losses import inpainting_loss, registration_loss, segmentation_loss
from .model import GIRNet, Prediction
from .pretrain import pretrain_inpainter_loss, random_box_mask
from .runtime import Runtime, frozen, resolve_runtime
from .similarity import histogram_match
from .spatial import warp

__all__ = ["TAGS", "CoLearner", "PairSampler", "Sampler", "TrainingReport", "schedule_tag"]

log = logging.getLogger(__name__)

TAGS: tuple[str, ...] = ("reg", "seg", "inp")
Sampler = Callable[[int], tuple[torch.Tensor, ...]]
"""``sampler(step) -> (scan, atlas)`` or ``(scan, atlas, guide)``: ``(B, 1, *S)`` and
``(B or 1, 1, *S)`` CPU tensors in [0, 1] for global step ``step``; must be a deterministic
function of ``step``. ``guide`` (optional) is the atlas already warped onto each scan by a fixed
registration; SegNet and InpNet steps then use it instead of RegNet's."""


@dataclass(frozen=True)
class TrainingReport:
    """What one co-learning step (or the end of a run) reports.

    Attributes
    ----------
    step : int
        Steps completed so far (1-based after the first step).
    total_steps : int
        Planned steps of the run.
    phase : str
        ``"reg"``, ``"seg"``, ``"inp"`` or ``"pretrain"`` for a step; ``"stopped"`` or
        ``"finished"`` for the final report.
    loss : float
        Total loss of the network that stepped (NaN for final reports).
    terms : dict
        Loss terms of that network.
    lr : dict
        Current learning rate per network.
    seconds : float
        Wall time of this step.
    elapsed : float
        Wall time since :meth:`CoLearner.steps` started.
    preview : Prediction or None
        Prediction on the preview pair (CPU tensors), every ``preview_every`` steps.
    checkpoint : pathlib.Path or None
        Checkpoint written at this step, if any.
    """

    step: int
    total_steps: int
    phase: str
    loss: float
    terms: dict[str, float] = field(default_factory=dict)
    lr: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    elapsed: float = 0.0
    preview: Prediction | None = None
    checkpoint: Path | None = None

    @property
    def is_final(self) -> bool:
        return self.phase in ("stopped", "finished")


def schedule_tag(step: int, k_reg: int, k_seg: int, k_inp: int) -> str:
    """Network that trains at 0-based ``step``: cycles ``reg x k_reg, seg x k_seg, inp x k_inp``."""
    cycle = ["reg"] * k_reg + ["seg"] * k_seg + ["inp"] * k_inp
    return cycle[step % len(cycle)]


class PairSampler:
    """Deterministic sampler over fixed (scan, atlas) pairs, reshuffled every epoch.

    Batch item ``b`` of step ``t`` is sample ``perm_e[i % n]`` with ``i = t * B + b``,
    ``e = i // n`` and ``perm_e`` a permutation seeded by ``(seed, e)`` — a pure function of the
    step, so resuming never changes the data order.

    Parameters
    ----------
    scans : sequence of torch.Tensor
        Each ``(1, *S)`` (channel-first, no batch), intensities in [0, 1].
    atlas : torch.Tensor or sequence of torch.Tensor
        One ``(1, *S)`` atlas shared by all scans, or one per scan.
    batch_size : int
    seed : int
    """

    def __init__(
        self,
        scans: Sequence[torch.Tensor],
        atlas: torch.Tensor | Sequence[torch.Tensor],
        batch_size: int = 1,
        seed: int = 0,
    ) -> None:
        if len(scans) == 0:
            raise ValueError("PairSampler needs at least one scan")
        shape = scans[0].shape
        for i, s in enumerate(scans):
            if s.shape != shape or s.dim() not in (3, 4) or s.shape[0] != 1:
                raise ValueError(
                    f"scan {i} has shape {tuple(s.shape)}; all scans must be (1, *spatial) with "
                    f"the same shape {tuple(shape)}"
                )
        self.scans = [s.float() for s in scans]
        if isinstance(atlas, torch.Tensor):
            self.atlases = None
            self.atlas: torch.Tensor | None = atlas.float()
            if self.atlas.shape != shape:
                raise ValueError(
                    f"atlas shape {tuple(self.atlas.shape)} != scan shape {tuple(shape)}"
                )
        else:
            if len(atlas) != len(scans):
                raise ValueError("give one atlas, or one atlas per scan")
            self.atlases = [a.float() for a in atlas]
            self.atlas = None
        self.batch_size = batch_size
        self.seed = seed

    def __len__(self) -> int:
        return len(self.scans)

    def _index(self, i: int) -> int:
        n = len(self.scans)
        epoch, pos = divmod(i, n)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return int(torch.randperm(n, generator=g)[pos])

    def __call__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = [self._index(step * self.batch_size + b) for b in range(self.batch_size)]
        scan = torch.stack([self.scans[i] for i in idx])
        if self.atlases is None:
            assert self.atlas is not None
            atlas = self.atlas.unsqueeze(0)
        else:
            atlas = torch.stack([self.atlases[i] for i in idx])
        return scan, atlas


class CoLearner:
    """Alternating co-learning of a :class:`GIRNet` with per-network AdamW and poly decay.

    Parameters
    ----------
    model : GIRNet
        Networks to train (moved to the configured device).
    sampler : callable
        ``sampler(step) -> (scan, atlas)``, see :data:`Sampler`.
    config : GIRNetConfig, optional
        Defaults to ``model.config`` (schedule, losses, runtime).
    checkpoint_dir : path, optional
        Where ``last.pt`` is written (every ``runtime.checkpoint_every`` steps, on stop, at the
        end, and after a failure that left the weights consistent).
    preview_pair : (scan, atlas), optional
        Pair predicted every ``runtime.preview_every`` steps for live previews.
    provenance : dict, optional
        Stored in checkpoints (inputs, seed, ...).
    pretrain_sampler : callable, optional
        Sampler of (healthy scan, aligned atlas) pairs for the first
        ``schedule.pretrain_inp_steps`` steps (InpNet copy-paste pretraining on random boxes);
        defaults to ``sampler``.
    """

    def __init__(
        self,
        model: GIRNet,
        sampler: Sampler,
        config: GIRNetConfig | None = None,
        *,
        checkpoint_dir: str | Path | None = None,
        preview_pair: tuple[torch.Tensor, torch.Tensor] | None = None,
        provenance: dict[str, Any] | None = None,
        pretrain_sampler: Sampler | None = None,
    ) -> None:
        self.config = (config or model.config).validate()
        self.model = model
        self.sampler = sampler
        self.pretrain_sampler = pretrain_sampler
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.preview_pair = preview_pair
        self.provenance = dict(provenance or {})
        self.runtime: Runtime = resolve_runtime(self.config.runtime)
        self.runtime.prepare_module(self.model)
        sch = self.config.schedule
        self.optimizers = {
            tag: torch.optim.AdamW(net.parameters(), lr=sch.lr, weight_decay=sch.weight_decay)
            for tag, net in self.model.networks.items()
        }
        # InpNet copy-paste pretraining has its own Adam (the reference starts co-learning with
        # fresh optimizers on pretrained weights)
        self.pretrain_optimizer = torch.optim.Adam(self.model.inp.parameters(), lr=sch.pretrain_lr)
        self.scaler = (
            torch.amp.GradScaler("cuda") if self.runtime.autocast_dtype is torch.float16 else None
        )
        self.step = 0
        self.net_steps = dict.fromkeys(TAGS, 0)
        self.last_checkpoint: Path | None = None
        self._stop = threading.Event()
        self._in_update = False
        # data-parallel under torchrun: this rank's share of each global batch, gradients of the
        # stepped network averaged over ranks, checkpoints from rank 0 (core/distributed.py)
        self.dist = distributed.current()
        self._synced = self.dist is None

    # ------------------------------------------------------------------ schedule
    @property
    def total_steps(self) -> int:
        """InpNet pretraining steps followed by co-learning steps."""
        sch = self.config.schedule
        return sch.pretrain_inp_steps + sch.steps

    def tag_for(self, step: int) -> str:
        """``"pretrain"`` for the first ``pretrain_inp_steps`` steps, then the co-learning cycle."""
        sch = self.config.schedule
        if step < sch.pretrain_inp_steps:
            return "pretrain"
        return schedule_tag(step - sch.pretrain_inp_steps, sch.k_reg, sch.k_seg, sch.k_inp)

    def planned_steps(self, tag: str) -> int:
        """Number of steps ``tag`` takes in the whole run (the poly-decay horizon)."""
        sch = self.config.schedule
        cycle = sch.k_reg + sch.k_seg + sch.k_inp
        k = {"reg": sch.k_reg, "seg": sch.k_seg, "inp": sch.k_inp}[tag]
        full, rest = divmod(sch.steps, cycle)
        offset = {"reg": 0, "seg": sch.k_reg, "inp": sch.k_reg + sch.k_seg}[tag]
        return full * k + max(0, min(k, rest - offset))

    def learning_rate(self, tag: str) -> float:
        sch = self.config.schedule
        horizon = max(self.planned_steps(tag), 1)
        frac = min(self.net_steps[tag] / horizon, 1.0)
        return sch.lr * (1.0 - frac) ** sch.poly_power

    # ------------------------------------------------------------------ control
    def request_stop(self) -> None:
        """Ask :meth:`steps` to end at the next step boundary (thread safe)."""
        self._stop.set()

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    def steps(self, n: int | None = None) -> Iterator[TrainingReport]:
        """Run co-learning, yielding a report after every step.

        Parameters
        ----------
        n : int, optional
            Run at most ``n`` more steps (default: until ``schedule.steps``).

        Yields
        ------
        TrainingReport
            One per completed step, then a final report (``phase`` ``"finished"`` or
            ``"stopped"``) carrying the last checkpoint path.
        """
        self._stop.clear()
        if not self._synced:  # identical weights on every rank before the first step
            distributed.broadcast_module(self.model, self.dist)
            self._synced = True
        total = self.total_steps
        end = total if n is None else min(total, self.step + n)
        t_start = time.perf_counter()
        every = self.config.runtime.checkpoint_every
        while self.step < end:
            if distributed.any_rank(self._stop.is_set(), self.dist):  # all ranks stop together
                ckpt = self._save_last()
                log.info("co-learning stopped at step %d", self.step)
                yield self._final("stopped", total, t_start, ckpt)
                return
            try:
                report = self.train_step()
            except BaseException:
                if not self._in_update and self.step > 0:
                    path = self._save_last()
                    log.error(
                        "co-learning failed at step %d; weights saved to %s", self.step + 1, path
                    )
                raise
            ckpt = None
            if self.step % every == 0 or self.step == end:
                ckpt = self._save_last()
            preview = None
            pe = self.config.runtime.preview_every
            if self.preview_pair is not None and pe and (self.step % pe == 0 or self.step == end):
                preview = self.preview()
            yield TrainingReport(
                **{
                    **report.__dict__,
                    "elapsed": time.perf_counter() - t_start,
                    "preview": preview,
                    "checkpoint": ckpt,
                }
            )
        yield self._final("finished", total, t_start, self.last_checkpoint)

    def _final(self, phase: str, total: int, t_start: float, ckpt: Path | None) -> TrainingReport:
        return TrainingReport(
            step=self.step,
            total_steps=total,
            phase=phase,
            loss=float("nan"),
            lr={t: self.learning_rate(t) for t in TAGS},
            elapsed=time.perf_counter() - t_start,
            checkpoint=ckpt,
        )

    # ------------------------------------------------------------------ one step
    def train_step(self) -> TrainingReport:
        """Run the next scheduled step (one optimizer update of one network)."""
        t0 = time.perf_counter()
        tag = self.tag_for(self.step)
        if tag == "pretrain":
            return self._pretrain_step(t0)
        scan, atlas, guide = self._batch(self.sampler)
        others = [net for t, net in self.model.networks.items() if t != tag]
        net = self.model.networks[tag]
        net.train()
        with frozen(*others):
            loss, terms = {"reg": self._reg_loss, "seg": self._seg_loss, "inp": self._inp_loss}[
                tag
            ](scan, atlas, guide)
        loss_value = distributed.all_reduce_mean(loss.detach(), self.dist)  # all ranks agree
        if not torch.isfinite(loss_value):
            raise FloatingPointError(
                f"non-finite {tag} loss at step {self.step + 1} ({loss_value.item()}); "
                "the last checkpoint is kept — lower the learning rate or check the inputs"
            )
        lr = self.learning_rate(tag)
        opt = self.optimizers[tag]
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad(set_to_none=True)
        self._in_update = True
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            distributed.average_gradients(net, self.dist)
            self.scaler.step(opt)
            self.scaler.update()
        else:
            loss.backward()
            distributed.average_gradients(net, self.dist)
            opt.step()
        self.net_steps[tag] += 1
        self.step += 1
        self._in_update = False
        return TrainingReport(
            step=self.step,
            total_steps=self.total_steps,
            phase=tag,
            loss=float(loss_value),
            terms={k: float(v) for k, v in terms.items()},
            lr={t: self.learning_rate(t) for t in TAGS},
            seconds=time.perf_counter() - t0,
        )

    def _pretrain_step(self, t0: float) -> TrainingReport:
        sampler = self.pretrain_sampler or self.sampler
        scan, atlas, given_guide = self._batch(sampler)
        g = torch.Generator().manual_seed(self.config.runtime.seed * 1_000_003 + self.step)
        world = 1 if self.dist is None else self.dist.world_size  # boxes of the global batch
        boxes = random_box_mask(tuple(scan.shape[2:]), g, scan.shape[0] * world)
        hole = self.runtime.prepare(distributed.shard_batch([boxes], self.dist)[0])
        inp = self.model.inp
        inp.train()
        with frozen(self.model.reg, self.model.seg):
            guide = self._guide(scan, atlas, given_guide)  # atlas warped by the current RegNet
            loss, terms = pretrain_inpainter_loss(
                inp, scan, guide, hole, self.runtime, histmatch=self.config.loss.histmatch
            )
        loss_value = distributed.all_reduce_mean(loss.detach(), self.dist)
        if not torch.isfinite(loss_value):
            raise FloatingPointError(f"non-finite pretraining loss at step {self.step + 1}")
        opt = self.pretrain_optimizer
        opt.zero_grad(set_to_none=True)
        self._in_update = True
        loss.backward()
        distributed.average_gradients(inp, self.dist)
        opt.step()
        self.step += 1
        self._in_update = False
        return TrainingReport(
            step=self.step,
            total_steps=self.total_steps,
            phase="pretrain",
            loss=float(loss_value),
            terms={k: float(v) for k, v in terms.items()},
            lr={"inp": self.config.schedule.pretrain_lr},
            seconds=time.perf_counter() - t0,
        )

    def _fills(
        self, scan: torch.Tensor, hole: torch.Tensor, guide: torch.Tensor, keep_outside: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """InpNet fills of ``hole`` and of its complement in one batched forward pass."""
        b = scan.shape[0]
        holes = torch.cat([hole, 1.0 - hole])
        scans = torch.cat([scan, scan])
        guides = torch.cat([guide, guide])
        with self.runtime.autocast():
            fill = self.model.inp(scans * (1.0 - holes), holes, guides).float()
        if keep_outside:
            fill = scans * (1.0 - holes) + fill * holes
        return fill[:b], fill[b:]

    def _batch(self, sampler: Sampler) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(scan, atlas, guide or None)`` of the current step, on the device."""
        batch = distributed.shard_batch(sampler(self.step), self.dist)
        if len(batch) not in (2, 3):
            raise ValueError("a sampler returns (scan, atlas) or (scan, atlas, guide)")
        prepared = [self.runtime.prepare(t) for t in batch]
        return prepared[0], prepared[1], prepared[2] if len(prepared) == 3 else None

    def _guide(
        self, scan: torch.Tensor, atlas: torch.Tensor, given: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Atlas warped onto the scan: ``given`` (a fixed registration supplied by the sampler,
        e.g. an instance-optimised one) or the current RegNet's (no gradient)."""
        if given is not None:
            return given
        with torch.no_grad(), self.runtime.autocast():
            phi_ts = self.model.atlas_to_scan_field(scan, atlas)
        atlas_b = atlas.expand(scan.shape[0], *atlas.shape[1:])
        return warp(atlas_b, phi_ts)

    def _hard_mask(self, scan: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), self.runtime.autocast():
            prob = self.model.segment(scan)
        return (prob > self.config.loss.mask_threshold).float()

    def _reg_loss(self, scan: torch.Tensor, atlas: torch.Tensor, _guide: torch.Tensor | None):
        cfg = self.config.loss
        with self.runtime.autocast():
            fields = self.model.register(scan, atlas)
        target = scan
        if cfg.reg_on_inpainted:
            with torch.no_grad():
                atlas_b = atlas.expand(scan.shape[0], *atlas.shape[1:])
                guide = warp(atlas_b, fields.phi_ts.detach())
                hole = self._hard_mask(scan)
                with self.runtime.autocast():
                    fill = self.model.inp(scan * (1.0 - hole), hole, guide).float()
                target = scan * (1.0 - hole) + fill * hole if cfg.ntuc else fill
        return registration_loss(fields, target, atlas, cfg)

    def _seg_loss(self, scan: torch.Tensor, atlas: torch.Tensor, given: torch.Tensor | None):
        cfg = self.config.loss
        guide = self._guide(scan, atlas, given)
        with self.runtime.autocast():
            prob = self.model.segment(scan)
        with torch.no_grad():
            hole = (prob.detach() > cfg.mask_threshold).float()
            fill_fg, fill_bg = self._fills(scan, hole, guide, keep_outside=cfg.ntuc)
        return segmentation_loss(prob, scan, fill_fg, fill_bg, cfg)

    def _inp_loss(self, scan: torch.Tensor, atlas: torch.Tensor, given: torch.Tensor | None):
        cfg = self.config.loss
        guide = self._guide(scan, atlas, given)
        hole = self._hard_mask(scan)
        target = histogram_match(guide, scan) if cfg.histmatch else guide
        fill_fg, fill_bg = self._fills(scan, hole, guide, keep_outside=False)
        return inpainting_loss(scan, fill_fg, fill_bg, hole, target, cfg)

    # ------------------------------------------------------------------ preview
    def preview(self) -> Prediction:
        """Prediction on the preview pair with the current weights (CPU tensors)."""
        assert self.preview_pair is not None
        scan, atlas = (self.runtime.prepare(t) for t in self.preview_pair)
        if scan.dim() == self.model.ndim + 2:
            with self.runtime.autocast():
                return self.model.predict(scan, atlas).to("cpu")
        # a whole volume for 2D networks: slice by slice
        return self.model.predict_volume(scan, atlas, autocast=self.runtime.autocast).to("cpu")

    # ------------------------------------------------------------------ state
    def checkpoint(self) -> Checkpoint:
        """Snapshot of weights, optimizer/schedule state, config and provenance."""
        trainer: dict[str, Any] = {
            "optim": {t: o.state_dict() for t, o in self.optimizers.items()},
            "pretrain_optim": self.pretrain_optimizer.state_dict(),
            "net_steps": dict(self.net_steps),
        }
        if self.scaler is not None:
            trainer["scaler"] = self.scaler.state_dict()
        prov = {
            **self.provenance,
            "seed": self.config.runtime.seed,
            "device": str(self.runtime.device),
            "precision": self.runtime.precision,
            "world_size": 1 if self.dist is None else self.dist.world_size,
            "backend": None if self.dist is None else self.dist.backend,
        }
        return Checkpoint(
            config=self.config,
            model={t: net.state_dict() for t, net in self.model.networks.items()},
            step=self.step,
            trainer=trainer,
            provenance=prov,
        )

    def save(self, path: str | Path) -> Path:
        """Write a checkpoint to ``path`` (atomic)."""
        return save_checkpoint(self.checkpoint(), path)

    def _save_last(self) -> Path | None:
        if self.checkpoint_dir is None or not (self.dist is None or self.dist.is_main):
            return None  # rank 0 alone writes
        self.last_checkpoint = self.save(self.checkpoint_dir / "last.pt")
        return self.last_checkpoint

    def load_state(self, ckpt: Checkpoint) -> None:
        """Restore weights, optimizer and schedule state from ``ckpt``.

        Raises
        ------
        CheckpointError
            If the checkpoint's networks do not match this model.
        """
        self.model.load_networks(ckpt.model)
        self.runtime.prepare_module(self.model)
        trainer = ckpt.trainer or {}
        try:
            for tag, state in trainer.get("optim", {}).items():
                self.optimizers[tag].load_state_dict(state)
            if "pretrain_optim" in trainer:
                self.pretrain_optimizer.load_state_dict(trainer["pretrain_optim"])
        except (KeyError, ValueError) as err:
            raise CheckpointError(f"optimizer state does not match the model: {err}") from err
        self.net_steps = {t: int(trainer.get("net_steps", {}).get(t, 0)) for t in TAGS}
        if self.scaler is not None and "scaler" in trainer:
            self.scaler.load_state_dict(trainer["scaler"])
        self.step = int(ckpt.step)

    @classmethod
    def resume(
        cls,
        checkpoint: str | Path | Checkpoint,
        sampler: Sampler,
        *,
        config: GIRNetConfig | None = None,
        **kwargs: Any,
    ) -> CoLearner:
        """Continue a run from a checkpoint with the same sampler.

        ``config`` may change the schedule length or runtime (e.g. more steps, another device);
        the network configuration must match the checkpoint's.
        """
        ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
        cfg = config or ckpt.config
        if cfg.net != ckpt.config.net or cfg.data.ndim != ckpt.config.data.ndim:
            raise CheckpointError(
                "the network configuration differs from the checkpoint's; cannot resume"
            )
        model = GIRNet(cfg)
        learner = cls(model, sampler, cfg, **kwargs)
        learner.load_state(ckpt)
        learner.provenance.setdefault("resumed_from_step", ckpt.step)
        return learner
