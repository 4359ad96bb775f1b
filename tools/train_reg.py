"""Fine-tune RegNet from the public SymNet weights with GIRNet's registration loss (2 mm grid).

Start: the authors' SymNet OASIS checkpoint mapped to the working grid's RAS axis order
(:func:`napari_girnet.core.symnet.load_symnet_state`). Loss: the model's own registration loss
(:func:`napari_girnet.core.losses.registration_loss`) with the preset's loss configuration
(``cpu-2mm``: the standard LNCC form), on healthy brains: the scan is a training OASIS brain
(optionally under a random smooth diffeomorphism), the fixed image the MNI atlas (GIRNet's atlas
task); optionally, with probability ``pair_prob``, another training brain (SymNet's
subject-to-subject task).

Data (prepared once and cached under ``<cache>``, which lives under ``runs/``, git-ignored):

* OASIS-1 MALF brains (``healthy-oasis-malf/<ID>_SS`` + ``<ID>_mask``; CC BY-NC, never
  bundled) aligned to the 2 mm working grid with :func:`napari_girnet.data.preprocess.prepare_scan`
  (what ``napari_girnet.api.prepare`` runs). Subjects 1119, 1122, 1125 and 1128 are validation
  subjects and are never trained on.
* A pool of random smooth diffeomorphisms
  (:func:`napari_girnet.data.synthetic.random_diffeomorphism`, peak 2-8 mm).
* Validation cases with an exact ground truth: the atlas as the healthy brain, deformed by a known
  field, with a real stroke (SOOP) or MS lesion pasted (module :func:`validation_cases`).

Resumable: ``<out>/last.pt`` holds the step, the RegNet and Adam states; the data of step ``k`` is
drawn from ``numpy.random.default_rng([seed, k])``, so an interrupted run continues with the same
numbers. ``<out>/regnet_best.pt`` is the RegNet ``state_dict`` with the lowest validation MDE.

    python tools/train_reg.py --out runs/reg --steps 100
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage as ndi

from napari_girnet.core.config import GIRNetConfig, preset
from napari_girnet.core.losses import registration_loss
from napari_girnet.core.model import GIRNet
from napari_girnet.core.nets import RegNet
from napari_girnet.core.runtime import resolve_runtime
from napari_girnet.core.spatial import warp
from napari_girnet.core.symnet import load_symnet_state
from napari_girnet.data.atlas import load_atlas
from napari_girnet.data.synthetic import LesionSource, atlas_source_brain, make_case
from napari_girnet.evaluation.metrics import mean_deformation_error

log = logging.getLogger("train_reg")

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
OASIS_DIR = SHARED / "data" / "healthy-oasis-malf"
STROKE_DIR = SHARED / "data" / "stroke-lesions-soop" / "masks"
MS_DIR = SHARED / "data" / "ms-lesions" / "masks"
SYMNET = SHARED / "weights" / "symnet-oasis" / "SYMNet_neurite_oasis_smo30_update_80000.pth"
VAL_SUBJECTS = ("1119", "1122", "1125", "1128")
#: bundled samples: never used as lesions here
HELD_OUT_MS = ("patient07", "patient19")


# ----------------------------------------------------------------------------- config
def regnet_config(base: str = "cpu-2mm") -> GIRNetConfig:
    """The preset with SymNet's RegNet width (7 start channels), fp32 on CPU here."""
    cfg = preset(base)
    if cfg.net.reg_start_channels != 7:
        cfg = cfg.override(net={"reg_start_channels": 7})
    return cfg


# ----------------------------------------------------------------------------- data
def oasis_ids(data_dir: Path = OASIS_DIR) -> list[str]:
    """Subject IDs with a skull-stripped T1 and a mask, sorted."""
    return sorted(p.name[: -len("_SS.nii.gz")] for p in data_dir.glob("*_SS.nii.gz"))


