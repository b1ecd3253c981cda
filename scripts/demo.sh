#!/usr/bin/env bash
# The main job: a monitored MD run with a bundled model (CHGNet 0.3.0, real weights, offline).
# Rock salt NaCl (64 atoms) at 1400 K for 500 fs, watched by three monitors: symmetry (the
# perfect crystal's two classes break at the first thermal step: one event), atypical (each
# atom's distance to the nearest reference environments in CHGNet's own feature space; hot
# rock salt stays within what CHGNet knows, about 0.3-0.7 of the threshold) and bias (SevenNet-0
# re-evaluated every 25 steps: where the two models see an atom differently).
# Writes runs/demo/: frames.extxyz, frames.h5, events.jsonl, summary.json, report.txt, PNGs.
# Builds .venv-sevenn on first use (about 2 minutes). On 2 cores the run takes about 4 minutes
# the first time (SevenNet-0's reference bank is built once and cached: ~2.5 min), then ~1.5.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_envs.sh sevenn
OUT=${1:-runs/demo}
rm -rf "$OUT"
.venv-sevenn/bin/platoscope md examples/structures/NaCl.cif --repeat 2,2,2 \
  --model chgnet --ensemble nvt --temperature 1400 --steps "${PLATOSCOPE_DEMO_STEPS:-500}" --timestep 1 --friction 0.02 \
  --monitor "${PLATOSCOPE_DEMO_MONITORS:-symmetry,atypical,bias:sevenn:7net-0}" --bias-interval 25 \
  --out "$OUT"
echo
cat "$OUT/report.txt"
echo "plots: $(ls "$OUT"/*.png | tr '\n' ' ')"
