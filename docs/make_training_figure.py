"""Draw docs/images/training-cases.png: axial slices of pseudo training cases.

Usage::

    python docs/make_training_figure.py --cases runs/cases-2mm --out docs/images/training-cases.png

Picks the first two cases of each lesion kind (tumour, stroke, MS; sorted case names, any
split) whose lesion is at least ``--min-ml`` mL (so that it is visible at this size) and
shows the axial slice with the most lesion: top row the pseudo-pathological scan with the
lesion contour (red), bottom row the lesion-free twin at the same slice. Deterministic.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from napari_girnet.data.synthetic import read_case

KINDS = ("tumour", "stroke", "ms")


def pick(folder: Path, per_kind: int, min_ml: float) -> list[Path]:
    """The first ``per_kind`` case folders of each kind with >= ``min_ml`` mL (sorted names)."""
    chosen: dict[str, list[Path]] = {k: [] for k in KINDS}
    for sub in sorted(folder.glob("case_*")):
        path = sub / "case.json"
        if not path.is_file():
            continue
        manifest = json.loads(path.read_text(encoding="utf-8"))
        kind = manifest.get("lesion_kind")
        if manifest.get("lesion_volume_ml", 0.0) < min_ml:
            continue
        if kind in chosen and len(chosen[kind]) < per_kind:
            chosen[kind].append(sub)
    return [p for k in KINDS for p in chosen[k]]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="runs/cases-2mm", help="case folder")
    parser.add_argument("--out", default="docs/images/training-cases.png", help="PNG path")
    parser.add_argument("--per-kind", type=int, default=2, help="cases per lesion kind")
    parser.add_argument("--min-ml", type=float, default=3.0, help="smallest lesion shown, mL")
    args = parser.parse_args()
    cases = pick(Path(args.cases), args.per_kind, args.min_ml)
    if not cases:
        raise SystemExit(f"{args.cases}: no case folders")
    fig, axes = plt.subplots(2, len(cases), figsize=(2.3 * len(cases), 5.4), squeeze=False)
    for j, folder in enumerate(cases):
        case = read_case(folder)
        lesion = np.asarray(case.lesion.array, dtype=bool)
        z = int(np.argmax(lesion.sum(axis=(0, 1))))
        m = case.manifest
        title = (
            f"{m['lesion_kind']} ({m['split']})\n{m['appearance']['recipe']}\n"
            f"{m['lesion_volume_ml']:.1f} mL, brain {m['healthy_subject']}"
        )
        for row, image in enumerate((case.scan.array, case.healthy.array)):
            ax = axes[row, j]
            # RAS grid, anterior up: patient right on the right (neurological view)
            ax.imshow(np.flipud(np.asarray(image)[:, :, z].T), cmap="gray", vmin=0, vmax=1)
            if row == 0:
                ax.contour(np.flipud(lesion[:, :, z].T), [0.5], colors="r", linewidths=0.7)
                ax.set_title(title, fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[1, j].set_xlabel(f"{folder.name}, z={z}", fontsize=7)
    axes[0, 0].set_ylabel("pseudo scan + lesion", fontsize=8)
    axes[1, 0].set_ylabel("lesion-free twin", fontsize=8)
    fig.tight_layout()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, metadata={"Software": None})
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
