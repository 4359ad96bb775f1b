"""Longitudinal registration benchmark: synthetic pre/post pairs with an exact ground truth.

A pair (:func:`napari_girnet.data.pairs.make_pair`) = a held-out pseudo-pathological case of
``benchmarks/peers.py`` (:mod:`peerlib.cases`: OASIS 1119/1122/1125/1128 on the 2 mm MNI grid,
a synthetic tumour / MS patient 20, 18 / the largest-index SOOP strokes, in turn) as the pre
scan (*moving*), and the follow-up (*fixed*) = the pre scan with its lesion changed (shrink,
grow, resect, in turn), deformed by a known smooth diffeomorphism (peak 4-10 mm) and with a global
intensity change (gamma, bias, noise). Ten landmark pairs per pair, half within 30 mm of the
lesion.

Rows (each registration in a fresh subprocess, wall time, CPU time and peak RSS as in
:mod:`peerlib.runners`; the fixed image is the follow-up, every field is
``field_fixed_to_moving.nii.gz``: ITK displacement, LPS mm, on the fixed grid, fixed point ``p``
-> moving point ``p + d(p)``):

* ``identity``: zero field (the "before" row).
* ``affine``: :func:`napari_girnet.data.preprocess.affine_align` (SimpleITK, 12 DOF, Mattes MI,
  brain masks of both scans, on the 2 mm grids, no rotation search), moving -> fixed.
* ``ants``: ANTs SyN after an affine stage: :data:`peerlib.worker.ANTS_SETTING` (Mattes MI,
  sampling 32, 100x70x50, grad step 0.2, flow sigma 3, total sigma 0, identity start) with
  ``type_of_transform="SyN"`` (affine, then SyN), ``fixed`` = follow-up, ``moving`` = pre, 2
  threads; the forward transforms composed into one displacement field.
* ``girnet``: ``napari_girnet.api.register_pair(moving, fixed, model=--model, seed=--seed)`` and
  ``PairResult.save``.

Scores against the exact truth: mean TRE of the landmarks before / after (all, near, far; mm),
MDE in the lesion / near (<= 30 mm) / far / brain (mm; lesion = the lesion of either time
point on the fixed grid), % of fixed brain voxels with det J <= 0. One table is printed; Markdown
and CSV go to ``--out`` (default ``runs/longitudinal/``, git-ignored). Finished registrations are
reused (``--fresh`` reruns them).

    python benchmarks/longitudinal.py                                 # 6 pairs, all rows
    python benchmarks/longitudinal.py --model runs/model/last.pt
    python benchmarks/longitudinal.py --n 1 --methods identity,affine # smoke run
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from peerlib import cases as C
from peerlib import runners as R
from peerlib import table as T

REPO = Path(__file__).resolve().parents[1]
METHODS: tuple[str, ...] = ("identity", "affine", "ants", "girnet")
CHANGES: tuple[str, ...] = ("shrink", "grow", "resect")
FIELD = "field_fixed_to_moving.nii.gz"
METRICS: tuple[str, ...] = (
    "tre_before",
    "tre_after",
    "tre_near",
    "tre_far",
    "mde_in",
    "mde_near",
    "mde_far",
    "mde_brain",
    "fold_pct",
    "wall_s",
    "cpu_s",
    "peak_rss_mb",
)
HEADERS: dict[str, str] = {
    "tre_before": "TRE before (mm)",
    "tre_after": "TRE after (mm)",
    "tre_near": "TRE near (mm)",
    "tre_far": "TRE far (mm)",
    "mde_in": "MDE in (mm)",
    "mde_near": "MDE near (mm)",
    "mde_far": "MDE far (mm)",
    "mde_brain": "MDE brain (mm)",
    "fold_pct": "det J<=0 (%)",
    "wall_s": "wall (s)",
    "cpu_s": "CPU (s)",
    "peak_rss_mb": "peak RSS (MiB)",
}
DIGITS: dict[str, int] = {"fold_pct": 3, "wall_s": 0, "cpu_s": 0, "peak_rss_mb": 0}
log = logging.getLogger("longitudinal")


def ants_setting() -> dict[str, object]:
    """The ANTs row's ``ants.registration`` keywords: peers' setting, affine then SyN."""
    from peerlib.worker import ANTS_SETTING

    return {**ANTS_SETTING, "type_of_transform": "SyN"}


def pair_change(index: int) -> str:
    """Change of pair ``index``: shrink, grow, resect in turn, shifted by one every 3 pairs.

    With the lesion kinds also in turn (tumour, ms, stroke) every kind meets two changes in 6
    pairs: tumour shrink / resect, MS grow / shrink, stroke resect / grow.
    """
    return CHANGES[(index - index // len(CHANGES)) % len(CHANGES)]


# --------------------------------------------------------------------------- worker
def _read(path: Path, name: str) -> Any:
    from napari_girnet.data.nifti import read_nifti

    return read_nifti(path, name=name).canonical()


def _worker_identity(args: argparse.Namespace) -> None:
    from napari_girnet.data.nifti import write_displacement

    fixed = _read(args.fixed, "fixed")
    zero = np.zeros((3, *fixed.shape), np.float32)
    write_displacement(args.out / FIELD, zero, fixed, convention="itk", restore_orientation=False)


def affine_field(matrix: np.ndarray, fixed: Any) -> np.ndarray:
    """Voxel displacement ``(3, X, Y, Z)`` on ``fixed``'s grid of the world map ``matrix``.

    ``matrix``: 4x4, fixed world RAS mm -> moving world RAS mm. Fixed voxel ``p`` (world ``x``)
    maps to ``x + d_mm``, ``d_mm = matrix @ x - x``, returned in voxels of the fixed grid.
    """
    from napari_girnet.data.nifti import mm_to_voxel_displacement

    ijk = np.indices(fixed.shape, dtype=np.float64).reshape(3, -1)
    aff = np.asarray(fixed.affine, dtype=np.float64)
    world = aff[:3, :3] @ ijk + aff[:3, 3:4]
    moved = matrix[:3, :3] @ world + matrix[:3, 3:4]
    d_mm = (moved - world).reshape(3, *fixed.shape)
    return mm_to_voxel_displacement(d_mm, aff).astype(np.float32)


def _worker_affine(args: argparse.Namespace) -> None:
    from napari_girnet.data.nifti import write_displacement
    from napari_girnet.data.preprocess import affine_align

    moving, fixed = _read(args.moving, "moving"), _read(args.fixed, "fixed")
    mm, fm = _read(args.moving_mask, "moving mask"), _read(args.fixed_mask, "fixed mask")
    alignment = affine_align(
        moving,
        fixed,
        moving_mask=mm.with_array(np.asarray(mm.array) > 0),
        fixed_mask=fm.with_array(np.asarray(fm.array) > 0),
        dof=12,
        seed=args.seed,
        resolution_mm=None,
        search_degrees=None,
        threads=args.threads,
    )
    disp = affine_field(np.asarray(alignment.matrix), fixed)
    write_displacement(args.out / FIELD, disp, fixed, convention="itk", restore_orientation=False)


def _worker_ants(args: argparse.Namespace) -> None:
    import ants

    fixed = ants.image_read(str(args.fixed))
    moving = ants.image_read(str(args.moving))
    work = args.out / "ants"
    work.mkdir(parents=True, exist_ok=True)
    reg = ants.registration(
        fixed, moving, outprefix=str(work / "reg_"), verbose=False, **ants_setting()
    )
    composed = ants.apply_transforms(
        fixed, moving, reg["fwdtransforms"], compose=str(work / "composed_")
    )
    shutil.copyfile(composed, args.out / FIELD)
    shutil.rmtree(work)


def _worker_girnet(args: argparse.Namespace) -> None:
    import torch

    from napari_girnet import api

    torch.set_num_threads(args.threads)
    result = api.register_pair(str(args.moving), str(args.fixed), model=args.model, seed=args.seed)
    result.save(args.out)


def worker(argv: list[str]) -> int:
    """``longitudinal.py worker MODE --moving M --fixed F ... --out D``: one registration."""
    p = argparse.ArgumentParser(prog="longitudinal.py worker")
    p.add_argument("mode", choices=METHODS)
    p.add_argument("--moving", type=Path, required=True)
    p.add_argument("--fixed", type=Path, required=True)
    p.add_argument("--moving-mask", type=Path)
    p.add_argument("--fixed-mask", type=Path)
    p.add_argument("--model", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    {
        "identity": _worker_identity,
        "affine": _worker_affine,
        "ants": _worker_ants,
        "girnet": _worker_girnet,
    }[args.mode](args)
    return 0


# --------------------------------------------------------------------------- runner
def command(method: str, folder: Path, out: Path, args: argparse.Namespace) -> list[str]:
    """The child's command line for ``method`` on the pair in ``folder``."""
    cmd = [
        sys.executable, str(Path(__file__).resolve()), "worker", method,
        "--moving", str(folder / "moving.nii.gz"), "--fixed", str(folder / "fixed.nii.gz"),
        "--moving-mask", str(folder / "brain_moving.nii.gz"),
        "--fixed-mask", str(folder / "brain_fixed.nii.gz"),
        "--seed", str(args.seed), "--threads", str(args.threads), "--out", str(out),
    ]  # fmt: skip
    if method == "girnet" and args.model:
        cmd += ["--model", str(args.model)]
    return cmd


