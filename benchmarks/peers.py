"""GIRNet side by side with ANTs SyN on pseudo-pathological cases with an exact truth.

One run: build (or reuse, under ``--cases``) the cases (:mod:`peerlib.cases`), run every
method on every case in a fresh subprocess (:mod:`peerlib.runners`), score it
(:mod:`peerlib.scoring`), print one table with the girnet / ANTs ratios and write Markdown, CSV
and box plots (:mod:`peerlib.table`) to ``--out``. Methods and metrics: docs/benchmarks.md.

Tasks:

* ``healthy`` (headline): the case registered to its own undeformed healthy brain; the truth is
  the known field exactly.
* ``atlas``: the case registered to the MNI152 atlas; exact when the healthy brain is the atlas
  (``--brains mni152``); for OASIS brains the truth is the paper's MDE definition: the field of
  the lesion-free twin registered by the same method (so every method runs twice per case).
* ``longitudinal``: TRE on synthetic pre/post pairs is its own benchmark,
  ``benchmarks/longitudinal.py`` (pairs of scans, not scans against a reference).

    python benchmarks/peers.py                       # 6 cases, healthy task, shipped model
    python benchmarks/peers.py --model runs/model/last.pt --tasks healthy,atlas
    python benchmarks/peers.py --n 1 --methods identity,ants   # smoke run
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from peerlib import cases as C
from peerlib import runners as R
from peerlib import table as T
from peerlib.scoring import score_field, warp_labels

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger("peers")


@dataclass(frozen=True)
class TaskInputs:
    """What a task registers each case to, and where its truth comes from."""

    reference: Path
    reference_mask: Path
    exact: bool  # True: truth = the case's field; False: truth = the twin's field, same method
    ref_labels: np.ndarray | None
    truth_labels: np.ndarray | None  # None: carry ref_labels by the truth field


def _healthy_task(lc: C.LoadedCase, shared: dict[str, Path]) -> TaskInputs:
    labels = None if lc.source_labels is None else np.asarray(lc.source_labels.array)
    truth = None if lc.case.labels is None else np.asarray(lc.case.labels.array)
    return TaskInputs(
        lc.folder / "source.nii.gz", lc.folder / "source_mask.nii.gz", True, labels, truth
    )


def _atlas_task(lc: C.LoadedCase, shared: dict[str, Path]) -> TaskInputs:
    exact = lc.spec.brain == "mni152"
    aal = np.asarray(C.atlas_brain().labels.array)  # type: ignore[union-attr]
    truth = np.asarray(lc.case.labels.array) if exact and lc.case.labels is not None else None
    return TaskInputs(shared["atlas"], shared["atlas_mask"], exact, aal, truth)


TASKS: dict[str, Callable[[C.LoadedCase, dict[str, Path]], TaskInputs]] = {
    "healthy": _healthy_task,
    "atlas": _atlas_task,
    # "longitudinal": TRE on synthetic pre/post pairs lives in benchmarks/longitudinal.py
}


def _write_shared(out: Path) -> dict[str, Path]:
    from napari_girnet.data.atlas import load_atlas
    from napari_girnet.data.nifti import write_nifti

    atlas = load_atlas("2mm")
    paths = {"atlas": out / "atlas_2mm.nii.gz", "atlas_mask": out / "atlas_2mm_mask.nii.gz"}
    write_nifti(atlas.image, paths["atlas"], restore_orientation=False, dtype=np.float32)
    mask = atlas.mask.with_array(np.asarray(atlas.mask.array).astype(np.uint8))
    write_nifti(mask, paths["atlas_mask"], restore_orientation=False)
    return paths


def _read_field(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    from napari_girnet.data.nifti import read_displacement

    disp, grid = read_displacement(path)
    if grid.shape != shape:
        raise ValueError(f"{path}: field grid {grid.shape} is not the scan grid {shape}")
    return disp


def _read_mask(path: Path | None) -> np.ndarray | None:
    from napari_girnet.data.nifti import read_nifti

    return None if path is None else np.asarray(read_nifti(path).canonical().array) > 0


def _girnet_model(out: Path) -> str:
    """The model GIRNet used, from its ``report.json`` (provenance), or ``"?"``."""
    import json

    try:
        return str(json.loads((out / "report.json").read_text())["provenance"]["model"])
    except (OSError, KeyError, ValueError):
        return "?"


def run_case(
    task: str,
    lc: C.LoadedCase,
    methods: list[str],
    args: argparse.Namespace,
    shared: dict[str, Path],
) -> list[dict]:
    """Every method on one case of one task; one scored row per method."""
    from napari_girnet.data.nifti import write_nifti

    inputs = TASKS[task](lc, shared)
    case = lc.case
    out = args.out / task / lc.spec.name
    out.mkdir(parents=True, exist_ok=True)
    lesion = np.asarray(case.lesion.array, bool)
    brain = np.asarray(case.brain_mask.array, bool)
    mask_path = out / "ants_mask.nii.gz"
    write_nifti(case.scan.with_array(R.ants_mask(brain, lesion).astype(np.uint8)), mask_path)
    rows = []
    for method in methods:
        job = R.Job(
            task,
            method,
            lc.folder / "scan.nii.gz",
            inputs.reference,
            inputs.reference_mask,
            out / method,
            lesion=lc.folder / "lesion.nii.gz",
            ants_mask=mask_path,
            model=args.model,
            instance_steps=args.instance_steps,
        )
        row: dict = {"task": task, "case": lc.spec.name, "kind": lc.spec.kind, "method": method}
        print(f"  {task:8s} {lc.spec.name:24s} {method:17s}", end=" ", flush=True)
        res = R.run(job, args.threads, args.seed, reuse=not args.fresh, score_only=args.score_only)
        row.update(wall_s=res.wall_s, cpu_s=res.cpu_s, peak_rss_mb=res.peak_rss_mb)
        truth = case.field
        truth_ok = res.field is not None
        if truth_ok and not inputs.exact:
            twin_job = R.Job(
                task,
                method,
                lc.folder / "healthy.nii.gz",
                inputs.reference,
                inputs.reference_mask,
                out / f"{method}-twin",
                ants_mask=mask_path,
                model=args.model,
                instance_steps=args.instance_steps,
            )
            twin = R.run(
                twin_job, args.threads, args.seed, reuse=not args.fresh, score_only=args.score_only
            )
            truth_ok = twin.field is not None
            if truth_ok:
                truth = _read_field(twin.field, case.scan.shape)  # type: ignore[arg-type]
        if res.field is None or not truth_ok:
            not_run = res.returncode == -1 or (not truth_ok and args.score_only)
            print("not run (--score-only)" if not_run else f"FAILED (see {res.log})")
            row["error"] = "not run (--score-only)" if not_run else f"failed, log {res.log}"
            rows.append(row)
            continue
        disp = _read_field(res.field, case.scan.shape)
        truth_labels = inputs.truth_labels
        if truth_labels is None and inputs.ref_labels is not None:
            truth_labels = warp_labels(inputs.ref_labels, truth)
        row.update(
            score_field(
                disp,
                truth,
                lesion,
                brain,
                case.scan.spacing,
                inputs.ref_labels,
                truth_labels,
                _read_mask(res.lesion_mask) if method in R.GIRNET_METHODS else None,
            )
        )
        row["truth"] = "exact" if inputs.exact else "twin"
        if method in R.GIRNET_METHODS:
            row["girnet_model"] = _girnet_model(job.out)
        print(
            f"MDE in/near/far {row['mde_in']:.2f}/{row['mde_near']:.2f}/{row['mde_far']:.2f} mm,"
            f" {res.wall_s:.0f} s, {res.peak_rss_mb:.0f} MiB"
        )
        rows.append(row)
    return rows


def report(rows: list[dict], notes: list[str], args: argparse.Namespace, command: str) -> str:
    """Markdown report: summary, ratios, per-case rows, notes."""
    failed_cases = {(r["task"], r["case"]) for r in rows if "error" in r}
    complete = [r for r in rows if (r["task"], r["case"]) not in failed_cases]
    summary = T.summarise(complete)
    rat = T.ratios(summary, list(R.GIRNET_METHODS), list(R.ANTS_METHODS))
    per_case = [{**r, "method": f"{r['case']} {r['method']}"} for r in rows if "error" not in r]
    parts = [
        "# GIRNet vs ANTs SyN\n",
        f"Command: `{command}`\n",
        f"## Mean over the {len({(r['task'], r['case']) for r in complete})} (task, case) pairs "
        "where every method finished\n",
        T.markdown(summary),
        "## Ratios (girnet / ANTs; < 1 is better for errors, time, memory; > 1 for Dice)\n",
        T.ratio_markdown(rat) if rat else "(no girnet row)\n",
        "## Per case\n",
        T.markdown(per_case),
    ]
    for r in rows:
        if (
            r["method"] == "girnet-untrained"
            and "error" not in r
            and "randomly" not in r.get("girnet_model", "?")
        ):
            notes.append(f"{r['case']}: girnet-untrained ran with {r.get('girnet_model')!r}")
    failed = [r for r in rows if "error" in r]
    if notes or failed:
        lines = [f"- {n}" for n in notes]
        lines += [f"- {r['task']} {r['case']} {r['method']}: {r['error']}" for r in failed]
        parts += ["## Notes\n", "\n".join(lines) + "\n"]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=6, help="number of cases (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the cases and of girnet")
    p.add_argument("--tasks", default="healthy", help="comma list of: healthy, atlas")
    p.add_argument("--methods", default=",".join(R.METHODS), help="comma list (default: all)")
    p.add_argument("--kinds", default=",".join(C.KINDS), help="lesion kinds, in turn")
    p.add_argument(
        "--brains",
        default=",".join(f"oasis{s}" for s in C.HELD_OUT_OASIS),
        help="healthy brains, in turn: oasisID or mni152 (default: the held-out OASIS ones)",
    )
    p.add_argument(
        "--model",
        default=None,
        help="trained GIRNet checkpoint (the 'girnet' row; default: the shipped cpu-2mm model)",
    )
    p.add_argument(
        "--instance-steps",
        type=int,
        default=None,
        help="instance-optimisation steps of the girnet rows (default: the pipeline's own)",
    )
    p.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data")
    p.add_argument("--cases", type=Path, default=REPO / "runs" / "peers-cases")
    p.add_argument("--out", type=Path, default=REPO / "runs" / "peers")
    p.add_argument("--threads", type=int, default=2, help="threads per registration")
    p.add_argument("--min-stroke-ml", type=float, default=5.0)
    p.add_argument("--fresh", action="store_true", help="rerun registrations found in --out")
    p.add_argument(
        "--score-only",
        action="store_true",
        help="start no registration: score the finished ones in --out, list the others",
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    tasks = [t for t in args.tasks.split(",") if t]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        p.error(f"unknown or not yet implemented tasks {unknown}; available: {', '.join(TASKS)}")
    methods = [m for m in args.methods.split(",") if m]
    if any(m not in R.METHODS for m in methods):
        p.error(f"methods must be among {', '.join(R.METHODS)}")
    notes = []
    if "girnet" in methods and not args.model:
        from napari_girnet.pipeline import bundled_model_path

        bundled = bundled_model_path("cpu-2mm")
        if bundled is None:
            methods.remove("girnet")
            notes.append("row 'girnet' skipped: no model ships and none given (--model PATH)")
        else:
            args.model = str(bundled)
            notes.append(f"row 'girnet': the shipped model {bundled.name}")
    kinds = [k for k in args.kinds.split(",") if k]
    brains = [b for b in args.brains.split(",") if b]
    t_start = time.perf_counter()

    from napari_girnet.data.atlas import load_atlas

    grid = load_atlas("2mm").image
    strokes: dict[str, np.ndarray] = {}
    n_stroke = sum(kinds[i % len(kinds)] == "stroke" for i in range(args.n))
    if n_stroke:
        found = C.stroke_candidates(
            args.data_dir / "stroke-lesions-soop" / "masks", grid, n_stroke, args.min_stroke_ml
        )
        strokes = {f"stroke{i}": m for i, m in found}
    specs = C.plan_cases(args.n, args.seed, brains, kinds, [k[6:] for k in strokes])
    print(f"cases ({args.cases}):")
    folders = C.build_cases(specs, args.cases, args.data_dir / "healthy-oasis-malf", strokes)
    for spec in specs:
        print(f"  {spec.name}: {spec.lesion}, seed {spec.seed}")
    args.out.mkdir(parents=True, exist_ok=True)
    shared = _write_shared(args.out)
    rows: list[dict] = []
    for task in tasks:
        print(f"task {task}:")
        for folder in folders:
            rows += run_case(task, C.load_case(folder), methods, args, shared)
    command = "python benchmarks/peers.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = report(rows, notes, args, command.strip())
    text += f"\nTotal {time.perf_counter() - t_start:.0f} s (including reused runs' own times).\n"
    (args.out / "peers.md").write_text(text)
    failed_cases = {(r["task"], r["case"]) for r in rows if "error" in r}
    complete = [r for r in rows if (r["task"], r["case"]) not in failed_cases]
    T.write_csv(rows, args.out / "peers.csv")
    T.write_csv(
        T.summarise(complete),
        args.out / "peers_summary.csv",
    )
    for task in tasks:
        if any(r["task"] == task for r in complete):
            T.box_plot(complete, args.out / f"peers_{task}.png", task)
    print()
    print(text)
    print(f"written: {args.out / 'peers.md'}, peers.csv, peers_summary.csv, peers_<task>.png")
    return 1 if any(str(r.get("error", "")).startswith("failed") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
