"""Seconds per co-learning step and peak memory, per grid size and precision.

Each configuration runs in its own subprocess (so peak RSS is its own) for one warm-up step and
one full GIRNet cycle (reg, seg, seg, inp, inp) on random brain-like volumes, and reports the
mean seconds per step of the cycle, the seconds per phase and the process's peak RSS.

    python benchmarks/step_speed.py                      # 2D 192x160, 3D 2 mm, 3D 1 mm; fp32, bf16
    python benchmarks/step_speed.py --sizes 3d-2mm --precisions fp32 --widths half

bf16 autocast on a CPU without native bf16 (AVX512-BF16/AMX) is emulated and very slow; such
runs are limited by ``--timeout`` and reported as such.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

SIZES = {
    "2d-192x160": (2, (160, 192)),
    "3d-2mm": (3, (80, 96, 80)),
    "3d-1mm": (3, (160, 192, 144)),
}

WIDTHS = {
    "reference": {},
    "half": {
        "reg_start_channels": 4,
        "seg_enc": [8, 16, 32, 64],
        "seg_dec": [64, 32, 16, 16, 16, 8, 8],
        "inp_enc": [8, 16, 32, 32],
        "inp_dec": [32, 32, 16, 16, 16, 8, 8],
    },
}


def run_one(
    size: str, precision: str, widths: str, device: str, threads: int, measure: int = 5
) -> dict:
    import torch

    from napari_girnet.core.colearn import CoLearner
    from napari_girnet.core.config import preset
    from napari_girnet.core.model import GIRNet

    ndim, shape = SIZES[size]
    cfg = preset(
        "test",
        net={**preset("cpu-2mm").net.__dict__, **WIDTHS[widths]},
        data={"ndim": ndim, "shape": tuple(shape), "resolution_mm": 1.0},
        schedule={"steps": 6},
        runtime={
            "device": device,
            "precision": precision,
            "channels_last": "auto",
            "threads": threads,
            "checkpoint_every": 1000,
            "preview_every": 0,
        },
    )
    torch.manual_seed(0)
    model = GIRNet(cfg)
    g = torch.Generator().manual_seed(0)
    mode = "trilinear" if ndim == 3 else "bilinear"

    def blob(seed: int) -> torch.Tensor:
        g.manual_seed(seed)
        coarse = torch.rand((1, 1, *[6] * ndim), generator=g)
        return torch.nn.functional.interpolate(coarse, size=shape, mode=mode)[0]

    scan, atlas = blob(1), blob(2)
    learner = CoLearner(model, lambda step: (scan[None], atlas[None]), cfg)
    phases: dict[str, list[float]] = {}
    learner.train_step()  # warm-up (reg)
    learner.step = 0
    t0 = time.perf_counter()
    for _ in range(measure):
        rep = learner.train_step()
        phases.setdefault(rep.phase, []).append(rep.seconds)
    total = time.perf_counter() - t0
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak_gpu = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None
    return {
        "size": size,
        "precision": learner.runtime.precision,
        "widths": widths,
        "device": str(learner.runtime.device),
        "s_per_step": total / measure,
        "measured_steps": measure,
        "phase_s": {k: sum(v) / len(v) for k, v in phases.items()},
        "peak_rss_gb": peak_kb / 2**20,
        "peak_gpu_gb": peak_gpu,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--widths", nargs="+", default=["reference"], choices=list(WIDTHS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--timeout", type=int, default=900, help="seconds per configuration")
    parser.add_argument(
        "--measure",
        type=int,
        default=5,
        help="steps timed after one warm-up step (5 = a full reg/seg/seg/inp/inp "
        "cycle; fewer for very slow configurations)",
    )
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    parser.add_argument("--_one", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._one:
        size, precision, widths = args._one
        print(json.dumps(run_one(size, precision, widths, args.device, args.threads, args.measure)))
        return
    rows = []
    print(
        f"{'size':<12} {'widths':<10} {'prec':<5} {'s/step':>8} {'reg':>7} {'seg':>7} "
        f"{'inp':>7} {'peak RSS GB':>12} {'peak GPU GB':>12}"
    )
    for widths in args.widths:
        for size in args.sizes:
            for precision in args.precisions:
                cmd = [
                    sys.executable,
                    __file__,
                    "--_one",
                    size,
                    precision,
                    widths,
                    "--device",
                    args.device,
                    "--threads",
                    str(args.threads),
                    "--measure",
                    str(args.measure),
                ]
                try:
                    out = subprocess.run(
                        cmd,
                        capture_output=True,
                        text=True,
                        timeout=args.timeout,
                        env=os.environ.copy(),
                    )
                    row = json.loads(out.stdout.strip().splitlines()[-1])
                except subprocess.TimeoutExpired:
                    row = {
                        "size": size,
                        "precision": precision,
                        "widths": widths,
                        "error": f"> {args.timeout} s (timeout)",
                    }
                except (IndexError, json.JSONDecodeError):
                    row = {
                        "size": size,
                        "precision": precision,
                        "widths": widths,
                        "error": out.stderr.strip().splitlines()[-1] if out.stderr else "?",
                    }
                rows.append(row)
                if "error" in row:
                    print(f"{size:<12} {widths:<10} {precision:<5} {row['error']}")
                    continue
                ph = row["phase_s"]
                gpu = f"{row['peak_gpu_gb']:.2f}" if row["peak_gpu_gb"] is not None else "-"
                print(
                    f"{size:<12} {widths:<10} {row['precision']:<5} {row['s_per_step']:8.2f} "
                    f"{ph.get('reg', 0):7.2f} {ph.get('seg', 0):7.2f} {ph.get('inp', 0):7.2f} "
                    f"{row['peak_rss_gb']:12.2f} {gpu:>12}",
                    flush=True,
                )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)


if __name__ == "__main__":
    main()