def prepared_oasis(
    ids: Sequence[str], cache: Path, data_dir: Path = OASIS_DIR
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{id: (image (1, 1, X, Y, Z) float32 in [0, 1], mask bool)}`` on the 2 mm grid, cached."""
    from napari_girnet.data.nifti import read_nifti
    from napari_girnet.data.preprocess import prepare_scan

    cache.mkdir(parents=True, exist_ok=True)
    atlas = load_atlas("2mm")
    out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for sid in ids:
        file = cache / f"oasis_{sid}.pt"
        if not file.is_file():
            t0 = time.perf_counter()
            scan = read_nifti(data_dir / f"{sid}_SS.nii.gz", name=f"oasis {sid}")
            mask = read_nifti(data_dir / f"{sid}_mask.nii.gz", name=f"oasis {sid} mask")
            mask = mask.with_array(np.asarray(mask.array) > 0)
            prep = prepare_scan(scan, atlas, seed=0, mask=mask)
            image = torch.from_numpy(np.asarray(prep.image.array, dtype=np.float32).copy())
            brain = torch.from_numpy(np.asarray(prep.mask.array, dtype=bool).copy())
            torch.save(
                {"image": image, "mask": brain, "alignment_ok": bool(prep.alignment_ok)}, file
            )
            log.info("prepared OASIS %s in %.1f s", sid, time.perf_counter() - t0)
        d = torch.load(file, weights_only=True)
        out[sid] = (d["image"][None, None], d["mask"])
    return out


def field_pool(cache: Path, n: int, seed: int = 0) -> torch.Tensor:
    """``(n, 3, X, Y, Z)`` random smooth diffeomorphisms (voxels, 2 mm grid), cached."""
    from napari_girnet.data.synthetic import random_diffeomorphism

    file = cache / f"fields_{n}_{seed}.pt"
    if file.is_file():
        return torch.load(file, weights_only=True)
    grid = load_atlas("2mm").image
    rng = np.random.default_rng(seed)
    fields = []
    for _ in range(n):
        peak = float(rng.uniform(2.0, 8.0))
        fields.append(
            torch.from_numpy(
                random_diffeomorphism(grid.shape, grid.spacing, peak, int(rng.integers(2**31)))
            )
        )
    pool = torch.stack(fields)
    cache.mkdir(parents=True, exist_ok=True)
    torch.save(pool, file)
    return pool


def _lesion_on_grid(path: Path, grid) -> np.ndarray:
    from napari_girnet.data.nifti import read_nifti
    from napari_girnet.data.preprocess import resample_like

    vol = read_nifti(path, name=path.name)
    vol = vol.with_array(np.asarray(vol.array, dtype=np.float32) > 0)
    vol = vol.with_array(np.asarray(vol.array, dtype=np.float32))
    return np.asarray(resample_like(vol, grid, order=1).array) > 0.5


def dark_appearance(
    healthy: np.ndarray,
    brain: np.ndarray,
    lesion: np.ndarray,
    quantiles: tuple[float, float],
    seed: int,
) -> np.ndarray:
    """``healthy`` with ``lesion`` filled by textured hypointense values.

    Smooth noise (Gaussian sigma 1 voxel) ranked inside the lesion is mapped to the brain's
    intensity quantiles ``quantiles`` (e.g. (0.01, 0.08): CSF-like for stroke; (0.10, 0.30):
    dark grey matter for MS "black holes").
    """
    rng = np.random.default_rng(seed)
    vals = np.sort(healthy[brain])
    noise = ndi.gaussian_filter(rng.standard_normal(lesion.shape), 1.0)[lesion]
    ranks = np.argsort(np.argsort(noise, kind="stable"), kind="stable")
    q = quantiles[0] + (quantiles[1] - quantiles[0]) * (ranks + 0.5) / ranks.size
    out = healthy.copy()
    out[lesion] = vals[np.clip((q * vals.size).astype(int), 0, vals.size - 1)]
    return out


def lesion_sources(n_stroke: int, n_ms: int, seed: int) -> list[LesionSource]:
    """Real lesion masks (SOOP stroke, MS 01-20 without 07/19) on the 2 mm grid.

    Picked deterministically from ``seed`` among masks of 2-150 mL on the grid; intensities from
    :func:`dark_appearance` on the atlas.
    """
    atlas = load_atlas("2mm")
    grid = atlas.image
    img = np.asarray(grid.array, dtype=np.float32)
    brain = np.asarray(atlas.mask.array, dtype=bool)
    rng = np.random.default_rng(seed)
    out: list[LesionSource] = []
    for kind, folder, n, qs in (
        ("stroke", STROKE_DIR, n_stroke, (0.01, 0.08)),
        ("ms", MS_DIR, n_ms, (0.10, 0.30)),
    ):
        files = sorted(folder.glob("*.nii.gz"))
        files = [f for f in files if not any(h in f.name for h in HELD_OUT_MS)]
        order = rng.permutation(len(files))
        got = 0
        for i in order:
            if got >= n:
                break
            mask = _lesion_on_grid(files[i], grid) & brain
            ml = mask.sum() * 8.0 / 1000.0
            if not 2.0 <= ml <= 150.0:
                continue
            app = dark_appearance(img, brain, mask, qs, seed=int(i))
            name = f"{kind}:{files[i].name.split('.')[0]}"
            out.append(
                LesionSource(
                    name,
                    "ms" if kind == "ms" else "glioma",
                    grid.with_array(mask),
                    grid.with_array(app),
                    f"{kind} mask {files[i].name}, textured hypointense fill {qs}",
                )
            )
            got += 1
    return out


@dataclass
class ValCase:
    """A validation case on the 2 mm grid. ``truth`` is ``None`` when only truth (a) exists."""

    name: str
    scan: torch.Tensor  # (1, 1, X, Y, Z)
    healthy: torch.Tensor
    lesion: np.ndarray
    brain: np.ndarray
    truth: np.ndarray | None  # (3, X, Y, Z) voxels, scan grid -> atlas voxels (phi_ts)


def validation_cases(
    cache: Path, n_atlas: int = 4, oasis: bool = True, seed: int = 1000
) -> list[ValCase]:
    """Atlas-source cases with an exact truth, plus one case per OASIS validation subject.

    Atlas cases: ``healthy = warp(atlas, field)``, so ``field`` is the true ``phi_ts``. OASIS
    cases: a validation brain under a random field with a lesion; the truth is the same method's
    registration of the lesion-free twin (the paper's MDE, truth (a)). Cached in ``cache``.
    """
    file = cache / f"val_{n_atlas}_{int(oasis)}_{seed}.pt"
    if file.is_file():
        d = torch.load(file, weights_only=False)
        return [ValCase(**c) for c in d]
    lesions = lesion_sources(
        n_stroke=(n_atlas + 4) // 2 + 1, n_ms=(n_atlas + 4) // 2 + 1, seed=seed
    )
    src = atlas_source_brain("2mm")
    cases: list[ValCase] = []
    rng = np.random.default_rng(seed)
    li = 0

    def add(brain, tag: str, exact: bool) -> None:
        nonlocal li
        for _ in range(len(lesions)):
            lesion = lesions[li % len(lesions)]
            li += 1
            try:
                case = make_case(brain, lesion, seed=int(rng.integers(2**31)))
            except ValueError:
                continue
            cases.append(
                ValCase(
                    name=f"{tag}+{lesion.name}",
                    scan=torch.from_numpy(np.asarray(case.scan.array, dtype=np.float32))[
                        None, None
                    ],
                    healthy=torch.from_numpy(np.asarray(case.healthy.array, dtype=np.float32))[
                        None, None
                    ],
                    lesion=np.asarray(case.lesion.array, dtype=bool),
                    brain=np.asarray(case.brain_mask.array, dtype=bool),
                    truth=case.field if exact else None,
                )
            )
            return

    for _ in range(n_atlas):
        add(src, "atlas", True)
    if oasis:
        from napari_girnet.data.synthetic import SourceBrain

        grid = load_atlas("2mm").image
        for sid, (img, mask) in prepared_oasis(VAL_SUBJECTS, cache).items():
            brain = SourceBrain(
                f"oasis{sid}",
                grid.with_array(img[0, 0].numpy()),
                None,
                grid.with_array(mask.numpy()),
            )
            add(brain, f"oasis{sid}", False)
    torch.save([c.__dict__ for c in cases], file)
    return cases


# ----------------------------------------------------------------------------- evaluation
def mde_table(
    fields_fn: Callable[[torch.Tensor], np.ndarray], cases: Sequence[ValCase]
) -> list[dict[str, float]]:
    """Per case: MDE in / near / far / brain (mm) of ``fields_fn(scan) -> phi_ts (3, X, Y, Z)``.

    Exact-truth cases compare with the truth; the others with ``fields_fn(healthy)``.
    """
    rows = []
    for c in cases:
        pred = fields_fn(c.scan)
        truth = c.truth if c.truth is not None else fields_fn(c.healthy)
        m = mean_deformation_error(pred, truth, c.lesion, c.brain, spacing=(2.0, 2.0, 2.0))
        rows.append({"case": c.name, **{k: m[k]["mean"] for k in ("in", "near", "far", "brain")}})
    return rows


def model_fields(model: GIRNet, atlas: torch.Tensor) -> Callable[[torch.Tensor], np.ndarray]:
    """``scan -> phi_ts`` (numpy, voxels) of a model's RegNet, no gradient."""

    def fn(scan: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            was = model.training
            model.eval()
            f = model.register(scan, atlas)
            model.train(was)
        return f.phi_ts[0].numpy()

    return fn


# ----------------------------------------------------------------------------- training
def finetune_regnet(
    out: str | Path,
    steps: int,
    *,
    cfg: GIRNetConfig | None = None,
    symnet: str | Path | None = SYMNET,
    cache: str | Path | None = None,
    seed: int = 0,
    lr: float = 1e-4,
    deform_prob: float = 0.7,
    pair_prob: float = 0.0,
    checkpoint_every: int = 10,
    log_every: int = 1,
    val_every: int = 20,
    n_val: int = 2,
    threads: int = 1,
    n_fields: int = 24,
    max_seconds: float | None = None,
) -> Path:
    """Fine-tune RegNet (resumable); returns ``<out>/regnet_best.pt``.

    Parameters
    ----------
    out : path
        Run folder: ``last.pt`` (resume state), ``regnet_best.pt``, ``regnet_last.pt``,
        ``log.txt`` and ``history.jsonl``.
    steps : int
        Total optimisation steps (a resumed run continues up to this number).
    cfg : GIRNetConfig
        Default: ``cpu-2mm`` with 7 RegNet start channels (:func:`regnet_config`).
    symnet : path or None
        SymNet checkpoint to start from (``None``: the preset's random initialisation).
    cache : path
        Prepared data (default ``runs/reg_cache``).
    seed, lr, deform_prob, pair_prob
        Data seed, Adam learning rate, probability of a random field on the scan, probability of a
        subject-to-subject pair instead of the atlas.
    checkpoint_every, log_every, val_every, n_val
        Checkpoint / log / validation period in steps; number of exact-truth validation cases
        used for the running validation (and for choosing ``regnet_best.pt``).
    threads : int
        Torch intra-op threads.
    max_seconds : float, optional
        Stop (after a checkpoint) when this much wall time has passed in this call.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(cache) if cache is not None else ROOT / "runs" / "reg_cache"
    cfg = cfg or regnet_config()
    torch.set_num_threads(threads)
    rt = resolve_runtime(cfg.runtime)
    logfile = (out / "log.txt").open("a")

    def say(msg: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {msg}"
        logfile.write(line + "\n")
        logfile.flush()
        log.info(msg)

    train_ids = [i for i in oasis_ids() if i not in VAL_SUBJECTS]
    data = prepared_oasis(train_ids, cache)
    pool = field_pool(cache, n_fields)
    val = [c for c in validation_cases(cache) if c.truth is not None][:n_val]
    atlas = torch.from_numpy(np.asarray(load_atlas("2mm").image.array, dtype=np.float32))[
        None, None
    ]

    model = GIRNet(cfg)
    if symnet is not None:
        model.reg.load_state_dict(load_symnet_state(symnet))
    else:  # the preset's initialisation, drawn from a generator seeded with ``seed``
        net = cfg.net
        model.reg.load_state_dict(
            RegNet(
                ndim=cfg.data.ndim,
                start_channels=net.reg_start_channels,
                range_flow=net.range_flow,
                head_std=net.reg_head_std,
                seed=seed,
            ).state_dict()
        )
    opt = torch.optim.Adam(model.reg.parameters(), lr=lr)
    state_file = out / "last.pt"
    step, best, best_step = 0, math.inf, -1
    if state_file.is_file():
        st = torch.load(state_file, weights_only=True)
        model.reg.load_state_dict(st["reg"])
        opt.load_state_dict(st["opt"])
        step, best, best_step = int(st["step"]), float(st["best"]), int(st["best_step"])
        say(f"resumed from {state_file} at step {step} (best val MDE {best:.3f} @ {best_step})")
    else:
        say(
            f"start: symnet={symnet} lr={lr} steps={steps} deform_prob={deform_prob} "
            f"pair_prob={pair_prob} train_subjects={len(train_ids)} "
            f"config={json.dumps(cfg.to_dict()['net'])} precision={rt.precision}"
        )
    rt.prepare_module(model)
    history = (out / "history.jsonl").open("a")

    def validate() -> tuple[float, dict[str, float]]:
        if not val:
            return math.inf, {}
        rows = mde_table(model_fields(model, rt.prepare(atlas)), val)
        mean = {k: float(np.mean([r[k] for r in rows])) for k in ("in", "near", "far", "brain")}
        return mean["brain"], mean

    def save(step_done: int) -> None:
        torch.save(
            {
                "step": step_done,
                "reg": model.reg.state_dict(),
                "opt": opt.state_dict(),
                "best": best,
                "best_step": best_step,
            },
            state_file.with_suffix(".tmp"),
        )
        state_file.with_suffix(".tmp").replace(state_file)
        torch.save(model.reg.state_dict(), out / "regnet_last.pt")

    if step == 0:
        score, mean = validate()
        say(f"step 0 val MDE {json.dumps({k: round(v, 3) for k, v in mean.items()})}")
        best, best_step = score, 0
        torch.save(model.reg.state_dict(), out / "regnet_best.pt")
    t_start = time.perf_counter()
    model.train()
    while step < steps:
        rng = np.random.default_rng([seed, step])
        sid = train_ids[int(rng.integers(len(train_ids)))]
        scan = data[sid][0]
        if rng.random() < deform_prob:
            scan = warp(scan, pool[int(rng.integers(len(pool)))][None]).clamp(0.0, 1.0)
        fixed = atlas
        if rng.random() < pair_prob:
            other = train_ids[int(rng.integers(len(train_ids)))]
            fixed = data[other][0]
        scan, fixed = rt.prepare(scan), rt.prepare(fixed)
        t0 = time.perf_counter()
        with rt.autocast():
            fields = model.register(scan, fixed)
        loss, terms = registration_loss(fields, scan, fixed, cfg.loss)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        rec = {
            "step": step,
            "loss": float(loss.detach()),
            "s": time.perf_counter() - t0,
            "subject": sid,
            **{k: float(v) for k, v in terms.items()},
        }
        history.write(json.dumps(rec) + "\n")
        history.flush()
        if step % log_every == 0:
            say(
                f"step {step} loss {rec['loss']:.4f} mid {rec['mid']:.4f} full {rec['full']:.4f} "
                f"smooth {rec['smoothness']:.4f} negJ {rec['neg_jacobian']:.2e} ({rec['s']:.1f} s)"
            )
        if step % val_every == 0 or step == steps:
            score, mean = validate()
            if score < best:
                best, best_step = score, step
                torch.save(model.reg.state_dict(), out / "regnet_best.pt")
            say(
                f"step {step} val MDE {json.dumps({k: round(v, 3) for k, v in mean.items()})} "
                f"(best {best:.3f} @ {best_step})"
            )
        if step % checkpoint_every == 0 or step == steps:
            save(step)
        if max_seconds is not None and time.perf_counter() - t_start > max_seconds:
            save(step)
            say(f"stopping after {max_seconds:.0f} s at step {step}")
            break
    return out / "regnet_best.pt"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/reg")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--deform-prob", type=float, default=0.7)
    p.add_argument("--pair-prob", type=float, default=0.0)
    p.add_argument("--checkpoint-every", type=int, default=10)
    p.add_argument("--val-every", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--max-minutes", type=float, default=None)
    p.add_argument("--no-symnet", action="store_true", help="start from random weights")
    p.add_argument("--prepare-only", action="store_true", help="build the caches and stop")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(a.threads)
    if a.prepare_only:
        cache = ROOT / "runs" / "reg_cache"
        prepared_oasis(oasis_ids(), cache)
        field_pool(cache, 24)
        validation_cases(cache)
        return 0
    finetune_regnet(
        a.out,
        a.steps,
        symnet=None if a.no_symnet else SYMNET,
        seed=a.seed,
        lr=a.lr,
        deform_prob=a.deform_prob,
        pair_prob=a.pair_prob,
        checkpoint_every=a.checkpoint_every,
        val_every=a.val_every,
        threads=a.threads,
        max_seconds=None if a.max_minutes is None else 60.0 * a.max_minutes,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
