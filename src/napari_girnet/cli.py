"""The ``girnet`` command: train, register, evaluate, make-cases.

Every sub-command has ``--help``. Bad input ends with exit code 2 and a one-line reason on
stderr (``girnet: error: <file>: <problem>``); ``--debug`` shows the full traceback instead.
``register`` on a cohort (several scans, a glob or a folder) exits with 3 when some scans failed
(their errors are in ``cohort.csv``); ``train`` runs under ``torchrun`` as well (docs/scale.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["main"]

log = logging.getLogger("napari_girnet.cli")

MAX_SEED = 2**32 - 1


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (``girnet register: error: ...``) and exit code 2."""

    def error(self, message: str) -> Any:  # argparse declares NoReturn
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _int_in(low: int, high: int | None = None) -> Callable[[str], int]:
    """argparse ``type=``: an integer in ``[low, high]``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low or (high is not None and value > high):
            bound = f">= {low}" if high is None else f"between {low} and {high}"
            raise argparse.ArgumentTypeError(f"must be an integer {bound}, got {text!r}")
        return value

    parse.__name__ = "int"
    return parse


def _float_in(low: float, high: float = math.inf) -> Callable[[str], float]:
    """argparse ``type=``: a finite number in ``[low, high]``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value) or not low <= value <= high:
            bound = f">= {low:g}" if math.isinf(high) else f"between {low:g} and {high:g}"
            raise argparse.ArgumentTypeError(f"must be a finite number {bound}, got {text!r}")
        return value

    parse.__name__ = "float"
    return parse


