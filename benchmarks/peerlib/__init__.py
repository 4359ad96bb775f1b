"""Importable pieces of ``benchmarks/peers.py`` (GIRNet side by side with ANTs SyN).

Modules: :mod:`peerlib.cases` (pseudo-pathological cases with an exact ground truth),
:mod:`peerlib.scoring` (per-registration metrics against the truth), :mod:`peerlib.table`
(aggregation, ratios, Markdown / CSV, box plots), :mod:`peerlib.runners` (each registration in
a fresh subprocess, wall time and peak RSS) and :mod:`peerlib.worker` (what that subprocess
runs). Benchmark code only: the package ``napari_girnet`` never imports ANTs or this folder.
"""
