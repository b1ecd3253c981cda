#!/usr/bin/env bash
# The main job: two monitored runs with a bundled model (CHGNet 0.3.0, real weights, offline).
# 1. Crystalline Si (64 atoms) heated from 300 K to 4000 K in 500 fs (Langevin, linear ramp):
#    it starts as a crystal, the kind of Si the uncertainty calibration was fitted on, and melts
#    near the end. Monitors: uncertainty (each atom's predicted CHGNet force error sigma, eV/Å,
#    every step; threshold 0.5 eV/Å, the default) and bias (SevenNet-0 re-evaluated every 10
#    steps on the same frame: its force disagreement |F_A - F_B| per atom, eV/Å, the
#    committee check). report.txt says in words when sigma crossed the threshold, how far the
#    two models' forces were apart then and at worst, and how well sigma ranks the atoms the
#    two models disagree on (Spearman, from this run's files); uncertainty_vs_disagreement.png
#    plots both over the steps.
# 2. Rutile TiO2 with its oxygen parameter off its relaxed value, relaxed (positions and cell)
#    with the symmetry monitor: the relaxation moves atoms but keeps the symmetry, so the
#    monitor should report no event (a symmetry alarm during hot MD would only say that the
#    atoms vibrate).
# Writes runs/demo/ (run 1: frames.extxyz, frames.h5, events.jsonl, summary.json, report.txt,
# PNGs) and runs/demo/symmetry_relax/ (run 2). Builds .venv-sevenn on first use (about 2
# minutes). Both models' anchor matrices and reference banks ship: nothing is embedded first.
# Knobs (tests): PLATOSCOPE_DEMO_STEPS (MD steps, default 500; the ramp always ends at 4000 K),
# PLATOSCOPE_DEMO_MONITORS (default uncertainty,bias:sevenn:7net-0).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_envs.sh sevenn
OUT=${1:-runs/demo}
MONITORS=${PLATOSCOPE_DEMO_MONITORS:-uncertainty,bias:sevenn:7net-0}
BIAS=()  # --bias-interval only with the bias monitor (an option of a monitor not run is refused)
[[ ,$MONITORS, == *,bias:* ]] && BIAS=(--bias-interval 10)
rm -rf "$OUT"
.venv-sevenn/bin/platoscope md examples/structures/Si.cif --repeat 2,2,2 \
  --model chgnet --ensemble nvt --temperature 300 --temperature-end 4000 \
  --steps "${PLATOSCOPE_DEMO_STEPS:-500}" --timestep 1 --friction 0.02 \
  --monitor "$MONITORS" ${BIAS[@]+"${BIAS[@]}"} --out "$OUT"
echo
echo "== 1. Si heated from 300 K to 4000 K ($OUT/report.txt)"
cat "$OUT/report.txt"
echo "plots: $(ls "$OUT"/*.png | tr '\n' ' ')"
echo
.venv-sevenn/bin/platoscope relax examples/structures/TiO2_rutile.cif --model chgnet --cell \
  --monitor symmetry --out "$OUT/symmetry_relax"
echo
echo "== 2. Rutile TiO2 relaxed, symmetry watched ($OUT/symmetry_relax/report.txt)"
cat "$OUT/symmetry_relax/report.txt"
