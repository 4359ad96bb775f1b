"""Write a trained checkpoint as the model shipped for a preset (weights only, safe to load).

The shipped file carries the preset's own configuration (so ``register`` and the widgets run it
with the preset's schedule and runtime), the inference settings the model card states (e.g.
``detector="atlas-outlier"`` while SegNet is not trained), the list of networks that were
trained, and the training provenance. Prints its size and SHA-256 for the model card.

    python tools/package_model.py runs/ship/cpu-2mm.pt --preset cpu-2mm \
        --trained reg inp --detector atlas-outlier --note "RegNet 280 SymNet fine-tuning steps"
"""

from __future__ import annotations

import argparse
from pathlib import Path

from napari_girnet.core.checkpoint import Checkpoint, file_sha256, load_checkpoint, save_checkpoint
from napari_girnet.core.config import preset
from napari_girnet.core.model import GIRNet

WEIGHTS = Path(__file__).resolve().parents[1] / "src" / "napari_girnet" / "weights"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--preset", default="cpu-2mm")
    parser.add_argument("--trained", nargs="+", required=True, choices=["reg", "seg", "inp"])
    parser.add_argument("--detector", default="auto", choices=["auto", "segnet", "atlas-outlier"])
    parser.add_argument("--fill", default="auto", choices=["auto", "inpnet", "atlas"])
    parser.add_argument("--note", action="append", default=[])
    parser.add_argument("--out", default=None, help=f"default: {WEIGHTS}/<preset>.pt")
    args = parser.parse_args()
    source = load_checkpoint(args.checkpoint)
    cfg = preset(args.preset, inference={"detector": args.detector, "fill": args.fill})
    if source.config.net != cfg.net or source.config.data != cfg.data:
        raise SystemExit(
            f"{args.checkpoint}: its networks or data grid differ from preset {args.preset!r}"
        )
    GIRNet.from_checkpoint(source)  # the weights load into the preset's networks
    provenance = {
        **{k: v for k, v in source.provenance.items() if k != "saved_at"},
        "trained_networks": sorted(args.trained),
        "source_checkpoint_sha256": file_sha256(args.checkpoint),
        "notes": args.note,
    }
    out = Path(args.out) if args.out else WEIGHTS / f"{args.preset}.pt"
    save_checkpoint(Checkpoint(config=cfg, model=source.model, provenance=provenance), out)
    size = out.stat().st_size / 1e6
    print(f"{out}: {size:.1f} MB, SHA-256 {file_sha256(out)}")


if __name__ == "__main__":
    main()
