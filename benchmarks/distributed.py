"""Throughput of data-parallel co-learning: steps/s and cases/s for 1 and N CPU processes.

Launches ``torchrun --nproc_per_node N`` (gloo on CPU) on this same file, which then runs
co-learning steps of a preset on synthetic volumes of the preset's working shape with a fixed
*global* batch (split over the processes), and prints the timed throughput measured on rank 0
after a warm-up. Every process uses ``--threads`` torch threads (default 1: N processes = N
cores). Also times one process with N threads, the alternative use of the same cores.

    python benchmarks/distributed.py --preset test --procs 1 2
    python benchmarks/distributed.py --preset cpu-2mm --procs 1 2 --warmup 2 --steps 5
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path


def _worker(args: argparse.Namespace) -> None:
    import torch

    from napari_girnet.core import distributed
    from napari_girnet.core.colearn import CoLearner, PairSampler
    from napari_girnet.core.config import preset
    from napari_girnet.core.model import GIRNet

    torch.set_num_threads(args.threads)
    info = distributed.init_from_env("cpu")
    cfg = preset(
        args.preset,
        schedule={
            "steps": args.warmup + args.steps,
            "batch_size": args.batch,
            "pretrain_inp_steps": 0,
        },
        runtime={"device": "cpu", "seed": 0, "checkpoint_every": 10**6, "threads": args.threads},
    )
    shape = tuple(cfg.data.shape)
    g = torch.Generator().manual_seed(0)

    def volume() -> torch.Tensor:
        coarse = torch.rand((1, 1, *[6] * len(shape)), generator=g)
        img = torch.nn.functional.interpolate(coarse, size=shape, mode="trilinear")
        return ((img - img.min()) / (img.max() - img.min()))[0]

    sampler = PairSampler([volume() for _ in range(8)], volume(), batch_size=args.batch, seed=0)
    learner = CoLearner(GIRNet(cfg, seed=0), sampler, cfg)
    it = learner.steps()
    for _ in range(args.warmup):
        next(it)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        next(it)
    seconds = time.perf_counter() - t0
    if info is None or info.is_main:
        world = 1 if info is None else info.world_size
        print(
            "RESULT "
            + json.dumps(
                {
                    "preset": args.preset,
                    "processes": world,
                    "threads_per_process": args.threads,
                    "global_batch": args.batch,
                    "steps": args.steps,
                    "seconds": seconds,
                    "steps_per_s": args.steps / seconds,
                    "cases_per_s": args.steps * args.batch / seconds,
                }
            ),
            flush=True,
        )
    distributed.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _launch(args: argparse.Namespace, procs: int, threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "CUDA_VISIBLE_DEVICES": ""}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs),
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
        str(Path(__file__).resolve()), "--worker", "--preset", args.preset,
        "--batch", str(args.batch), "--warmup", str(args.warmup), "--steps", str(args.steps),
        "--threads", str(threads),
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="test")
    p.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    p.add_argument("--batch", type=int, default=2, help="global batch (default 2)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        _worker(args)
        return
    runs = [(n, args.threads) for n in args.procs]
    if max(args.procs) > 1:
        runs.append((1, args.threads * max(args.procs)))  # same cores, intra-op threads
    print(f"# load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print("preset    procs  threads/proc  global batch  steps/s  cases/s")
    for procs, threads in runs:
        r = _launch(args, procs, threads)
        print(
            f"{r['preset']:<9} {procs:>5}  {threads:>12}  {r['global_batch']:>12}  "
            f"{r['steps_per_s']:>7.3f}  {r['cases_per_s']:>7.3f}",
            flush=True,
        )
    print(f"# load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
