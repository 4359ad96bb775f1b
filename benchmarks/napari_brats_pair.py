"""The Apply widget's pair mode on the real BraTS-Reg 2022 case 001 pair (shipped model), headless.

    xvfb-run -a python benchmarks/napari_brats_pair.py [DATA_DIR/bratsreg-001]

Opens the pre-operative T1, the day-106 follow-up and the follow-up's landmark CSV with the
plugin's reader, chooses "fixed scan: <follow-up>" in the Apply widget, runs it in the widget's
worker and prints the wall time and the layers it added (both grids); writes a canvas
screenshot to /tmp/napari_brats.png.
"""

import sys
import time
from pathlib import Path

import napari
from qtpy.QtWidgets import QApplication

from napari_girnet._napari.apply_widget import ApplyWidget

ROOT = Path(__file__).resolve().parents[1]
D = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "shared" / "data" / "bratsreg-001"
viewer = napari.Viewer(show=False)
viewer.open(str(D / "BraTSReg_001_00_0000_t1.nii.gz"), plugin="napari-girnet")
viewer.open(str(D / "BraTSReg_001_01_0106_t1.nii.gz"), plugin="napari-girnet")
viewer.open(str(D / "BraTSReg_001_01_0106_landmarks.csv"), plugin="napari-girnet")
names = [ly.name for ly in viewer.layers]
print("layers in:", names)
widget = ApplyWidget(viewer)
viewer.window.add_dock_widget(widget)
widget.scan.setCurrentText(names[0])
widget.atlas.setCurrentText(f"fixed scan: {names[1]}")
print("model:", widget.model.currentText(), "| target:", widget.atlas.currentText())
before = set(names)
t0 = time.perf_counter()
widget.run()
app = QApplication.instance()
while not widget.run_button.isEnabled() and time.perf_counter() - t0 < 600:
    app.processEvents()
    time.sleep(0.05)
print(f"finished in {time.perf_counter() - t0:.0f} s")
added = [ly.name for ly in viewer.layers if ly.name not in before]
print("layers added:", added)
viewer.layers.selection.active = viewer.layers[names[1]]
for ly in viewer.layers:
    ly.visible = ly.name in (names[1], f"{names[0]} lesion mask (on {names[1]})", names[2])
viewer.dims.ndisplay = 2
viewer.screenshot("/tmp/napari_brats.png", canvas_only=True)
print("pair outcome:", widget.last_pair is not None)
viewer.close()
