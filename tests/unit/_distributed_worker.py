"""Co-learning worker of tests/unit/test_distributed.py, run by ``torchrun`` (or imported).

``python -m torch.distributed.run --nproc_per_node N _distributed_worker.py OUT FIRST`` runs
``FIRST`` co-learning steps of the ``test`` preset (global batch 2, four synthetic 32^3 scans),
keeps rank 0's checkpoint as ``OUT/first.pt``, then resumes a fresh learner from it for the
remaining steps of the run. After every step each rank writes its weights to
``OUT/rank<r>_step<k>.pt``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from napari_girnet.core import distributed
from napari_girnet.core.colearn import CoLearner, PairSampler
from napari_girnet.core.config import preset
from napari_girnet.core.model import GIRNet

TOTAL_STEPS = 6  # reg, seg, seg, inp, inp, reg: every network steps at least once


def _smooth(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand((1, 1, 5, 5, 5), generator=g)
    img = torch.nn.functional.interpolate(coarse, size=(32, 32, 32), mode="trilinear")
    return ((img - img.min()) / (img.max() - img.min()))[0]


def make_learner(out: Path, resume: Path | None = None) -> CoLearner:
    """The run's learner (same data, seed and config on every rank and in one process)."""
    cfg = preset(
        "test",
        schedule={"steps": TOTAL_STEPS, "batch_size": 2},
        runtime={"seed": 3, "checkpoint_every": 100, "threads": 1},
    )
    sampler = PairSampler([_smooth(s) for s in range(4)], _smooth(99), batch_size=2, seed=3)
    if resume is not None:
        return CoLearner.resume(resume, sampler, config=cfg, checkpoint_dir=out)
    return CoLearner(GIRNet(cfg, seed=3), sampler, cfg, checkpoint_dir=out)


def weights(learner: CoLearner) -> dict[str, torch.Tensor]:
    return {
        f"{tag}.{k}": v.detach().clone().contiguous()
        for tag, net in learner.model.networks.items()
        for k, v in net.state_dict().items()
    }


def run(out: Path, steps: int | None = None, resume: Path | None = None) -> CoLearner:
    """``steps`` more steps (default: to the end), saving each rank's weights after each."""
    info = distributed.current()
    rank = 0 if info is None else info.rank
    learner = make_learner(out, resume)
    for report in learner.steps(steps):
        if not report.is_final:
            torch.save(weights(learner), out / f"rank{rank}_step{report.step}.pt")
    return learner


def main(out: Path, first: int) -> None:
    info = distributed.init_from_env("cpu")
    run(out, first)
    if info is None or info.is_main:
        (out / "last.pt").rename(out / "first.pt")
    if info is not None:
        torch.distributed.barrier()  # rank 0's checkpoint is on disk
    run(out, resume=out / "first.pt")
    distributed.shutdown()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(Path(sys.argv[1]), int(sys.argv[2]))
