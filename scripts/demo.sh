#!/usr/bin/env bash
# The main job: a monitored MD run with a bundled model (CHGNet 0.3.0, real weights, offline).
# Rock salt NaCl (64 atoms) heated to 1400 K, above its melting point, for 500 fs: the
# atypical-environment monitor flags atoms as the crystal starts to disorder, and SevenNet-0
# re-evaluates every 25 steps to show where the two models' representations disagree.
# Writes runs/demo/: frames.extxyz, frames.h5, events.jsonl, summary.json, report.txt, PNGs.
# Builds .venv-sevenn on first use (about 2 minutes); the run takes a few minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_envs.sh sevenn
OUT=${1:-runs/demo}
rm -rf "$OUT"
.venv-sevenn/bin/platoscope md examples/structures/NaCl.cif --repeat 2,2,2 \
  --model chgnet --ensemble nvt --temperature 1400 --steps 500 --timestep 1 --friction 0.02 \
  --monitor "${PLATOSCOPE_DEMO_MONITORS:-atypical,bias:sevenn:7net-0}" --bias-interval 25 \
  --out "$OUT"
echo
cat "$OUT/report.txt"
echo "plots: $(ls "$OUT"/*.png | tr '\n' ' ')"
