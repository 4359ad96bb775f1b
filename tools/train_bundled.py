"""Train the model bundled with napari-girnet for a preset (re-runnable, resumable).

Three stages on pseudo-pathological cases built from the bundled real data (Colin27 and the
atlas as healthy brains under random diffeomorphisms, real MS lesion masks pasted with real
lesion intensities), following GIRNet's recipe (``shared/reference/method.md`` §1.6, G15):

1. ``reg``: RegNet alone (registration loss on raw images, as GIRNet's healthy "normal" mode);
2. ``inp``: InpNet copy-paste pretraining on random boxes, guided by the atlas warped by (1);
3. ``colearn``: the full reg x1 / seg x2 / inp x2 co-learning.

The lesions of the bundled samples (``ms07``, ``ms19``, ``glioma``) are excluded by default so
that every sample stays a held-out test case. Each stage writes ``<out>/<stage>/last.pt`` and
resumes from it; the final weights (weights only, with provenance) go to
``src/napari_girnet/weights/<preset>.pt``.

    python tools/train_bundled.py --preset cpu-2mm --out runs/bundled --reg 300 --inp 300 \
        --colearn 900
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from napari_girnet import api
from napari_girnet.core.checkpoint import Checkpoint, load_checkpoint, save_checkpoint

HELD_OUT = ("ms07", "ms19", "glioma")


def stage(name: str, cfg, out: Path, init, n_cases: int, seed: int, exclude) -> Path:
    ckpt_dir = out / name
    session = api.fit(
        [],
        config=cfg,
        checkpoint_dir=ckpt_dir,
        init=init,
        pseudo_cases=n_cases,
        exclude_lesions=exclude,
        seed=seed,
        preview=False,
    )
    t0 = time.perf_counter()
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    log = (ckpt_dir / "history.jsonl").open("a")
    for rep in session:
        if rep.is_final:
            break
        log.write(
            json.dumps(
                {
                    "step": rep.step,
                    "phase": rep.phase,
                    "loss": rep.loss,
                    "s": rep.seconds,
                    **rep.terms,
                }
            )
            + "\n"
        )
        log.flush()
        if rep.step % 10 == 0:
            print(
                f"[{name}] step {rep.step}/{rep.total_steps} {rep.phase} loss {rep.loss:.4f} "
                f"({rep.seconds:.1f} s/step, {time.perf_counter() - t0:.0f} s)",
                flush=True,
            )
    log.close()
    return ckpt_dir / "last.pt"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu-2mm")
    parser.add_argument("--out", default="runs/bundled")
    parser.add_argument("--reg", type=int, default=300, help="RegNet-only steps")
    parser.add_argument("--inp", type=int, default=300, help="InpNet box pretraining steps")
    parser.add_argument("--colearn", type=int, default=900, help="co-learning steps")
    parser.add_argument("--cases", type=int, default=48, help="pseudo-pathological cases")
    parser.add_argument(
        "--lr-reg",
        type=float,
        default=1e-3,
        help="RegNet-only stage (short CPU schedules need more than GIRNet's 1e-4)",
    )
    parser.add_argument("--lr-inp", type=float, default=1e-3, help="InpNet box pretraining")
    parser.add_argument("--lr-colearn", type=float, default=5e-4, help="co-learning stage")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--exclude", nargs="*", default=list(HELD_OUT))
    parser.add_argument("--weights", default=None, help="where to write the bundled weights")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    out = Path(args.out)
    base = api.resolve_config(
        args.preset, runtime={"seed": args.seed, "checkpoint_every": 10, "preview_every": 0}
    )
    reg_cfg = base.override(
        schedule={"steps": args.reg, "k_reg": 1, "k_seg": 0, "k_inp": 0, "lr": args.lr_reg},
        loss={"reg_on_inpainted": False},
    )
    ckpt = stage("reg", reg_cfg, out, None, args.cases, args.seed, args.exclude)
    inp_cfg = base.override(
        schedule={"steps": 0, "pretrain_inp_steps": args.inp, "pretrain_lr": args.lr_inp}
    )
    ckpt = stage("inp", inp_cfg, out, ckpt, args.cases, args.seed + 1, args.exclude)
    co_cfg = base.override(schedule={"steps": args.colearn, "lr": args.lr_colearn})
    ckpt = stage("colearn", co_cfg, out, ckpt, args.cases, args.seed + 2, args.exclude)

    final = load_checkpoint(ckpt)
    weights = (
        Path(args.weights)
        if args.weights
        else (
            Path(__file__).resolve().parents[1]
            / "src"
            / "napari_girnet"
            / "weights"
            / f"{args.preset}.pt"
        )
    )
    provenance = {
        **final.provenance,
        "recipe": {
            "reg_steps": args.reg,
            "inp_pretrain_steps": args.inp,
            "colearn_steps": args.colearn,
            "pseudo_cases": args.cases,
            "learning_rates": {"reg": args.lr_reg, "inp": args.lr_inp, "colearn": args.lr_colearn},
            "held_out_lesions": args.exclude,
            "seed": args.seed,
        },
        "trained_with": "tools/train_bundled.py",
    }
    save_checkpoint(
        Checkpoint(config=base, model=final.model, step=0, trainer={}, provenance=provenance),
        weights,
    )
    print(f"bundled weights written to {weights}")


if __name__ == "__main__":
    main()
