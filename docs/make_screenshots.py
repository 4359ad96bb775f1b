"""Regenerate the screenshots in docs/images under a virtual X server.

    xvfb-run -a -s "-screen 0 1680x1050x24" python docs/make_screenshots.py [--steps 20]

- ``result.png``: the glioma sample after *Apply model* (bundled model fine-tuned ``--steps``
  steps): lesion mask and deformation vectors over the scan, the Apply widget docked.
- ``train.png``: the Train widget after a short co-learning run (live loss plot, previews).
- ``evaluate.png``: the Evaluate widget with a landmark TRE table and a Dice/HD95 table.

Uses only public napari API (``viewer.window.add_plugin_dock_widget``, ``viewer.screenshot``).
QT_QPA_PLATFORM must be unset (an offscreen platform renders a black canvas).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent / "images"


def wait(app, condition, timeout: float) -> None:
    t0 = time.perf_counter()
    while not condition():
        app.processEvents()
        time.sleep(0.05)
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError("timed out waiting for the widget")
    for _ in range(20):
        app.processEvents()
        time.sleep(0.02)


def save(viewer, name: str) -> None:
    from imageio.v3 import imwrite

    img = viewer.screenshot(canvas_only=False, flash=False)
    imwrite(OUT / name, img)
    print(f"written {OUT / name} {img.shape}")


def lesion_slice(result) -> int:
    """Axial index (S axis of the displayed data) through the centre of the predicted lesion."""
    mask = np.asarray(result.lesion_mask.array) > 0
    target = mask if mask.any() else np.asarray(result.prepared.native_mask.array)
    return int(np.argwhere(target)[:, 2].mean().round())


def result_screenshot(steps: int) -> object:
    import napari
    from napari.qt import get_qapp as get_app

    from napari_girnet import api
    from napari_girnet._napari import layers as L
    from napari_girnet.datasets import load_sample

    sample = load_sample("glioma")
    result = api.register(
        sample.scan, fine_tune_steps=steps, truth=sample.truth, exclude_lesions=("glioma",)
    )
    print("glioma sample:", result.metrics, {k: round(v, 1) for k, v in result.timings.items()})
    viewer = napari.Viewer(show=True, title="napari-girnet")
    viewer.window.resize(1680, 1000)
    viewer.add_layer(napari.layers.Layer.create(*L.volume_to_layer_data(sample.scan, "glioma T1")))
    for data, kwargs, kind in L.result_to_layers(result, "glioma", stride=3):
        layer = viewer.add_layer(napari.layers.Layer.create(data, kwargs, kind))
        role = layer.metadata["girnet"].get("role")
        layer.visible = role in ("lesion_mask", "deformation")
        if role == "deformation":
            layer.edge_width = 0.6
            layer.length = 2.0
    viewer.window.add_plugin_dock_widget("napari-girnet", "Apply model")
    viewer.camera.orientation2d = ("up", "right")
    viewer.dims.set_point(0, float(viewer.layers[0].data_to_world((lesion_slice(result), 0, 0))[0]))
    viewer.dims.thickness = (6.0, 0.0, 0.0)  # vectors of neighbouring slices stay visible
    viewer.reset_view()
    wait(get_app(), lambda: True, 5)
    save(viewer, "result.png")
    return viewer, result


def train_screenshot(viewer, steps: int) -> None:
    from napari.qt import get_qapp as get_app

    _, widget = viewer.window.add_plugin_dock_widget("napari-girnet", "Train (co-learning)")
    widget.preset.setCurrentText("cpu-2mm")
    widget.steps.setValue(steps)
    widget.pseudo_cases.setValue(0)
    widget.init_bundled.setChecked(widget.init_bundled.isEnabled())
    widget.preview_every.setValue(max(steps // 2, 1))
    widget.start()
    wait(get_app(), lambda: not widget.is_running, 3600)
    save(viewer, "train.png")
    viewer.window.remove_dock_widget(widget)


def evaluate_screenshot(viewer, result, truth) -> None:
    import napari
    from napari.qt import get_qapp as get_app

    from napari_girnet._napari import layers as L

    scan = result.scan
    viewer.add_layer(
        napari.layers.Layer.create(*L.volume_to_layer_data(truth, "glioma truth", kind="labels"))
    )
    brain = np.argwhere(result.prepared.native_mask.array)
    rng = np.random.default_rng(0)
    picks = brain[rng.choice(len(brain), 8, replace=False)]
    ids = tuple(str(i + 1) for i in range(len(picks)))
    fixed = scan.voxel_to_world(picks)
    # illustrative moving landmarks: where the registration maps the fixed points into the
    # atlas, plus 1.5 mm of simulated rater noise
    mapped = fixed + result.field_atlas_to_scan[:, picks[:, 0], picks[:, 1], picks[:, 2]].T
    moving = mapped + rng.normal(0, 1.5, mapped.shape)
    for name, pts in (("landmarks atlas (moving)", moving), ("landmarks scan (fixed)", fixed)):
        viewer.add_layer(napari.layers.Layer.create(*L.world_to_points_data(ids, pts, name=name)))
    _, widget = viewer.window.add_plugin_dock_widget("napari-girnet", "Evaluate")
    widget.moving.setCurrentText("landmarks atlas (moving)")
    widget.fixed.setCurrentText("landmarks scan (fixed)")
    widget.pred.setCurrentText("glioma lesion mask")
    widget.truth.setCurrentText("glioma truth")
    workers = [w for w in (widget.compute_tre(), widget.compute_masks()) if w is not None]
    wait(get_app(), lambda: all(not w.is_running for w in workers), 600)
    save(viewer, "evaluate.png")
    viewer.window.remove_dock_widget(widget)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="fine-tuning steps for result.png")
    parser.add_argument("--train-steps", type=int, default=10)
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    viewer, result = result_screenshot(args.steps)
    from napari_girnet.datasets import load_sample

    evaluate_screenshot(viewer, result, load_sample("glioma").truth)
    train_screenshot(viewer, args.train_steps)
    viewer.close()


if __name__ == "__main__":
    main()
