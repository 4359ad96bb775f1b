"""The ``girnet`` command: train, register, evaluate, make-cases.

Every sub-command has ``--help``. Bad input ends with exit code 2 and a one-line reason on
stderr (``girnet: error: <file>: <problem>``); ``--debug`` shows the full traceback instead.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["main"]

log = logging.getLogger("napari_girnet.cli")

PRESET_HELP = (
    "cpu-2mm: 3D at 2 mm, the CPU default; gpu-1mm: 3D at 1 mm (the paper's setting, needs a "
    "GPU); 2d: axial slices at 1 mm; test: tiny networks on 32^3 volumes (smoke tests)"
)


def _out(text: str) -> None:
    """User-facing output of the command (stdout)."""
    sys.stdout.write(text + "\n")


def _err(text: str) -> None:
    """Diagnostics and one-line errors (stderr)."""
    sys.stderr.write(text + "\n")


def _progress_bar(total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="step", dynamic_ncols=True, file=sys.stderr)


class _LazyProgress:
    """A tqdm bar created at the first training report (so input errors print alone)."""

    def __init__(self, total: int, desc: str) -> None:
        self.total, self.desc, self.bar = total, desc, None

    def __call__(self, report) -> None:
        if report.is_final:
            return
        if self.bar is None:
            self.bar = _progress_bar(self.total, self.desc)
        self.bar.update(report.step - self.bar.n)
        self.bar.set_postfix(phase=report.phase, loss=f"{report.loss:.4f}", refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ----------------------------------------------------------------------------- register
def _cmd_register(args: argparse.Namespace) -> int:
    from . import api
    from .data.nifti import write_nifti
    from .qc import qc_montage

    truth = args.truth
    scan: Any = args.scan
    if args.sample:
        from .datasets import load_sample

        sample = load_sample(args.sample)
        scan = sample.scan
        truth = truth or sample.truth
        _err(f"sample: {sample.name}: {sample.description} ({sample.licence})")
    if scan is None:
        raise ValueError("give a SCAN (NIfTI path) or --sample NAME")
    cfg = api.resolve_config(args.preset)
    steps = args.steps if args.steps is not None else cfg.schedule.fine_tune_steps
    bar = _LazyProgress(steps, "GIRNet fine-tuning")
    t0 = time.perf_counter()
    result = api.register(
        scan,
        atlas=args.atlas,
        model=args.model,
        config=cfg if args.model is None else None,
        fine_tune_steps=steps,
        instance_steps=args.instance_steps,
        pseudo_cases=args.pseudo_cases,
        exclude_lesions=args.exclude_lesions or (),
        seed=args.seed,
        device=args.device,
        truth=truth,
        checkpoint_dir=Path(args.out) / "checkpoint",
        refine=args.refine,
        detector=args.detector,
        inference={
            k: v
            for k, v in (
                ("outlier_polarity", args.polarity),
                (
                    "outlier_min_volume_mm3",
                    None if args.min_lesion_ml is None else 1000.0 * args.min_lesion_ml,
                ),
            )
            if v is not None
        },
        progress=bar,
    )
    bar.close()
    paths = result.save(args.out)
    if args.qc:
        paths["qc"] = qc_montage(
            result.scan,
            result.lesion_mask,
            result.inpainted,
            result.atlas_to_scan,
            result.jacobian,
            Path(args.out) / "qc.png",
            title=f"GIRNet — {Path(str(result.scan.name)).name}",
        )
    if args.sample:
        write_nifti(result.scan, Path(args.out) / "scan.nii.gz")
        if truth is not None and not isinstance(truth, str | Path):
            write_nifti(truth, Path(args.out) / "truth.nii.gz")
    _out(f"outputs written to {Path(args.out).resolve()}")
    for key in sorted(paths):
        _out(f"  {key}: {paths[key].name}")
    m = result.metrics
    line = f"lesion volume {result.report()['lesion_volume_mm3'] / 1000:.1f} mL"
    if "dice" in m:
        line += f", Dice {m['dice']:.3f}, HD95 {m['hd95_mm']:.1f} mm"
    _out(line + f", total {time.perf_counter() - t0:.0f} s")
    return 0


# ----------------------------------------------------------------------------- train
def _cmd_train(args: argparse.Namespace) -> int:
    import signal

    from . import api

    init = args.init
    if init == "bundled":
        init = api.bundled_model_path(args.preset)
        if init is None:
            raise ValueError(f"no bundled model for preset {args.preset!r}")
    session = api.fit(
        args.scans,
        atlas=args.atlas,
        config=args.preset,
        checkpoint_dir=args.out,
        init=init,
        pseudo_cases=args.pseudo_cases,
        exclude_lesions=args.exclude_lesions or (),
        steps=args.steps,
        seed=args.seed,
        device=args.device,
        preview=False,
    )

    def graceful(signum, frame) -> None:  # first Ctrl-C: stop after this step, with checkpoint
        _err("\nstopping after the current step (Ctrl-C again to abort now)")
        session.request_stop()
        signal.signal(signal.SIGINT, signal.default_int_handler)

    previous = signal.signal(signal.SIGINT, graceful)
    bar = _progress_bar(session.learner.total_steps, "GIRNet co-learning")
    bar.update(session.learner.step)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    final = None
    try:
        with (out / "history.jsonl").open("a") as history:
            for report in session:
                final = report
                if report.is_final:
                    continue
                bar.update(report.step - bar.n)
                bar.set_postfix(phase=report.phase, loss=f"{report.loss:.4f}", refresh=False)
                row = {
                    "step": report.step,
                    "phase": report.phase,
                    "loss": report.loss,
                    "seconds": report.seconds,
                    **report.terms,
                }
                history.write(json.dumps(row) + "\n")
    finally:
        bar.close()
        signal.signal(signal.SIGINT, previous)
    assert final is not None
    _out(f"{final.phase} at step {final.step}; checkpoint: {final.checkpoint}")
    return 0


# ----------------------------------------------------------------------------- evaluate
def _cmd_evaluate(args: argparse.Namespace) -> int:
    from . import api
    from .evaluation.report import format_table, write_report

    results = api.evaluate(
        pred=args.pred,
        truth=args.truth,
        landmarks_moving=args.landmarks_moving,
        landmarks_fixed=args.landmarks_fixed,
        field=args.field,
        labels=args.labels,
    )
    out = Path(args.out)
    write_report(results, out, out.with_suffix(".csv"))
    _out(format_table(results))
    _out(f"written: {out} and {out.with_suffix('.csv')}")
    return 0


# ----------------------------------------------------------------------------- make-cases
def _cmd_make_cases(args: argparse.Namespace) -> int:
    from .data.synthetic import make_cases
    from .datasets import case_sources

    brains, lesions = case_sources(args.resolution, args.lesions, data_dir=args.data_dir)
    paths = make_cases(args.out, args.n, args.seed, brains=brains, lesions=lesions)
    _out(f"{len(paths)} cases written to {Path(args.out).resolve()}")
    return 0


# ----------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="girnet",
        description="GIRNet: register pathological brain MRI to the MNI152 atlas while "
        "segmenting (unsupervised) and inpainting the lesion.",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks and debug logs")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress messages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--atlas",
            default="mni152",
            help="atlas: 'mni152' (bundled ICBM 2009a symmetric) or a skull-stripped "
            "T1 template NIfTI (default: %(default)s)",
        )
        p.add_argument(
            "--preset",
            default="cpu-2mm",
            choices=["cpu-2mm", "gpu-1mm", "2d", "test"],
            help=PRESET_HELP,
        )
        p.add_argument(
            "--steps",
            type=int,
            default=None,
            help="co-learning steps (register: fine-tuning steps on the scan, 0 = apply the "
            "model as is; default: the preset's)",
        )
        p.add_argument(
            "--threads", type=int, default=None, help="CPU threads for torch (default: all cores)"
        )
        p.add_argument(
            "--device",
            default=None,
            choices=["auto", "cpu", "cuda", "mps"],
            help="where to run (default: the preset's, 'auto' = CUDA if available)",
        )
        p.add_argument(
            "--seed",
            type=int,
            default=0,
            help="seed of every random choice; the same seed on CPU gives the same "
            "result (default: %(default)s)",
        )
        p.add_argument(
            "--pseudo-cases",
            type=int,
            default=None,
            help="pseudo-pathological cases (bundled real lesions pasted into healthy "
            "brains) mixed into training",
        )
        p.add_argument(
            "--exclude-lesions",
            nargs="*",
            metavar="NAME",
            help="lesion sources to leave out of the pseudo cases (e.g. glioma ms07)",
        )

    p = sub.add_parser(
        "register",
        help="register a scan to the atlas, segment and inpaint its lesion",
        description=_cmd_register.__doc__
        or "Register one scan: affine "
        "alignment, GIRNet (bundled model, optionally fine-tuned on the scan), "
        "outputs on the scan's own grid.",
    )
    p.add_argument("scan", nargs="?", help="skull-stripped T1 NIfTI (.nii or .nii.gz)")
    p.add_argument(
        "--sample",
        choices=["glioma", "ms07", "ms19"],
        help="use a bundled sample scan (and its ground-truth mask) instead of SCAN",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--model",
        default=None,
        help="checkpoint (.pt or run folder) to apply; default: the bundled model of the preset",
    )
    p.add_argument(
        "--truth",
        default=None,
        help="ground-truth lesion mask on the scan's grid: report Dice and HD95",
    )
    p.add_argument(
        "--refine",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="random-walker refinement of the lesion mask (GIRNet's post-processing 'PP'; "
        "default: on, from the preset's inference settings)",
    )
    p.add_argument(
        "--detector",
        choices=["auto", "segnet", "atlas-outlier"],
        default=None,
        help="source of the lesion mask: SegNet, the scan's departure from the "
        "histogram-matched atlas, or auto (SegNet when its mask is plausible, otherwise the "
        "atlas outlier; default)",
    )
    p.add_argument(
        "--polarity",
        choices=["hypo", "hyper", "both"],
        default=None,
        help="atlas-outlier detector: lesions darker than healthy tissue (hypo, T1; default), "
        "brighter (hyper: FLAIR, T2, contrast-enhanced T1) or either",
    )
    p.add_argument(
        "--min-lesion-ml",
        type=float,
        default=None,
        help="atlas-outlier detector: ignore candidate lesions smaller than this many mL "
        "(default 0.1)",
    )
    p.add_argument("--qc", action="store_true", help="write qc.png, a montage of key slices")
    p.add_argument(
        "--instance-steps",
        type=int,
        default=None,
        help="instance-optimisation steps refining the registration of this scan with GIRNet's "
        "loss (default: the preset's; 0 = RegNet's prediction as is)",
    )
    common(p)
    p.set_defaults(func=_cmd_register)

    p = sub.add_parser(
        "train",
        help="co-learn GIRNet on scans (writes checkpoints)",
        description="Co-learning of RegNet, SegNet and InpNet on one or more scans; "
        "Ctrl-C stops cleanly, rerunning the same command resumes.",
    )
    p.add_argument("scans", nargs="*", help="skull-stripped T1 NIfTI files")
    p.add_argument("--out", required=True, help="checkpoint folder (resumes from last.pt there)")
    p.add_argument(
        "--init",
        default=None,
        help="initial weights: a checkpoint, or 'bundled' for the preset's bundled "
        "model (default: random)",
    )
    common(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser(
        "evaluate",
        help="Dice/HD95 of masks, TRE of landmarks",
        description="Compare a predicted mask with the truth (Dice, HD95 in mm) "
        "and/or landmark pairs (TRE in mm, per landmark and mean).",
    )
    p.add_argument("--pred", help="predicted mask NIfTI")
    p.add_argument("--truth", help="ground-truth mask NIfTI (same grid as --pred)")
    p.add_argument(
        "--labels", action="store_true", help="treat masks as label maps: per-label Dice"
    )
    p.add_argument("--landmarks-moving", help="landmark CSV of the moving image")
    p.add_argument("--landmarks-fixed", help="landmark CSV of the fixed image")
    p.add_argument(
        "--field",
        help="displacement field NIfTI on the fixed grid mapping fixed "
        "points to moving points (e.g. field_atlas_to_scan.nii.gz)",
    )
    p.add_argument(
        "--out",
        default="evaluation.json",
        help="JSON report path; a CSV is written beside it (default: %(default)s)",
    )
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser(
        "make-cases",
        help="build pseudo-pathological cases with ground truth",
        description="Real lesions pasted into a healthy brain under a known smooth "
        "diffeomorphism (the GIRNet paper's pseudo dataset). Deterministic in "
        "--seed.",
    )
    p.add_argument("--out", required=True, help="output folder (one sub-folder per case)")
    p.add_argument("--n", type=int, required=True, help="number of cases")
    p.add_argument(
        "--resolution",
        type=int,
        choices=[1, 2],
        default=2,
        help="grid: 1 (160x192x144 at 1 mm, needs --data-dir) or 2 (80x96x80, bundled "
        "data) (default: %(default)s)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed (default: %(default)s)")
    p.add_argument(
        "--lesions",
        choices=["ms", "glioma", "both"],
        default="both",
        help="lesion sources (default: %(default)s)",
    )
    p.add_argument(
        "--data-dir",
        default=None,
        help="folder with the raw shared data (colin27/, ms-lesions/, glioma-*/) for "
        "--resolution 1",
    )
    p.set_defaults(func=_cmd_make_cases)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``girnet``; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.DEBUG if args.debug else (logging.INFO if args.verbose else logging.WARNING)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)
    if getattr(args, "pseudo_cases", None) is None and args.command == "train":
        args.pseudo_cases = 0
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        _err("girnet: interrupted")
        return 130
    except (ValueError, OSError) as err:
        if args.debug:
            raise
        msg = " ".join(str(err).split())
        _err(f"girnet: error: {msg}")
        return 2
    except Exception as err:
        if args.debug:
            raise
        _err(f"girnet: error: {type(err).__name__}: {err} (rerun with --debug for details)")
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
