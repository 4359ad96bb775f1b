"""Data-parallel training on ``torch.distributed`` (one process per device, launched by torchrun).

The co-learner keeps one copy of all three networks per process ("rank"). Every rank runs the
same schedule of phases (``reg, seg, seg, inp, inp, ...``) on its own slice of the *global*
batch; after the backward pass of a step, the gradients of the one network being stepped are
summed over ranks with ``all_reduce`` and divided by the world size — the gradient of the
global batch for the batch-mean losses of GIRNet — so every rank takes the same optimizer step
and the weights stay identical (the equivalent of wrapping only the stepped network in
``DistributedDataParallel``, which alternating optimizers make awkward). Rank 0 alone writes
checkpoints and logs.

The process group is set up from torchrun's environment (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``): backend ``nccl`` for CUDA devices (each
rank on ``cuda:<LOCAL_RANK>``), ``gloo`` otherwise. Without those variables, or with
``WORLD_SIZE=1``, everything here is a no-op and training runs in one process as before.

Sources: PyTorch ``torch.distributed`` / ``DistributedDataParallel`` / ``DistributedSampler``
documentation (gradient averaging, contiguous per-rank split of a global batch).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = [
    "DistInfo",
    "all_reduce_mean",
    "any_rank",
    "average_gradients",
    "backend_for",
    "broadcast_module",
    "current",
    "init_from_env",
    "is_main_process",
    "shard_batch",
    "shutdown",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the process group."""

    rank: int
    world_size: int
    local_rank: int
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def backend_for(device: str | None) -> str:
    """``"nccl"`` when ``device`` ("auto", "cuda", "cuda:N" or None) runs on CUDA here, else
    ``"gloo"`` (CPU, and the portable fallback)."""
    wants_cuda = device is None or device == "auto" or device.startswith("cuda")
    return "nccl" if wants_cuda and torch.cuda.is_available() else "gloo"


def init_from_env(device: str | None = None) -> DistInfo | None:
    """Join the process group described by torchrun's environment variables.

    Parameters
    ----------
    device : str, optional
        The requested device ("auto", "cpu", "cuda", ...); selects the backend
        (:func:`backend_for`). With nccl, the current CUDA device becomes ``LOCAL_RANK``.

    Returns
    -------
    DistInfo or None
        None when not launched by torchrun (no ``WORLD_SIZE``) or with a single process.

    Raises
    ------
    ValueError
        If the environment variables are not integers or are inconsistent.
    """
    if dist.is_available() and dist.is_initialized():
        return current()
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError as err:
        raise ValueError(f"torchrun environment: {err}") from None
    if world <= 1:
        return None
    if not 0 <= rank < world:
        raise ValueError(f"torchrun environment: RANK={rank} outside WORLD_SIZE={world}")
    if not dist.is_available():
        raise ValueError("this torch build has no torch.distributed; run in one process")
    backend = backend_for(device)
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend)
    info = DistInfo(rank=rank, world_size=world, local_rank=local_rank, backend=backend)
    log.info("process group: rank %d of %d (%s)", rank, world, backend)
    return info


def current() -> DistInfo | None:
    """The initialised process group of this process (None if there is none or it has one
    rank)."""
    if not (dist.is_available() and dist.is_initialized()):
        return None
    world = dist.get_world_size()
    if world <= 1:
        return None
    return DistInfo(
        rank=dist.get_rank(),
        world_size=world,
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        backend=str(dist.get_backend()),
    )


def is_main_process() -> bool:
    """True in a single process and on rank 0 of a process group."""
    info = current()
    return info is None or info.is_main


def shutdown() -> None:
    """Leave the process group (no-op without one)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shard_batch(batch: Sequence[torch.Tensor], info: DistInfo | None) -> tuple[torch.Tensor, ...]:
    """This rank's contiguous slice of a global batch (``DistributedSampler``-style split).

    Parameters
    ----------
    batch : sequence of torch.Tensor
        ``(B, C, *S)`` tensors of the global batch; a tensor with batch size 1 (an atlas shared
        by all items) is kept whole.
    info : DistInfo or None
        None returns the batch unchanged.

    Raises
    ------
    ValueError
        If the global batch size ``B`` is not a multiple of the world size (every rank must see
        the same number of items for the averaged gradient to equal the global-batch gradient).
    """
    if info is None:
        return tuple(batch)
    size = batch[0].shape[0]
    if size % info.world_size:
        raise ValueError(
            f"global batch size {size} is not a multiple of the {info.world_size} processes; "
            "choose a batch size that the number of processes divides"
        )
    per = size // info.world_size
    lo = info.rank * per
    return tuple(t if t.shape[0] == 1 and size > 1 else t[lo : lo + per] for t in batch)


def _flat_tensors(module: torch.nn.Module, grads: bool) -> list[torch.Tensor]:
    if grads:
        return [p.grad for p in module.parameters() if p.grad is not None]
    return [*module.parameters(), *module.buffers()]


def average_gradients(module: torch.nn.Module, info: DistInfo | None) -> None:
    """Replace the gradients of ``module`` by their mean over ranks (one bucketed
    ``all_reduce``). Parameters without a gradient are skipped (the same on every rank, since
    every rank runs the same step)."""
    if info is None:
        return
    grads = _flat_tensors(module, grads=True)
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= info.world_size
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset : offset + n].view_as(g))
        offset += n


def all_reduce_mean(value: torch.Tensor, info: DistInfo | None) -> torch.Tensor:
    """Mean of a (detached) tensor over ranks, e.g. the loss for logging; unchanged without a
    process group."""
    if info is None:
        return value
    out = value.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / info.world_size


def any_rank(flag: bool, info: DistInfo | None) -> bool:
    """True on every rank when ``flag`` is true on at least one (e.g. a stop request that reached
    only some processes, so that all stop at the same step)."""
    if info is None:
        return flag
    t = torch.tensor([1.0 if flag else 0.0])
    if info.backend == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def broadcast_module(module: torch.nn.Module, info: DistInfo | None) -> None:
    """Copy rank 0's parameters and buffers to every rank (start of training)."""
    if info is None:
        return
    tensors = [t for t in _flat_tensors(module, grads=False) if t.is_floating_point()]
    if not tensors:
        return
    with torch.no_grad():
        flat = torch.cat([t.reshape(-1) for t in tensors])  # one message, any memory format
        dist.broadcast(flat, src=0)
        offset = 0
        for t in tensors:
            n = t.numel()
            t.copy_(flat[offset : offset + n].view_as(t))
            offset += n
