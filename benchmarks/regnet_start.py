"""Where RegNet starts: mean deformation error of identity, random init and SymNet weights (2 mm).

Validation cases (``tools/train_reg.py:validation_cases``, cached under ``runs/reg_cache``):

* ``atlas``: the MNI atlas as the healthy brain under a known random diffeomorphism (peak 2-8
  mm) with a real lesion pasted (SOOP stroke or MS 01-20 without 07/19; textured hypointense
  fill), scored against the exact truth ``phi_ts``;
* ``oasis``: the four OASIS validation brains (1119, 1122, 1125, 1128), never trained on, under a
  random field with a lesion, scored against the same method's registration of the lesion-free
  twin (the paper's MDE; identity scores 0 there by construction and is omitted).

Per method: mean over cases of the MDE (mm) inside the lesion, near it (<= 30 mm), far from it
and over the brain (:func:`napari_girnet.evaluation.metrics.mean_deformation_error`).

    python benchmarks/regnet_start.py                       # before fine-tuning
    python benchmarks/regnet_start.py --weights runs/reg/regnet_best.pt --io 0 10 20

fp32, one thread (the machine has 2 cores).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import train_reg as tr  # noqa: E402

from napari_girnet.core.instance import refine_registration  # noqa: E402
from napari_girnet.core.model import GIRNet  # noqa: E402
from napari_girnet.core.runtime import resolve_runtime  # noqa: E402
from napari_girnet.core.symnet import load_symnet_state  # noqa: E402
from napari_girnet.data.atlas import load_atlas  # noqa: E402

Fn = Callable[[torch.Tensor], np.ndarray]


def _model(state: dict | None, int_downsize: int | None = None) -> GIRNet:
    cfg = tr.regnet_config()
    if int_downsize is not None:
        cfg = cfg.override(net={"int_downsize": int_downsize})
    m = GIRNet(cfg)
    if state is not None:
        m.reg.load_state_dict(state)
    resolve_runtime(cfg.runtime.__class__(precision="fp32", channels_last="on")).prepare_module(m)
    return m.eval()


def _cl(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last_3d)


def net_fn(model: GIRNet, atlas: torch.Tensor) -> Fn:
    def fn(scan: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return model.register(_cl(scan), _cl(atlas)).phi_ts[0].numpy()

    return fn


def at_1mm_fn(model: GIRNet, atlas: torch.Tensor) -> Fn:
    """Network on the 2x upsampled pair, ``phi_ts`` resampled back to the 2 mm grid."""
    up = tuple(2 * s for s in atlas.shape[2:])
    a1 = _cl(F.interpolate(atlas, size=up, mode="trilinear", align_corners=True))

    def fn(scan: torch.Tensor) -> np.ndarray:
        s1 = _cl(F.interpolate(scan, size=up, mode="trilinear", align_corners=True))
        with torch.no_grad():
            phi = model.register(s1, a1).phi_ts
            phi = GIRNet._resize_field(phi, tuple(atlas.shape[2:]))
        return phi[0].numpy()

    return fn


def io_fn(model: GIRNet, atlas: torch.Tensor, steps: int, lr: float) -> Fn:
    """Instance optimisation (core.instance) on the raw scan (no lesion mask known)."""

    def fn(scan: torch.Tensor) -> np.ndarray:
        res = refine_registration(model, scan, atlas, steps=steps, lr=lr, target=scan)
        return res.fields.phi_ts[0].detach().numpy()

    return fn


def identity_fn(scan: torch.Tensor) -> np.ndarray:
    return np.zeros((3, *scan.shape[2:]), dtype=np.float32)


def summarise(name: str, rows: list[dict], seconds: float) -> str:
    m = {k: float(np.mean([r[k] for r in rows])) for k in ("in", "near", "far", "brain")}
    return (
        f"| {name} | {len(rows)} | {m['in']:.2f} | {m['near']:.2f} | {m['far']:.2f} | "
        f"{m['brain']:.2f} | {seconds / max(len(rows), 1):.1f} |"
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", nargs="*", default=[], help="fine-tuned RegNet state dicts")
    p.add_argument(
        "--methods",
        nargs="*",
        default=["identity", "random", "symnet", "symnet-int1", "symnet-noflip", "symnet-1mm"],
    )
    p.add_argument("--io", nargs="*", type=int, default=[], help="instance-optimisation steps")
    p.add_argument("--io-cases", type=int, default=2, help="atlas cases used for the IO rows")
    p.add_argument("--sets", nargs="*", default=["atlas", "oasis"])
    p.add_argument("--per-case", action="store_true")
    a = p.parse_args()
    torch.set_num_threads(1)
    cache = ROOT / "runs" / "reg_cache"
    cases = tr.validation_cases(cache)
    sets = {
        "atlas": [c for c in cases if c.truth is not None],
        "oasis": [c for c in cases if c.truth is None],
    }
    atlas = torch.from_numpy(np.asarray(load_atlas("2mm").image.array, dtype=np.float32))[
        None, None
    ]
    sym = load_symnet_state(tr.SYMNET)
    models: dict[str, Callable[[], Fn]] = {
        "identity": lambda: identity_fn,
        "random": lambda: net_fn(_model(None), atlas),
        "symnet": lambda: net_fn(_model(sym), atlas),
        "symnet-int1": lambda: net_fn(_model(sym, int_downsize=1), atlas),
        "symnet-noflip": lambda: net_fn(_model(load_symnet_state(tr.SYMNET, flip=False)), atlas),
        "symnet-1mm": lambda: at_1mm_fn(_model(sym), atlas),
    }
    todo: list[tuple[str, Fn]] = [(m, models[m]()) for m in a.methods]
    for w in a.weights:
        state = torch.load(w, map_location="cpu", weights_only=True)
        todo.append(
            (f"finetuned {Path(w).parent.name}/{Path(w).name}", net_fn(_model(state), atlas))
        )
    print("| method | cases | MDE in | near | far | brain (mm) | s/case |")
    print("|---|---|---|---|---|---|---|")
    for set_name in a.sets:
        for name, fn in todo:
            if set_name == "oasis" and name == "identity":
                continue
            t0 = time.perf_counter()
            rows = tr.mde_table(fn, sets[set_name])
            print(summarise(f"{set_name}: {name}", rows, time.perf_counter() - t0), flush=True)
            if a.per_case:
                for r in rows:
                    print(
                        f"|   {r['case']} | | {r['in']:.2f} | {r['near']:.2f} | {r['far']:.2f} | "
                        f"{r['brain']:.2f} | |"
                    )
    if a.io:
        starts = [("symnet", sym)] + [
            (Path(w).name, torch.load(w, map_location="cpu", weights_only=True)) for w in a.weights
        ]
        io_cases = sets["atlas"][: a.io_cases]
        for name, state in starts:
            model = _model(state)
            lr = model.config.schedule.instance_lr
            for steps in a.io:
                t0 = time.perf_counter()
                rows = tr.mde_table(io_fn(model, atlas, steps, lr), io_cases)
                print(
                    summarise(
                        f"atlas: {name} + IO {steps} (lr {lr})", rows, time.perf_counter() - t0
                    ),
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