def _check_out(path: str | os.PathLike[str], kind: str = "folder") -> Path:
    """Refuse an ``--out`` that cannot be written, before any work (``kind``: folder or file).

    Raises
    ------
    OSError
        Naming the path: an existing file given as a folder (or a folder as a file), or a
        nearest existing parent that is not a writable folder.
    """
    out = Path(path)
    if kind == "folder" and out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out}: --out exists and is not a folder")
    if kind == "file" and out.is_dir():
        raise IsADirectoryError(f"{out}: --out is a folder; give a file name")
    existing = out if kind == "folder" else out.parent
    existing = Path(os.path.abspath(existing))
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise NotADirectoryError(f"{out}: cannot create --out: {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f"{out}: cannot write --out: {existing} is not writable")
    return out


def _log_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """``warnings.showwarning`` of the command: library warnings go to the debug log."""
    log.debug("%s:%s: %s: %s", filename, lineno, category.__name__, message)


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
        self.total, self.desc = total, desc
        self.bar: Any = None  # a tqdm bar from the first report on

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


# ----------------------------------------------------------------------------- input checks
def _read_canonical(source: Any) -> Any:
    from .data.nifti import read_nifti
    from .data.volume import Volume

    return source.canonical() if isinstance(source, Volume) else read_nifti(source)


def _check_scans(scans: Sequence[Any], atlas: Any = "mni152") -> None:
    """Refuse, before any work, scans (and a custom atlas) too small to hold a whole brain.

    Raises
    ------
    VolumeError
        One line naming the file (see :func:`napari_girnet.data.volume.check_brain_size`).
    """
    from .data.volume import check_brain_size

    custom_atlas = not (isinstance(atlas, str) and atlas.lower() in ("mni152", "mni", "default"))
    for source in [*scans, *([atlas] if custom_atlas else [])]:
        check_brain_size(_read_canonical(source))


def _check_truth(truth: Any, scan: Any) -> None:
    """Refuse a ground-truth mask that is not on the scan's grid, naming how they differ."""
    from .data.volume import VolumeError, describe_grid_mismatch

    problem = describe_grid_mismatch(_read_canonical(truth), _read_canonical(scan))
    if problem is not None:
        raise VolumeError(f"--truth {problem}")


class _StageProgress:
    """A tqdm bar over the registration's stages (percent of the run), created at the first
    event after "prepare" so that input errors print alone."""

    def __init__(self) -> None:
        self.bar: Any = None

    def __call__(self, event: Any) -> None:
        if self.bar is None:
            if event.stage == "prepare":
                return
            self.bar = _progress_bar(100, "GIRNet")
            self.bar.unit = "%"
        self.bar.update(int(100 * event.overall) - self.bar.n)
        post = {"stage": event.stage}
        if event.report is not None:
            post.update(step=event.report.step, loss=f"{event.report.loss:.4f}")
        self.bar.set_postfix(post, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ----------------------------------------------------------------------------- register
def _run_with_progress(session: Any) -> Any:
    """Run a registration session (single scan or pair) behind the stage progress bar."""
    bar = _StageProgress()
    try:
        return session.run(bar)
    finally:
        bar.close()


def _inference_options(args: argparse.Namespace) -> dict[str, Any]:
    """The ``inference`` overrides given on the command line."""
    inference: dict[str, Any] = {}
    for key, value in (
        ("refine", args.refine),
        ("detector", args.detector),
        ("outlier_polarity", args.polarity),
        (
            "outlier_min_volume_mm3",
            None if args.min_lesion_ml is None else 1e3 * args.min_lesion_ml,
        ),
    ):
        if value is not None:
            inference[key] = value
    return inference


def _is_cohort(args: argparse.Namespace) -> bool:
    """Several scans, a folder or a glob, or a cohort-only option: one folder per scan."""
    many = len(args.scan) > 1 or args.truth_dir is not None or args.resume
    if len(args.scan) == 1:
        path = Path(args.scan[0])
        many = many or path.is_dir() or (bool(set("*?[") & set(args.scan[0])) and not path.exists())
    return many


def _cmd_register_many(args: argparse.Namespace) -> int:
    """Cohort mode of ``register`` (napari_girnet.cohort); exit code 3 if any scan failed."""
    from .cohort import register_many
    from .qc import qc_montage

    if args.sample or args.truth:
        raise ValueError("--sample and --truth are for one scan; with several use --truth-dir")
    _check_scans([], args.atlas)  # a custom atlas is checked once, before any work

    def add_qc(result: Any, folder: Path) -> None:
        qc_montage(
            result.scan, result.lesion_mask, result.inpainted, result.atlas_to_scan,
            result.jacobian, folder / "qc.png", title=f"GIRNet — {folder.name}",
        )  # fmt: skip

    bar: Any = None

    def progress(outcome: Any, done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            from tqdm import tqdm

            bar = tqdm(total=total, desc="GIRNet cohort", unit="scan", file=sys.stderr)
        bar.update(done - bar.n)
        bar.set_postfix(last=outcome.name, status=outcome.status, refresh=False)

    outcomes = []
    try:
        for outcome in register_many(
            args.scan, args.out, jobs=args.jobs, resume=args.resume, truth_dir=args.truth_dir,
            model=args.model, config=args.preset, threads=args.threads, progress=progress,
            after_save=add_qc if args.qc else None, atlas=args.atlas,
            fine_tune_steps=args.steps, instance_steps=args.instance_steps,
            pseudo_cases=args.pseudo_cases, exclude_lesions=args.exclude_lesions or (),
            seed=args.seed, device=args.device, inference=_inference_options(args),
            skull_strip=args.skull_strip,
        ):  # fmt: skip
            outcomes.append(outcome)
            if outcome.status == "failed":  # the error names the file, or gets its name
                error = str(outcome.error)
                named = str(outcome.scan) in error
                _err(f"girnet: {error}" if named else f"girnet: {outcome.scan}: {error}")
    finally:
        if bar is not None:
            bar.close()
    count = {s: sum(o.status == s for o in outcomes) for s in ("ok", "skipped", "failed")}
    _out(
        f"{len(outcomes)} scans: {count['ok']} registered, {count['skipped']} already done, "
        f"{count['failed']} failed; table: {(Path(args.out) / 'cohort.csv').resolve()}"
    )
    return 3 if count["failed"] else 0


def _cmd_register_pair(args: argparse.Namespace) -> int:
    """Pair mode of ``register`` (``--fixed``): the scan registered onto another scan."""
    from . import api
    from .qc import qc_pair_montage

    refused = [
        ("several scans", len(args.scan) > 1),
        ("--sample", bool(args.sample)),
        ("--atlas", str(args.atlas).lower() not in ("mni152", "mni", "default")),
        ("--truth-dir", args.truth_dir is not None),
        ("--resume", bool(args.resume)),
        ("--jobs", args.jobs != 1),
    ]
    bad = [name for name, given in refused if given]
    if bad:
        raise ValueError(
            f"--fixed {args.fixed}: pair mode takes one SCAN; not with {', '.join(bad)}"
        )
    if not args.scan:
        raise ValueError(f"--fixed {args.fixed}: give the moving SCAN too")
    _check_scans([args.scan[0], args.fixed])
    if args.truth is not None:
        _check_truth(args.truth, args.scan[0])
    t0 = time.perf_counter()
    out = Path(args.out)
    with api.staged_directory(out) as tmp:
        session = api.pair_steps(
            args.scan[0], args.fixed, args.model, config=args.preset,
            fine_tune_steps=args.steps, instance_steps=args.instance_steps, seed=args.seed,
            device=args.device, truth=args.truth, inference=_inference_options(args),
            skull_strip=args.skull_strip, landmarks_moving=args.landmarks_moving,
            landmarks_fixed=args.landmarks_fixed,
        )  # fmt: skip
        result = _run_with_progress(session)
        names = result.write_files(tmp)
        if args.qc:
            names["qc"] = qc_pair_montage(
                result.fixed, result.moved, result.lesion_mask_on_fixed,
                result.jacobian_on_fixed, tmp / "qc.png",
                title=f"GIRNet pair — {Path(str(result.moving.name)).name} on "
                f"{Path(str(result.fixed.name)).name}",
            ).name  # fmt: skip
    _out(f"outputs written to {out.resolve()}")
    for key in sorted(names):
        _out(f"  {key}: {names[key]}")
    line = f"lesion volume {result.report()['lesion_volume_mm3'] / 1000:.1f} mL"
    m = result.registration.metrics
    if "dice" in m:
        line += f", Dice {m['dice']:.3f}, HD95 {m['hd95_mm']:.1f} mm"
    _out(line + f", total {time.perf_counter() - t0:.0f} s")
    if result.tre is not None:
        b, a = result.tre["before"], result.tre["after"]
        _out(
            f"TRE ({a['n']} landmarks): before {b['mean']:.2f} +/- {b['sd']:.2f} mm, "
            f"after {a['mean']:.2f} +/- {a['sd']:.2f} mm"
        )
    return 0


def _cmd_register(args: argparse.Namespace) -> int:
    from . import api
    from .data.nifti import write_nifti
    from .qc import qc_montage

    if args.fixed is not None:
        return _cmd_register_pair(args)
    if args.landmarks_moving is not None or args.landmarks_fixed is not None:
        raise ValueError("--landmarks-moving/--landmarks-fixed need --fixed (pair mode)")
    if _is_cohort(args):
        return _cmd_register_many(args)
    truth = args.truth
    scan: Any = args.scan[0] if args.scan else None
    if args.sample:
        from .datasets import load_sample

        sample = load_sample(args.sample)
        scan = sample.scan
        truth = truth or sample.truth
        _err(f"sample: {sample.name}: {sample.description} ({sample.licence})")
    if scan is None:
        raise ValueError("give a SCAN (NIfTI path) or --sample NAME")
    _check_scans([scan], args.atlas)
    if truth is not None:
        _check_truth(truth, scan)
    inference = _inference_options(args)
    t0 = time.perf_counter()
    out = Path(args.out)
    with api.staged_directory(out) as tmp:
        session = api.register_steps(
            scan,
            atlas=args.atlas,
            model=args.model,
            config=args.preset,  # None: the model's own preset (cpu-2mm without --model)
            fine_tune_steps=args.steps,
            instance_steps=args.instance_steps,
            pseudo_cases=args.pseudo_cases,
            exclude_lesions=args.exclude_lesions or (),
            seed=args.seed,
            device=args.device,
            truth=truth,
            checkpoint_dir=tmp / "checkpoint",
            inference=inference,
            skull_strip=args.skull_strip,
        )
        result = _run_with_progress(session)
        names = result.write_files(tmp)
        if args.qc:
            names["qc"] = qc_montage(
                result.scan,
                result.lesion_mask,
                result.inpainted,
                result.atlas_to_scan,
                result.jacobian,
                tmp / "qc.png",
                title=f"GIRNet — {Path(str(result.scan.name)).name}",
            ).name
        if args.sample:
            write_nifti(result.scan, tmp / "scan.nii.gz")
            if truth is not None and not isinstance(truth, str | Path):
                write_nifti(truth, tmp / "truth.nii.gz")
    _out(f"outputs written to {out.resolve()}")
    for key in sorted(names):
        _out(f"  {key}: {names[key]}")
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
    from .core import distributed

    config = api.resolve_config(args.preset)
    batch_size = args.batch_size
    last = Path(args.out) / "last.pt"
    if batch_size is None and last.is_file():  # resuming: keep the run's global batch
        from .core.checkpoint import load_checkpoint

        batch_size = load_checkpoint(last).config.schedule.batch_size
    if batch_size is not None:  # the global batch, split over torchrun's processes
        config = config.override(schedule={"batch_size": batch_size})
    # under torchrun: join the process group (gloo on CPU, nccl on CUDA); None in one process
    rank = distributed.init_from_env(args.device or config.runtime.device)
    main_rank = rank is None or rank.is_main
    init = args.init
    if init == "bundled":
        init = api.bundled_model_path(args.preset)
        if init is None:
            raise ValueError(f"no bundled model for preset {args.preset!r}")
    pairs = [(m, f) for m, f in args.pair or []]  # longitudinal: each scan's follow-up is its T
    if args.pairs:
        from .pipeline.training import read_pairs_csv

        pairs += [(str(m), str(f)) for m, f in read_pairs_csv(args.pairs)]
    if pairs and args.scans:
        raise ValueError("give scans or --pair/--pairs (longitudinal pairs), not both")
    scans = [m for m, _ in pairs] if pairs else args.scans
    fixed = [f for _, f in pairs] if pairs else None
    _check_scans([*scans, *(fixed or [])], args.atlas)
    session = api.fit(
        scans,
        fixed=fixed,
        skull_strip=args.skull_strip,
        atlas=args.atlas,
        config=config,
        checkpoint_dir=args.out,
        init=init,
        pseudo_cases=args.pseudo_cases,
        exclude_lesions=args.exclude_lesions or (),
        steps=args.steps,
        seed=args.seed,
        device=args.device,
        preview=False,
    )

    interrupted = False

    def graceful(signum, frame) -> None:  # first Ctrl-C: stop after this step, with checkpoint
        nonlocal interrupted
        interrupted = True
        _err("\nstopping after the current step (Ctrl-C again to abort now)")
        session.request_stop()
        signal.signal(signal.SIGINT, signal.default_int_handler)

    previous = signal.signal(signal.SIGINT, graceful)
    if main_rank:  # rank 0 alone shows progress and writes the history
        bar = _progress_bar(session.learner.total_steps, "GIRNet co-learning")
    else:
        from tqdm import tqdm

        bar = tqdm(disable=True)
    bar.update(session.learner.step)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    final = None
    try:
        with (out / "history.jsonl").open("a") if main_rank else open(os.devnull, "w") as history:
            for report in session:
                final = report
                if not report.is_final:
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
                    history.flush()  # a killed process loses no finished step
                if report.checkpoint is not None:  # on disk together with the checkpoint
                    os.fsync(history.fileno())
    finally:
        bar.close()
        signal.signal(signal.SIGINT, previous)
        distributed.shutdown()
    assert final is not None
    if main_rank:
        _out(f"{final.phase} at step {final.step}; checkpoint: {final.checkpoint}")
    if interrupted:
        _err("girnet: interrupted; rerun the same command to resume from the checkpoint")
        return 130
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
def _parse_lesion_dir(text: str) -> tuple[str, str | None]:
    """``[KIND=]PATH`` of ``--lesion-dir`` -> (path, kind or None)."""
    kind, sep, path = text.partition("=")
    if sep and kind in ("stroke", "ms"):
        return path, kind
    return text, None


def _parse_mix(text: str) -> dict[str, float]:
    mix: dict[str, float] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        try:
            mix[key.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise ValueError(f"--mix: expected KIND=WEIGHT[,KIND=WEIGHT...], got {text!r}")
    return mix


def _cmd_make_cases(args: argparse.Namespace) -> int:
    if not args.healthy_dir:
        if args.lesion_dir:
            raise ValueError("--lesion-dir needs at least one --healthy-dir")
        from .data.synthetic import make_cases
        from .datasets import case_sources

        brains, lesions = case_sources(args.resolution, args.lesions, data_dir=args.data_dir)
        paths = make_cases(args.out, args.n, args.seed, brains=brains, lesions=lesions)
        _out(f"{len(paths)} cases written to {Path(args.out).resolve()}")
        return 0
    from .data.case_library import make_library_cases

    paths = make_library_cases(
        args.out,
        args.n,
        args.seed,
        args.healthy_dir,
        [_parse_lesion_dir(d) for d in args.lesion_dir or []],
        synthetic_tumours=args.synthetic_tumours,
        mix=None if args.mix is None else _parse_mix(args.mix),
        resolution=f"{args.resolution}mm",
        val_fraction=args.val_fraction,
        start=args.start,
        cache_dir=args.cache_dir,
        augment=not args.no_augment,
    )
    _out(f"{len(paths)} cases in {Path(args.out).resolve()}")
    return 0


# ----------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
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
            type=_int_in(0),
            default=None,
            help="co-learning steps (register: fine-tuning steps on the scan, 0 = apply the "
            "model as is; default: the preset's)",
        )
        p.add_argument(
            "--threads",
            type=_int_in(1, 4096),
            default=None,
            help="CPU threads for torch, >= 1 (default: all cores)",
        )
        p.add_argument(
            "--device",
            default=None,
            choices=["auto", "cpu", "cuda", "mps"],
            help="where to run (default: the preset's, 'auto' = CUDA if available)",
        )
        p.add_argument(
            "--seed",
            type=_int_in(0, MAX_SEED),
            default=0,
            help="seed of every random choice; the same seed on CPU gives the same "
            "result (default: %(default)s)",
        )
        p.add_argument(
            "--pseudo-cases",
            type=_int_in(0),
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
    p.add_argument(
        "scan",
        nargs="*",
        help="T1 NIfTI (.nii or .nii.gz), skull-stripped or raw (see --skull-strip); several "
        "files, a glob, a folder or a "
        "BIDS dataset (sub-*/anat/*_T1w.nii.gz) register a cohort: one folder per scan in "
        "--out plus cohort.csv, exit code 3 if some scans failed",
    )
    p.add_argument(
        "--sample",
        choices=["glioma", "ms07", "ms19", "colin27_raw"],
        help="use a bundled sample scan (and its ground-truth mask) instead of SCAN; "
        "colin27_raw is a healthy head with skull (brain extraction runs first)",
    )
    p.add_argument(
        "--skull-strip",
        choices=["auto", "yes", "no"],
        default="auto",
        help="brain extraction and N4 bias-field correction before the alignment: auto (only "
        "when the scan is not skull-stripped; the decision and its reason go to report.json), "
        "yes or no (default: auto)",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--model",
        default=None,
        help="checkpoint (.pt or run folder) to apply, or 'random' for untrained networks; "
        "default: the bundled model of the preset",
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
        type=_float_in(0.0),
        default=None,
        help="atlas-outlier detector: ignore candidate lesions smaller than this many mL "
        "(default 0.1)",
    )
    p.add_argument("--qc", action="store_true", help="write qc.png, a montage of key slices")
    pair = p.add_argument_group("pair mode (one patient's SCAN registered onto another scan)")
    pair.add_argument(
        "--fixed",
        default=None,
        metavar="NIFTI",
        help="register SCAN (moving, e.g. pre-operative) onto this scan (fixed, e.g. the "
        "follow-up) instead of the atlas; outputs on both grids (docs/longitudinal.md)",
    )
    pair.add_argument(
        "--landmarks-moving",
        default=None,
        metavar="CSV",
        help="with --fixed: landmarks of SCAN; TRE before/after goes to report.json",
    )
    pair.add_argument(
        "--landmarks-fixed",
        default=None,
        metavar="CSV",
        help="with --fixed: landmarks of the fixed scan, paired with --landmarks-moving by id",
    )
    cohort = p.add_argument_group("cohorts (several scans, a glob or a folder)")
    cohort.add_argument(
        "--jobs",
        type=_int_in(1, 256),
        default=1,
        help="scans registered at once; torch threads are divided between them "
        "(default: %(default)s)",
    )
    cohort.add_argument(
        "--resume",
        action="store_true",
        help="skip scans whose output folder already holds a complete report.json",
    )
    cohort.add_argument(
        "--truth-dir",
        default=None,
        help="folder of ground-truth masks paired by name (the scan's file name, or "
        "<name>_lesion.nii.gz): adds Dice to cohort.csv",
    )
    p.add_argument(
        "--instance-steps",
        type=_int_in(0),
        default=None,
        help="instance-optimisation steps refining the registration of this scan with GIRNet's "
        "loss (default: the preset's; 0 = RegNet's prediction as is)",
    )
    common(p)
    # register: without --preset the model's own preset runs (cpu-2mm without --model); with
    # it, a --model made for another preset is refused
    p.set_defaults(func=_cmd_register, preset=None)

    p = sub.add_parser(
        "train",
        help="co-learn GIRNet on scans (writes checkpoints)",
        description="Co-learning of RegNet, SegNet and InpNet on one or more scans; "
        "Ctrl-C stops cleanly, rerunning the same command resumes.",
    )
    p.add_argument("scans", nargs="*", help="skull-stripped T1 NIfTI files")
    p.add_argument(
        "--pair",
        nargs=2,
        action="append",
        metavar=("MOVING", "FIXED"),
        help="longitudinal training (repeatable): a pre-operative scan and its follow-up, "
        "which is its atlas T (GIRNet's BraTS-Reg setting); --pseudo-cases keep the atlas",
    )
    p.add_argument(
        "--pairs",
        metavar="PAIRS.csv",
        help="longitudinal pairs from a CSV with columns moving,fixed (paths relative to the "
        "CSV's folder allowed), added to --pair",
    )
    p.add_argument(
        "--skull-strip",
        choices=["auto", "yes", "no"],
        default="auto",
        help="pairs only: brain extraction and N4 before the alignment, auto = only for "
        "scans that are not skull-stripped (default: %(default)s)",
    )
    p.add_argument("--out", required=True, help="checkpoint folder (resumes from last.pt there)")
    p.add_argument(
        "--batch-size",
        type=_int_in(1),
        default=None,
        help="global batch size (default: the resumed run's, else the preset's); under "
        "torchrun it is split over the processes and must be a multiple of their number",
    )
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
    p.add_argument("--n", type=_int_in(1), required=True, help="number of cases")
    p.add_argument(
        "--resolution",
        type=int,
        choices=[1, 2],
        default=2,
        help="grid: 1 (160x192x144 at 1 mm, needs --data-dir) or 2 (80x96x80, bundled "
        "data) (default: %(default)s)",
    )
    p.add_argument(
        "--seed", type=_int_in(0, MAX_SEED), default=0, help="seed (default: %(default)s)"
    )
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
        "--resolution 1 (bundled-source mode only)",
    )
    lib = p.add_argument_group(
        "cases from folders (used when --healthy-dir is given)",
        "Healthy brains from any folder of skull-stripped T1s (<ID>_SS/_T1.nii.gz, optional "
        "<ID>_mask and <ID>_glm/_labels, e.g. OASIS MALF), affinely aligned to the atlas once "
        "and cached; lesion masks from any folder of binary masks in MNI space, given a T1 "
        "appearance from the healthy brain's CSF; synthetic tumours (5-150 mL, necrotic core, "
        "rim, oedema, optional mass effect); bias/gamma/noise augmentation. Split by brain and "
        "by lesion (fixed rule, recorded in case.json): OASIS 1119/1122/1125/1128 and every "
        "7th lesion file plus MS patients 18 and 20 are validation; MS 07, 19 and the glioma "
        "are never used. Case i goes to case_NNNN/; existing cases are kept (resumable).",
    )
    lib.add_argument(
        "--healthy-dir",
        action="append",
        metavar="DIR",
        help="folder of healthy skull-stripped T1s with brain masks (repeatable)",
    )
    lib.add_argument(
        "--lesion-dir",
        action="append",
        metavar="[KIND=]DIR",
        help="folder of lesion masks in MNI space; KIND stroke or ms (default: ms when the "
        "path names MS, else stroke) selects the appearance recipes (repeatable)",
    )
    lib.add_argument(
        "--synthetic-tumours",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="include synthetic tumour-like lesions (default: %(default)s)",
    )
    lib.add_argument(
        "--mix",
        default=None,
        metavar="KIND=W,...",
        help="weights of the lesion kinds tumour, stroke, ms (default: "
        "tumour=0.35,stroke=0.35,ms=0.30, renormalised over the kinds available)",
    )
    lib.add_argument(
        "--val-fraction",
        type=_float_in(0.0, 1.0),
        default=0.25,
        help="fraction of validation cases (every 1/f-th case) (default: %(default)s)",
    )
    lib.add_argument(
        "--start", type=_int_in(0), default=0, help="first case index (default: %(default)s)"
    )
    lib.add_argument(
        "--cache-dir",
        default=None,
        help="cache of aligned healthy brains (default: OUT/_healthy_cache/<res>mm)",
    )
    lib.add_argument(
        "--no-augment",
        action="store_true",
        help="no bias-field / gamma / noise augmentation",
    )
    p.set_defaults(func=_cmd_make_cases)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``girnet``; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a bad argument (2, one line already printed)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    level = logging.DEBUG if args.debug else (logging.INFO if args.verbose else logging.WARNING)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    # nibabel reports header fixes on its own stderr handler; keep them for -v / --debug
    logging.getLogger("nibabel.global").setLevel(
        level if level < logging.WARNING else logging.ERROR
    )
    if getattr(args, "pseudo_cases", None) is None and args.command == "train":
        args.pseudo_cases = 0
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _log_warning  # torch/nibabel warnings: debug log only
            _check_out(args.out, "file" if args.command == "evaluate" else "folder")
            if getattr(args, "threads", None) is not None:
                import torch

                torch.set_num_threads(args.threads)
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
