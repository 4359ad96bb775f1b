"""Raw T1 scans: skull-stripped detection, brain extraction (deepbet vs atlas) and N4, measured.

Prints tables (markdown) of:

1. detection (:func:`~napari_girnet.data.skullstrip.is_skull_stripped`) on skull-stripped and
   raw scans: foreground volume (mL), decision, seconds;
2. brain extraction on Colin27 with skull (``colin27/ch2``): Dice against the reference mask
   ``ch2bet > 0``, mask volume, wall and CPU seconds per 1 mm scan, for each method; the same
   on chris_t1 (``raw-t1/``, no reference: volume and time only);
3. held-out mask shape on OASIS (``--oasis N`` subjects, skull-stripped ``<ID>_SS`` given as
   input, Dice against ``<ID>_mask``): the accuracy of each method's mask outline on brains
   of individual anatomy (Colin27 lies in the MNI frame the atlas method starts from);
4. N4 time on the extracted brain, and the downstream effect: ``prepare_scan`` brain-mask Dice
   with the atlas (working grid) for ``ch2`` through :func:`preprocess_raw` vs ``ch2bet``.

and writes ``docs/images/skullstrip-raw-t1.png`` (chris_t1, axial / coronal / sagittal slices
through the mask's centre, contours of each method's mask).

Thread counts: torch and SimpleITK get ``--threads`` (default 2). Wall time depends on the
load of the machine; CPU seconds (``time.process_time``, all threads) are printed next to it.

Usage::

    python benchmarks/skullstrip.py [--data-dir /work/shared/data] [--threads 2] [--oasis 4]
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np

from napari_girnet.data.nifti import read_nifti
from napari_girnet.data.skullstrip import (
    atlas_brain_mask,
    deepbet_available,
    deepbet_brain_mask,
    is_skull_stripped,
    mask_volume_ml,
    n4_bias_correct,
    preprocess_raw,
)
from napari_girnet.data.volume import Volume

REPO = Path(__file__).resolve().parents[1]
FIGURE = REPO / "docs" / "images" / "skullstrip-raw-t1.png"
OASIS = ("1000", "1009", "1104", "1128", "1013", "1036")


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


def timed(func, *args, **kwargs):
    wall, cpu = time.perf_counter(), time.process_time()
    out = func(*args, **kwargs)
    return out, time.perf_counter() - wall, time.process_time() - cpu


def methods(threads: int, clip: bool = True) -> dict:
    out = {"atlas": lambda v: atlas_brain_mask(v, seed=0, threads=threads, clip_to_head=clip)}
    if deepbet_available():
        out["deepbet"] = lambda v: deepbet_brain_mask(v, threads=threads)
    else:
        print("(deepbet not installed: pip install 'napari-girnet[bet]'; only 'atlas' measured)")
    return out


def detection_table(data: Path) -> None:
    files = [
        ("colin27/ch2bet.nii.gz", True),
        ("glioma-tcga-du-7294/TCGA-DU-7294_t1_bet.nii.gz", True),
        ("bratsreg-001/BraTSReg_001_00_0000_t1.nii.gz", True),
        ("healthy-oasis-malf/1000_SS.nii.gz", True),
        ("colin27/ch2.nii.gz", False),
        ("raw-t1/chris_t1.nii.gz", False),
    ]
    print("\n## Detection (is_skull_stripped, threshold 2500 mL)\n")
    print("| scan | truly stripped | foreground mL | decision | s |")
    print("|---|---|---|---|---|")
    for rel, truth in files:
        path = data / rel
        if not path.is_file():
            continue
        vol = read_nifti(path, name=path.name)
        d, wall, _ = timed(is_skull_stripped, vol)
        ok = "ok" if d.stripped == truth else "WRONG"
        print(f"| {rel} | {truth} | {d.measure:.0f} | {d.stripped} ({ok}) | {wall:.2f} |")


def extraction_table(data: Path, threads: int) -> dict[str, np.ndarray]:
    head = read_nifti(data / "colin27" / "ch2.nii.gz", name="ch2")
    ref = np.asarray(read_nifti(data / "colin27" / "ch2bet.nii.gz").array) > 0
    chris = read_nifti(data / "raw-t1" / "chris_t1.nii.gz", name="chris_t1")
    print(f"\n## Brain extraction (1 mm heads, {threads} threads)\n")
    print(f"reference ch2bet > 0: {ref.sum() / 1000:.0f} mL\n")
    print(
        "| method | ch2 Dice vs ch2bet | ch2 mask mL | ch2 wall s | ch2 CPU s "
        "| chris_t1 mask mL | chris_t1 wall s | chris_t1 CPU s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    chris_masks: dict[str, np.ndarray] = {}
    for name, run in methods(threads).items():
        m1, w1, c1 = timed(run, head)
        m2, w2, c2 = timed(run, chris)
        chris_masks[name] = np.asarray(m2.array, bool)
        print(
            f"| {name} | {dice(m1.array, ref):.3f} | {mask_volume_ml(m1):.0f} | {w1:.1f} | "
            f"{c1:.1f} | {mask_volume_ml(m2):.0f} | {w2:.1f} | {c2:.1f} |"
        )
    (_, w, c) = timed(n4_bias_correct, head, head.with_array(ref), threads=threads)
    print(
        f"\nN4 (shrink 4, 3 levels x 50 iterations) on ch2 inside ch2bet: {w:.1f} s wall, "
        f"{c:.1f} s CPU"
    )
    return chris_masks


def oasis_table(data: Path, n: int, threads: int) -> None:
    if n <= 0:
        return
    print(f"\n## Held-out mask shape: OASIS skull-stripped input vs its brain mask ({n})\n")
    # the input is skull-stripped: clipping the atlas mask to its foreground would clip it to
    # the reference mask itself, so the atlas method runs unclipped here
    runs = methods(threads, clip=False)
    print("| subject | mask mL | " + " | ".join(f"{m} Dice" for m in runs) + " |")
    print("|---|---|" + "---|" * len(runs))
    scores: dict[str, list[float]] = {m: [] for m in runs}
    for sid in OASIS[:n]:
        folder = data / "healthy-oasis-malf"
        scan = read_nifti(folder / f"{sid}_SS.nii.gz", name=sid)
        ref = np.asarray(read_nifti(folder / f"{sid}_mask.nii.gz").array) > 0
        row = []
        for name, run in runs.items():
            d = dice(run(scan).array, ref)
            scores[name].append(d)
            row.append(f"{d:.3f}")
        vox = float(np.prod(scan.spacing))
        print(f"| {sid} | {ref.sum() * vox / 1000:.0f} | " + " | ".join(row) + " |")
    print("| mean | | " + " | ".join(f"{np.mean(v):.3f}" for v in scores.values()) + " |")


def downstream(data: Path, threads: int) -> None:
    from napari_girnet.data.atlas import load_atlas
    from napari_girnet.data.preprocess import prepare_scan

    atlas = load_atlas("2mm")
    head = read_nifti(data / "colin27" / "ch2.nii.gz", name="ch2")
    stripped = read_nifti(data / "colin27" / "ch2bet.nii.gz", name="ch2bet")
    print("\n## Downstream: prepare_scan brain-mask Dice with the atlas (2 mm grid)\n")
    print("| input | preprocess_raw decision | mask mL | Dice vs atlas mask | s |")
    print("|---|---|---|---|---|")
    runs = [(stripped, "auto"), (head, "atlas")]
    runs += [(head, "deepbet")] if deepbet_available() else []
    for vol, method in runs:
        raw, wall, _ = timed(preprocess_raw, vol, "auto", method=method, threads=threads)
        prepared = prepare_scan(raw.brain, atlas, mask=raw.brain_mask)
        d = dice(prepared.mask.array, atlas.mask.array)
        what = (
            "extracted (" + str(raw.decision["method"]) + ")"
            if raw.decision["extracted"]
            else "skull-stripped: kept"
        )
        print(f"| {vol.name} | {what} | {raw.decision['mask_ml']:.0f} | {d:.3f} | {wall:.1f} |")


def figure(data: Path, masks: dict[str, np.ndarray]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chris: Volume = read_nifti(data / "raw-t1" / "chris_t1.nii.gz").canonical()
    image = np.asarray(chris.array, dtype=np.float32)
    image = np.clip(image / np.percentile(image, 99.5), 0, 1)
    colours = {"atlas": "yellow", "deepbet": "cyan"}
    any_mask = np.logical_or.reduce(list(masks.values()))
    centre = [round(float(c)) for c in np.argwhere(any_mask).mean(axis=0)]
    views = [
        ("axial", lambda a: a[:, :, centre[2]].T),
        ("coronal", lambda a: a[:, centre[1], :].T),
        ("sagittal", lambda a: a[centre[0], :, :].T),
    ]
    sp = chris.spacing
    aspects = [sp[1] / sp[0], sp[2] / sp[0], sp[2] / sp[1]]
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.6), facecolor="black")
    for ax, (title, cut), aspect in zip(axes, views, aspects, strict=True):
        ax.imshow(cut(image), cmap="gray", origin="lower", aspect=aspect)
        for name, mask in masks.items():
            ax.contour(
                cut(mask.astype(float)), levels=[0.5], colors=colours.get(name, "r"), linewidths=1.0
            )
        ax.set_title(title, color="white")
        ax.axis("off")
    label = ", ".join(f"{n} ({colours.get(n, 'r')})" for n in masks)
    fig.suptitle(f"chris_t1 (raw T1 with skull): brain-mask contours: {label}", color="white")
    fig.tight_layout()
    FIGURE.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(FIGURE, dpi=90, facecolor="black")
    print(f"\nwrote {FIGURE.relative_to(REPO)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path("/work/shared/data"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--oasis", type=int, default=4, help="OASIS subjects (0 = skip)")
    parser.add_argument("--no-downstream", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import torch

    torch.set_num_threads(args.threads)
    detection_table(args.data_dir)
    masks = extraction_table(args.data_dir, args.threads)
    figure(args.data_dir, masks)
    oasis_table(args.data_dir, args.oasis, args.threads)
    if not args.no_downstream:
        downstream(args.data_dir, args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
