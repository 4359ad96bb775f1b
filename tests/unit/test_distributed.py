"""Data-parallel co-learning under torchrun (gloo, CPU): ranks agree, match one process, resume.

One ``torchrun --nproc_per_node 2`` launch of tests/unit/_distributed_worker.py (3 steps, then 3
more resumed from rank 0's checkpoint) against the same 6 steps in this process with the same
global batch of 2. About 45 s on the loaded 2-core development machine (three torch imports).
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from napari_girnet.core import distributed
from napari_girnet.core.checkpoint import load_checkpoint

WORKER = Path(__file__).with_name("_distributed_worker.py")
_spec = importlib.util.spec_from_file_location("_distributed_worker", WORKER)
assert _spec is not None and _spec.loader is not None
worker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(worker)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _torchrun(out: Path, first: int) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        str(WORKER),
        str(out),
        str(first),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], what: str) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=f"{what}: {k}")


@pytest.mark.slow
def test_two_ranks_match_one_process_and_resume(tmp_path: Path) -> None:
    ranks, single = tmp_path / "ranks", tmp_path / "single"
    for d in (ranks, single):
        d.mkdir()
    _torchrun(ranks, 3)  # steps 1-3, then a fresh 2-rank learner resumed for steps 4-6
    ckpt = ranks / "first.pt"  # written by rank 0 alone
    prov = load_checkpoint(ckpt).provenance
    assert (prov["world_size"], prov["backend"], load_checkpoint(ckpt).step) == (2, "gloo", 3)
    assert load_checkpoint(ranks / "last.pt").step == worker.TOTAL_STEPS

    torch.set_num_threads(1)
    learner = worker.run(single)  # one process, same global batch, uninterrupted
    assert learner.dist is None and learner.step == worker.TOTAL_STEPS
    for step in range(1, worker.TOTAL_STEPS + 1):
        r0 = torch.load(ranks / f"rank0_step{step}.pt")
        r1 = torch.load(ranks / f"rank1_step{step}.pt")
        for k in r0:  # the ranks hold bit-identical weights after every step
            assert torch.equal(r0[k], r1[k]), f"step {step}: ranks differ in {k}"
        _assert_close(r0, torch.load(single / f"rank0_step{step}.pt"), f"step {step}")
    # the 2-rank checkpoint also resumes in one process and continues the same trajectory
    alone = tmp_path / "alone"
    alone.mkdir()
    resumed = worker.run(alone, 3, resume=ckpt)
    assert resumed.step == worker.TOTAL_STEPS
    _assert_close(worker.weights(resumed), worker.weights(learner), "1-process resume")


def test_shard_batch_splits_the_global_batch_in_rank_order() -> None:
    batch = (torch.arange(4.0).view(4, 1, 1), torch.zeros(1, 1, 1))
    parts = [distributed.shard_batch(batch, distributed.DistInfo(r, 2, r, "gloo")) for r in (0, 1)]
    assert torch.cat([p[0] for p in parts]).flatten().tolist() == [0.0, 1.0, 2.0, 3.0]
    assert all(p[1].shape[0] == 1 for p in parts)  # a shared atlas stays whole
    assert distributed.shard_batch(batch, None)[0] is batch[0]
    with pytest.raises(ValueError, match="not a multiple"):
        distributed.shard_batch(batch, distributed.DistInfo(0, 3, 0, "gloo"))


def test_init_from_env_without_torchrun_is_single_process(monkeypatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.init_from_env("cpu") is None
    assert distributed.is_main_process()
    assert distributed.backend_for("cpu") == "gloo"