def run_job(cmd: list[str], out: Path, digest: str, threads: int, reuse: bool) -> dict[str, Any]:
    """Run ``cmd`` in a fresh process (or reuse a finished run of the same pair).

    Returns ``{"ok", "wall_s", "cpu_s", "peak_rss_mb", "log", "reused"}``; never raises.
    Peak RSS and CPU time come from GNU time when present (:data:`peerlib.runners.TIME_BIN`).
    """
    out.mkdir(parents=True, exist_ok=True)
    measure, field, logfile = out / "measure.json", out / FIELD, out / "log.txt"
    if reuse and measure.is_file() and field.is_file():
        m = json.loads(measure.read_text())
        if m.get("pair_digest") == digest:
            return {**m, "ok": True, "log": str(logfile), "reused": True}
    field.unlink(missing_ok=True)
    rss_file = out / "maxrss_kib.txt"
    rss_file.unlink(missing_ok=True)
    timer = Path(R.TIME_BIN)
    full = [str(timer), "-f", "%M %U %S", "-o", str(rss_file), *cmd] if timer.is_file() else cmd
    with logfile.open("w") as f:
        f.write(" ".join(cmd) + "\n")
        f.flush()
        t0 = time.perf_counter()
        proc = subprocess.Popen(full, env=R.child_env(threads), stdout=f, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    rss_mb, cpu = usage.ru_maxrss / 1024.0, usage.ru_utime + usage.ru_stime
    if rss_file.is_file():
        rss_mb, cpu = R.parse_time_output(rss_file.read_text())
    ok = os.waitstatus_to_exitcode(status) == 0 and field.is_file()
    m = {"wall_s": wall, "cpu_s": cpu, "peak_rss_mb": rss_mb, "cmd": cmd, "pair_digest": digest}
    if ok:
        measure.write_text(json.dumps(m) + "\n")
    return {**m, "ok": ok, "log": str(logfile), "reused": False}


# --------------------------------------------------------------------------- scoring
def lesion_region(pair: Any) -> np.ndarray:
    """The lesion of either time point on the fixed grid: ``lesion_fixed | warp(lesion_moving)``."""
    from peerlib.scoring import warp_labels

    pre = np.asarray(pair.lesion_moving.array).astype(np.int32)
    carried = warp_labels(pre, pair.field_fixed_to_moving_vox) > 0
    return np.asarray(pair.lesion_fixed.array, bool) | carried


def score(pair: Any, disp: np.ndarray, region: np.ndarray) -> dict[str, float]:
    """TRE (before / after / near / far), MDE per region and folding of one estimated field.

    ``disp``: ``(3, X, Y, Z)`` voxel displacement on the fixed grid, fixed -> moving.
    """
    from napari_girnet.data.nifti import voxel_to_mm_displacement
    from napari_girnet.evaluation.metrics import mean_deformation_error, sample_displacement, tre
    from peerlib.scoring import fold_percent

    fixed_w = np.asarray(pair.landmarks_fixed.world)
    moving_w = np.asarray(pair.landmarks_moving.world)
    vox = pair.landmarks_fixed.to_voxel(pair.fixed)
    d_mm = sample_displacement(voxel_to_mm_displacement(disp, pair.fixed.affine), vox)
    after = tre(fixed_w + d_mm, moving_w)
    before = tre(fixed_w, moving_w)
    near = np.asarray(pair.landmark_near, bool)
    brain = np.asarray(pair.brain_fixed.array, bool)
    mde = mean_deformation_error(
        disp, pair.field_fixed_to_moving_vox, region, brain, pair.fixed.spacing
    )

    def mean(values: np.ndarray) -> float:
        return float(values.mean()) if values.size else float("nan")

    return {
        "tre_before": mean(before),
        "tre_after": mean(after),
        "tre_near": mean(after[near]),
        "tre_far": mean(after[~near]),
        "mde_in": float(mde["in"]["mean"]),
        "mde_near": float(mde["near"]["mean"]),
        "mde_far": float(mde["far"]["mean"]),
        "mde_brain": float(mde["brain"]["mean"]),
        "fold_pct": fold_percent(disp, brain),
    }


def read_field(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """A field file as a voxel displacement on the canonical fixed grid."""
    from napari_girnet.data.nifti import read_displacement

    disp, grid = read_displacement(path)
    if grid.shape != tuple(shape):
        raise ValueError(f"{path}: field grid {grid.shape} is not the fixed grid {tuple(shape)}")
    return disp


def girnet_model(out: Path) -> str:
    """The model GIRNet used, from its ``report.json`` (provenance), or ``"?"``."""
    try:
        return str(json.loads((out / "report.json").read_text())["provenance"]["model"])
    except (OSError, KeyError, TypeError, ValueError):
        return "?"


# --------------------------------------------------------------------------- table
def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean of every metric per method (NaN-aware), in first-seen method order."""
    out = []
    for method in dict.fromkeys(r["method"] for r in rows):
        sel = [r for r in rows if r["method"] == method]
        s: dict[str, Any] = {"method": method, "n": len(sel)}
        for m in METRICS:
            vals = [float(r[m]) for r in sel if m in r and not math.isnan(float(r[m]))]
            s[m] = float(np.mean(vals)) if vals else float("nan")
        out.append(s)
    return out


def markdown(rows: list[dict[str, Any]], first: str = "method") -> str:
    """A Markdown table: ``first`` column then :data:`METRICS`."""
    lines = [
        "| " + " | ".join([first, *(HEADERS[m] for m in METRICS)]) + " |",
        "|---|" + "|".join(["--:"] * len(METRICS)) + "|",
    ]
    for r in rows:
        cells = [str(r[first])] + [T.fmt(r.get(m), DIGITS.get(m, 2)) for m in METRICS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- main
def build_pairs(args: argparse.Namespace) -> list[tuple[str, Path, Any]]:
    """The ``--n`` pairs (name, folder, SyntheticPair), written under ``--out/pairs``."""
    from napari_girnet.data.atlas import load_atlas
    from napari_girnet.data.pairs import make_pair, write_pair

    kinds = [k for k in args.kinds.split(",") if k]
    brains = [b for b in args.brains.split(",") if b]
    strokes: dict[str, np.ndarray] = {}
    n_stroke = sum(kinds[i % len(kinds)] == "stroke" for i in range(args.n))
    if n_stroke:
        grid = load_atlas("2mm").image
        found = C.stroke_candidates(
            args.data_dir / "stroke-lesions-soop" / "masks", grid, n_stroke, args.min_stroke_ml
        )
        strokes = {f"stroke{i}": m for i, m in found}
    specs = C.plan_cases(args.n, args.seed, brains, kinds, [k[6:] for k in strokes])
    folders = C.build_cases(specs, args.cases, args.data_dir / "healthy-oasis-malf", strokes)
    out = []
    for i, (spec, folder) in enumerate(zip(specs, folders, strict=True)):
        lc = C.load_case(folder)
        change = pair_change(i)
        pair = make_pair(
            lc.case.scan,
            lc.case.brain_mask,
            lesion=np.asarray(lc.case.lesion.array),
            change=change,
            seed=C.case_seed(args.seed, 1000 + i),
            peak_mm=args.peak,
        )
        name = f"p{i:02d}-{change}-{spec.kind}-{spec.brain}"
        target = args.out / "pairs" / name
        manifest = target / "pair.json"
        text = json.dumps({**pair.meta, "source_case": spec.name}, sort_keys=True)
        meta_file = target / "source.json"
        if not (manifest.is_file() and meta_file.is_file() and meta_file.read_text() == text):
            write_pair(pair, target)
            meta_file.write_text(text)
        print(f"  {name}: {spec.lesion}, peak {pair.meta['peak_mm']:.1f} mm, lesion "
              f"{pair.meta['lesion_volume_moving_ml']:.1f} -> "
              f"{pair.meta['lesion_volume_fixed_ml']:.1f} mL")  # fmt: skip
        out.append((name, target, pair))
    return out


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["worker"]:
        return worker(argv[1:])
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--n", type=int, default=6, help="number of pairs (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the cases, pairs and girnet")
    p.add_argument("--methods", default=",".join(METHODS), help="comma list (default: all)")
    p.add_argument("--model", default=None, help="GIRNet checkpoint for the 'girnet' row")
    p.add_argument("--kinds", default=",".join(C.KINDS), help="lesion kinds, in turn")
    p.add_argument(
        "--brains",
        default=",".join(f"oasis{s}" for s in C.HELD_OUT_OASIS),
        help="healthy brains, in turn (default: the held-out OASIS ones)",
    )
    p.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data")
    p.add_argument("--cases", type=Path, default=REPO / "runs" / "peers-cases")
    p.add_argument("--out", type=Path, default=REPO / "runs" / "longitudinal")
    p.add_argument("--threads", type=int, default=2, help="threads per registration")
    p.add_argument(
        "--peak",
        type=lambda text: tuple(float(v) for v in text.split(",")),
        default=(4.0, 10.0),
        help="range of the truth's peak displacement, mm: LOW,HIGH (default: 4,10; with 2-6 mm "
        "the mean landmark moved about 1.2 mm, under one 2 mm voxel)",
    )
    p.add_argument("--min-stroke-ml", type=float, default=5.0)
    p.add_argument("--fresh", action="store_true", help="rerun registrations found in --out")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    methods = [m for m in args.methods.split(",") if m]
    if not methods or any(m not in METHODS for m in methods):
        p.error(f"methods must be among {', '.join(METHODS)}")
    if args.n < 1:
        p.error("--n must be >= 1")
    t_start = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"pairs ({args.out / 'pairs'}; cases cached in {args.cases}):")
    pairs = build_pairs(args)
    rows: list[dict[str, Any]] = []
    for name, folder, pair in pairs:
        digest = hashlib.sha256((folder / "pair.json").read_bytes()).hexdigest()[:16]
        region = lesion_region(pair)
        for method in methods:
            print(f"  {name:32s} {method:9s}", end=" ", flush=True)
            row: dict[str, Any] = {"pair": name, "change": pair.meta["change"], "method": method}
            out = args.out / "runs" / name / method
            res = run_job(
                command(method, folder, out, args), out, digest, args.threads, not args.fresh
            )
            row.update(wall_s=res["wall_s"], cpu_s=res["cpu_s"], peak_rss_mb=res["peak_rss_mb"])
            if not res["ok"]:
                print(f"FAILED (see {res['log']})")
                row["error"] = f"failed, log {res['log']}"
                rows.append(row)
                continue
            row.update(score(pair, read_field(out / FIELD, pair.fixed.shape), region))
            if method == "girnet":
                row["girnet_model"] = girnet_model(out)
            print(
                f"TRE {row['tre_before']:.2f} -> {row['tre_after']:.2f} mm, MDE near/far "
                f"{row['mde_near']:.2f}/{row['mde_far']:.2f} mm, {row['wall_s']:.0f} s"
                + (" (reused)" if res["reused"] else "")
            )
            rows.append(row)
    failed = {r["pair"] for r in rows if "error" in r}
    complete = [r for r in rows if r["pair"] not in failed]
    command_line = "python benchmarks/longitudinal.py " + " ".join(argv)
    parts = [
        "# Longitudinal registration: synthetic pre/post pairs\n",
        f"Command: `{command_line.strip()}`\n",
        f"## Mean over the {len({r['pair'] for r in complete})} pairs where every method "
        "finished\n",
        markdown(summarise(complete)),
        "## Per pair\n",
        markdown([{**r, "run": f"{r['pair']} {r['method']}"} for r in rows if "error" not in r],
                 first="run"),
    ]  # fmt: skip
    notes = [
        "TRE: mean over the pair's 10 landmarks of |p_fixed + d(p_fixed) - p_moving| (mm); "
        "near / far: landmarks within / beyond 30 mm of the lesion; before = no registration.",
        "MDE: mean over voxels of |phi(x) - phi_true(x)| (mm) on the fixed grid; lesion = the "
        "lesion of either time point; det J<=0: % of the follow-up's brain voxels.",
    ]
    notes += sorted(
        {f"girnet row ran with model {r['girnet_model']!r}" for r in rows if "girnet_model" in r}
    )
    parts += ["## Notes\n", "\n".join(f"- {n}" for n in notes) + "\n"]
    if failed:
        parts += ["## Failed\n", "\n".join(f"- {r['pair']} {r['method']}: {r['error']}"
                                           for r in rows if "error" in r) + "\n"]  # fmt: skip
    text = "\n".join(parts)
    seconds = time.perf_counter() - t_start
    text += f"\nTotal {seconds:.0f} s for this run (reused registrations keep their own times).\n"
    (args.out / "longitudinal.md").write_text(text)
    T.write_csv(rows, args.out / "longitudinal.csv")
    T.write_csv(summarise(complete), args.out / "longitudinal_summary.csv")
    print()
    print(text)
    print(f"written: {args.out / 'longitudinal.md'}, longitudinal.csv, longitudinal_summary.csv")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
