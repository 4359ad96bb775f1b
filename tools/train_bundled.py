"""Train the GIRNet model bundled with napari-girnet for a preset (re-runnable, resumable).

Phases (each writes ``<out>/<phase>/last.pt``, a whole-model checkpoint, and
``<out>/<phase>/history.jsonl``, flushed every step; a rerun with the same arguments skips the
finished phases and continues an interrupted one from its last checkpoint with the same numbers):

1. ``reg``    RegNet: the fine-tuned SymNet weights (``--reg-weights``, a RegNet state dict) or
              the authors' SymNet mapped onto RegNet (``--symnet``); frozen afterwards.
2. guides     the atlas warped onto every training brain/case by that RegNet (cached, npz).
3. ``inp``    InpNet copy-paste pretraining on random boxes of healthy OASIS brains with the
              atlas-guided target (histogram-matched warped atlas inside the box, the scan
              outside), on random crops (``core.pretrain`` via ``CoLearner``'s pretraining phase).
4. ``seg``    supervised SegNet warm start (BCE + soft Dice) on lesion-centred crops of the
              pseudo-pathological training cases plus healthy brains as negatives
              (``core.segtrain``); reported separately because it uses pseudo masks.
5. ``mmi``    GIRNet's unsupervised game (seg x2 / inp x2, RegNet frozen, GIRNet's MMI loss) on
              crops of the training cases, from the warm-started SegNet and pretrained InpNet.

Every ``--val-every`` steps of phases 4-5 the history gets ``val_dice`` (mean Dice at 0.5 over
``--n-val`` validation cases, whole working grid) and ``val_fp_ml`` (false lesion volume on the
healthy validation brain), so a collapse to the empty mask is visible while it happens.

    python tools/train_bundled.py --out runs/bundled --cases runs/cases-2mm \
        --healthy runs/oasis-2mm --symnet SYMNet_neurite_oasis_smo30_update_80000.pth \
        --inp-steps 150 --seg-steps 1200 --mmi-steps 120

``--final`` writes the model of the last finished phase (weights only) to that path.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_girnet import api
from napari_girnet.core.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from napari_girnet.core.colearn import CoLearner
from napari_girnet.core.config import GIRNetConfig
from napari_girnet.core.model import GIRNet
from napari_girnet.core.runtime import seed_everything
from napari_girnet.core.segtrain import CropSampler, SupervisedSegTrainer
from napari_girnet.core.spatial import warp

VAL_HEALTHY = ("1119", "1122", "1125", "1128")


# ----------------------------------------------------------------------------- data
def load_healthy(folder: Path, ids: list[str] | None = None) -> dict[str, np.ndarray]:
    """Prepared healthy brains ``{id: (X, Y, Z) float32}`` from ``tools/prepare_oasis.py``."""
    out = {}
    for p in sorted(folder.glob("*.npz")):
        if p.name.endswith(".tmp.npz"):
            continue
        if ids is not None and p.stem not in ids:
            continue
        out[p.stem] = np.load(p)["image"].astype(np.float32)
    return out


Case = tuple[str, np.ndarray, np.ndarray, str]


def load_cases(folder: Path, split: str, pin: Path | None = None) -> list[Case]:
    """``(name, scan, mask, kind)`` of the cases of a split (``data.case_loader``).

    With ``pin``, the list of case names is written there on the first call and read back on
    later calls, so a resumed phase trains on the same cases while the folder keeps growing.
    """
    from napari_girnet.data.case_loader import list_cases, read_training_case

    paths = list_cases(folder, split)
    if pin is not None:
        if pin.is_file():
            names = json.loads(pin.read_text())
            paths = [folder / n for n in names]
        else:
            pin.parent.mkdir(parents=True, exist_ok=True)
            pin.write_text(json.dumps([p.name for p in paths]))
    from napari_girnet.data.synthetic import SyntheticError

    out = []
    for p in paths:
        try:
            c = read_training_case(p)
        except SyntheticError as err:  # a case being rewritten by make-cases
            print(f"[data] skipped {p.name}: {err}", flush=True)
            continue
        kind = json.loads((p / "case.json").read_text()).get("lesion_kind", "?")
        out.append((p.name, c.scan, (c.mask > 0.5).astype(np.float32), str(kind)))
    return out


def t1(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None]


# ----------------------------------------------------------------------------- config
def base_config(preset: str, seed: int, reg_channels: int) -> GIRNetConfig:
    cfg = api.resolve_config(
        preset,
        runtime={"seed": seed, "checkpoint_every": 25, "preview_every": 0, "threads": 1,
                 "precision": "fp32"},
    )
    if cfg.net.reg_start_channels != reg_channels:
        cfg = cfg.override(net={"reg_start_channels": reg_channels})
    return cfg


def regnet_state(args: argparse.Namespace) -> tuple[dict[str, torch.Tensor], str]:
    if args.reg_weights and Path(args.reg_weights).is_file():
        sd = torch.load(args.reg_weights, map_location="cpu", weights_only=True)
        if "state_dict" in sd:
            sd = sd["state_dict"]
        return sd, f"fine-tuned SymNet ({args.reg_weights})"
    from napari_girnet.core.symnet import load_symnet_state

    return load_symnet_state(args.symnet), f"SymNet mapped ({Path(args.symnet).name})"


# ----------------------------------------------------------------------------- history
class History:
    """Append-only JSON lines, flushed per record; truncated to a resumed step on reopen."""

    def __init__(self, path: Path, resume_step: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        kept = []
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if int(rec.get("step", 0)) <= resume_step:
                    kept.append(line)
        path.write_text("".join(k + "\n" for k in kept))
        self.fh = path.open("a")

    def write(self, rec: dict[str, Any]) -> None:
        self.fh.write(json.dumps(rec) + "\n")
        self.fh.flush()

    def close(self) -> None:
        self.fh.close()


# ----------------------------------------------------------------------------- validation
class Validator:
    """Mean Dice at 0.5 on validation cases and false volume on a healthy brain (whole grid)."""

    def __init__(self, cases: list[tuple[str, np.ndarray, np.ndarray, str]],
                 healthy: np.ndarray | None, voxel_ml: float) -> None:
        self.cases = cases
        self.healthy = healthy
        self.voxel_ml = voxel_ml

    @torch.no_grad()
    def __call__(self, model: GIRNet) -> dict[str, float]:
        seg = model.seg
        was = seg.training
        seg.eval()
        dices = []
        for _, scan, mask, _ in self.cases:
            p = seg(t1(scan)[None]).float()[0, 0].numpy() > 0.5
            t = mask > 0.5
            denom = p.sum() + t.sum()
            dices.append(2.0 * float((p & t).sum()) / denom if denom else 1.0)
        out = {"val_dice": float(np.mean(dices)) if dices else float("nan")}
        if self.healthy is not None:
            p = seg(t1(self.healthy)[None]).float()[0, 0].numpy() > 0.5
            out["val_fp_ml"] = float(p.sum()) * self.voxel_ml
        seg.train(was)
        return out


# ----------------------------------------------------------------------------- phases
def _val_text(rec: dict[str, Any]) -> str:
    if "val_dice" not in rec:
        return ""
    return f" val_dice {rec['val_dice']:.3f} fp {rec.get('val_fp_ml', 0):.1f} mL"


def phase_done(ckpt_dir: Path, planned: int) -> bool:
    last = ckpt_dir / "last.pt"
    return last.is_file() and load_checkpoint(last).step >= planned


def run_reg(args, cfg: GIRNetConfig, out: Path) -> Path:
    d = out / "reg"
    if (d / "last.pt").is_file():
        return d / "last.pt"
    seed_everything(args.seed)
    model = GIRNet(cfg)
    sd, source = regnet_state(args)
    model.reg.load_state_dict(sd, strict=True)
    ckpt = Checkpoint(
        config=cfg, model={t: n.state_dict() for t, n in model.networks.items()}, step=0,
        trainer={"phase": "reg"}, provenance={"regnet": source, "seed": args.seed},
    )
    print(f"[reg] RegNet from {source}", flush=True)
    return save_checkpoint(ckpt, d / "last.pt")


@torch.no_grad()
def guides_for(model: GIRNet, images: dict[str, np.ndarray], atlas: torch.Tensor,
               cache: Path) -> dict[str, np.ndarray]:
    """Atlas warped onto each image by the (frozen) RegNet, cached as ``<cache>/<name>.npy``."""
    cache.mkdir(parents=True, exist_ok=True)
    out = {}
    model.eval()
    for name, img in images.items():
        p = cache / f"{name}.npy"
        if p.is_file():
            out[name] = np.load(p)
            continue
        t0 = time.perf_counter()
        scan = t1(img)[None]
        phi = model.atlas_to_scan_field(scan, atlas)
        g = warp(atlas, phi)[0, 0].numpy().astype(np.float32)
        np.save(p, g)
        out[name] = g
        print(f"[guides] {name} {time.perf_counter() - t0:.1f} s", flush=True)
    return out


def drive_colearner(learner: CoLearner, hist: History, validate: Callable | None,
                    val_every: int, tag: str, t0: float) -> None:
    for rep in learner.steps():
        if rep.is_final:
            break
        rec = {"step": rep.step, "phase": rep.phase, "loss": rep.loss, "s": rep.seconds,
               **rep.terms}
        if validate is not None and (rep.step % val_every == 0 or rep.step == rep.total_steps):
            rec.update(validate(learner.model))
        hist.write(rec)
        if rep.step % 10 == 0 or "val_dice" in rec:
            extra = _val_text(rec)
            print(f"[{tag}] {rep.step}/{rep.total_steps} {rep.phase} loss {rep.loss:.4f} "
                  f"mask {rep.terms.get('mask_fraction', float('nan')):.4f}{extra} "
                  f"({rep.seconds:.2f} s/step, {time.perf_counter() - t0:.0f} s)", flush=True)


def run_inp(args, cfg, out, init: Path, healthy, guides, atlas_np) -> Path:
    d = out / "inp"
    if phase_done(d, args.inp_steps):
        return d / "last.pt"
    pcfg = cfg.override(schedule={"steps": 0, "pretrain_inp_steps": args.inp_steps,
                                  "pretrain_lr": args.lr_inp})
    vols = [(t1(img), t1(np.zeros_like(img)), t1(atlas_np), t1(guides[k]))
            for k, img in healthy.items()]
    crops = CropSampler(vols, args.crop, batch_size=1, seed=args.seed + 11, lesion_prob=0.0)

    def sampler(step: int):
        s, _, a, g = crops(step)
        return s, a, g

    if (d / "last.pt").is_file():
        learner = CoLearner.resume(d / "last.pt", sampler, config=pcfg, checkpoint_dir=d,
                                   pretrain_sampler=sampler)
    else:
        model = GIRNet.from_checkpoint(init)
        learner = CoLearner(model, sampler, pcfg, checkpoint_dir=d, pretrain_sampler=sampler,
                            provenance={"phase": "inp"})
    hist = History(d / "history.jsonl", learner.step)
    drive_colearner(learner, hist, None, 0, "inp", time.perf_counter())
    hist.close()
    return d / "last.pt"


def run_seg(args, cfg, out, init: Path, train_cases, healthy, validate) -> Path:
    d = out / "seg"
    if phase_done(d, args.seg_steps):
        return d / "last.pt"
    vols = [(t1(s), t1(m)) for _, s, m, _ in train_cases]
    vols += [(t1(img), t1(np.zeros_like(img))) for img in healthy.values()]
    crops = CropSampler(vols, args.crop, batch_size=args.batch, seed=args.seed + 21,
                        lesion_prob=args.lesion_prob)
    model = GIRNet.from_checkpoint(init)
    trainer = SupervisedSegTrainer(model, crops, args.seg_steps, lr=args.lr_seg,
                                   reinit=args.seg_init == "kaiming", checkpoint_dir=d,
                                   checkpoint_every=25, config=cfg,
                                   provenance={"phase": "seg", "init": str(init)})
    trainer.resume_from(d / "last.pt")
    hist = History(d / "history.jsonl", trainer.step)
    t0 = time.perf_counter()
    for rep in trainer.steps():
        rec = {"step": rep.step, "phase": "seg-supervised", "loss": rep.loss, "s": rep.seconds,
               "lr": rep.lr, **rep.terms}
        if rep.step % args.val_every == 0 or rep.step == rep.total_steps:
            rec.update(validate(trainer.model))
        hist.write(rec)
        if rep.step % 10 == 0 or "val_dice" in rec:
            extra = _val_text(rec)
            print(f"[seg] {rep.step}/{rep.total_steps} loss {rep.loss:.4f} "
                  f"dice {rep.terms['soft_dice']:.3f}{extra} ({rep.seconds:.2f} s/step, "
                  f"{time.perf_counter() - t0:.0f} s)", flush=True)
    hist.close()
    return d / "last.pt"


def run_mmi(args, cfg, out, init: Path, train_cases, guides, atlas_np, validate) -> Path:
    d = out / "mmi"
    if phase_done(d, args.mmi_steps):
        return d / "last.pt"
    mcfg = cfg.override(
        schedule={"steps": args.mmi_steps, "k_reg": 0, "k_seg": 2, "k_inp": 2,
                  "lr": args.lr_mmi, "pretrain_inp_steps": 0},
        loss={"seg_form": args.mmi_form},
    )
    vols = [(t1(s), t1(m), t1(atlas_np), t1(guides[n])) for n, s, m, _ in train_cases
            if n in guides]
    crops = CropSampler(vols, args.crop, batch_size=1, seed=args.seed + 31,
                        lesion_prob=args.lesion_prob)

    def sampler(step: int):
        s, _, a, g = crops(step)
        return s, a, g

    if (d / "last.pt").is_file():
        learner = CoLearner.resume(d / "last.pt", sampler, config=mcfg, checkpoint_dir=d)
    else:
        model = GIRNet.from_checkpoint(init)
        inp_ckpt = out / "inp" / "last.pt"
        if inp_ckpt.is_file():  # the seg phase may have started from the RegNet-only model
            model.inp.load_state_dict(load_checkpoint(inp_ckpt).model["inp"])
        learner = CoLearner(model, sampler, mcfg, checkpoint_dir=d, provenance={"phase": "mmi"})
    hist = History(d / "history.jsonl", learner.step)
    if learner.step == 0:
        hist.write({"step": 0, "phase": "mmi-start", **validate(learner.model)})
    drive_colearner(learner, hist, validate, args.val_every, "mmi", time.perf_counter())
    hist.close()
    return d / "last.pt"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu-2mm")
    parser.add_argument("--out", default="runs/bundled")
    parser.add_argument("--cases", default="runs/cases-2mm")
    parser.add_argument("--healthy", default="runs/oasis-2mm")
    parser.add_argument("--reg-weights", default="runs/reg/regnet_best.pt")
    parser.add_argument("--symnet", default=None, help="authors' SymNet .pth (fallback start)")
    parser.add_argument("--reg-channels", type=int, default=7)
    parser.add_argument("--phases", nargs="+", default=["reg", "inp", "seg", "mmi"])
    parser.add_argument("--inp-steps", type=int, default=150)
    parser.add_argument("--seg-steps", type=int, default=1200)
    parser.add_argument("--mmi-steps", type=int, default=120)
    parser.add_argument("--mmi-form", default="minus", choices=["minus", "plus"])
    parser.add_argument("--mmi-cases", type=int, default=16)
    parser.add_argument("--crop", type=int, nargs=3, default=[48, 64, 48])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seg-init", default="kaiming", choices=["kaiming", "reference"])
    parser.add_argument("--lesion-prob", type=float, default=0.7)
    parser.add_argument("--lr-inp", type=float, default=1e-3)
    parser.add_argument("--lr-seg", type=float, default=1e-3)
    parser.add_argument("--lr-mmi", type=float, default=1e-4)
    parser.add_argument("--val-every", type=int, default=50)
    parser.add_argument("--n-val", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--final", default=None, help="write the final weights-only model here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    out = Path(args.out)
    cfg = base_config(args.preset, args.seed, args.reg_channels)
    atlas = api.load_atlas_for(cfg)
    atlas_np = np.asarray(atlas.image.array, dtype=np.float32)
    voxel_ml = float(np.prod(np.abs(np.diag(atlas.image.affine)[:3]))) / 1000.0

    ckpt = run_reg(args, cfg, out)
    model = GIRNet.from_checkpoint(ckpt)
    atlas_t = t1(atlas_np)[None]
    healthy_all = load_healthy(Path(args.healthy))
    healthy = {k: v for k, v in healthy_all.items() if k not in VAL_HEALTHY}
    need_cases = {"seg", "mmi"} & set(args.phases)
    train_cases = (
        load_cases(Path(args.cases), "train", out / "seg" / "train_cases.json")
        if need_cases else []
    )
    val_cases = (
        load_cases(Path(args.cases), "val", out / "seg" / "val_cases.json") if need_cases else []
    )
    # a fixed, kind-diverse validation subset (sorted by name, round-robin over kinds)
    by_kind: dict[str, list] = {}
    for c in val_cases:
        by_kind.setdefault(c[3], []).append(c)
    subset = []
    while len(subset) < args.n_val and any(by_kind.values()):
        for k in sorted(by_kind):
            if by_kind[k] and len(subset) < args.n_val:
                subset.append(by_kind[k].pop(0))
    validate = Validator(subset, healthy_all.get(VAL_HEALTHY[0]), voxel_ml)
    print(f"[data] {len(healthy)} healthy train brains, {len(train_cases)} train / "
          f"{len(val_cases)} val cases; validating on {[c[0] + ':' + c[3] for c in subset]}",
          flush=True)

    if "inp" in args.phases:
        guides = guides_for(model, healthy, atlas_t, out / "guides")
        ckpt = run_inp(args, cfg, out, ckpt, healthy, guides, atlas_np)
    if "seg" in args.phases:
        if "inp" not in args.phases and phase_done(out / "inp", args.inp_steps):
            ckpt = out / "inp" / "last.pt"
        ckpt = run_seg(args, cfg, out, ckpt, train_cases, healthy, validate)
    if "mmi" in args.phases:
        mmi_cases = train_cases[: args.mmi_cases]
        guides = guides_for(model, {n: s for n, s, _, _ in mmi_cases}, atlas_t, out / "guides")
        ckpt = run_mmi(args, cfg, out, ckpt, mmi_cases, guides, atlas_np, validate)
    if args.final:
        final = load_checkpoint(ckpt)
        prov = {**final.provenance, "trained_with": "tools/train_bundled.py",
                "recipe": {k: (v if not isinstance(v, list) else list(v))
                           for k, v in vars(args).items()}}
        save_checkpoint(Checkpoint(config=final.config, model=final.model, step=0, trainer={},
                                   provenance=prov), args.final)
        print(f"final model written to {args.final}", flush=True)


if __name__ == "__main__":
    main()
