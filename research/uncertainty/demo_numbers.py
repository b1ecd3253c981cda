"""Numbers of one main-job run (scripts/demo.sh) for docs/detection.md: results/demo.json.

    PYTHONPATH=src bash scripts/demo.sh runs/demo
    PYTHONPATH=src .venv-sevenn/bin/python research/uncertainty/demo_numbers.py runs/demo

Reads only the run's files (the report's own comparison, platoscope.report.sigma_vs_disagreement)
and adds per-stage means (the crystal, the hot crystal, the melt: thirds of the run) so the
text can say how sigma and the two-model disagreement moved together.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from platoscope.report import load_run, sigma_vs_disagreement


def main(run_dir: str, out: str = "results/demo.json") -> None:
    data = load_run(run_dir)
    c = sigma_vs_disagreement(data)
    if c is None:
        raise SystemExit(f"{run_dir}: no uncertainty and bias_force scores to compare")
    af = c.pop("atom_frames")
    sig_rows = c.pop("sigma")  # every step: keep the peak and the evaluated frames' rows only
    c["sigma_peak"] = max(sig_rows, key=lambda r: r[1])
    steps = np.array([r[0] for r in c["force"]])
    thirds = np.array_split(np.unique(steps), 3)
    stages = []
    # trivial baseline: the running model's own |F| (sigma is mostly a calibrated |F|)
    fmag = np.concatenate([np.linalg.norm(f["forces"], axis=1) for f in data["frames"]
                           if "bias_force" in f["scores"] and "uncertainty" in f["scores"]])
    assert len(fmag) == len(af)
    c["spearman_own_force_baseline"] = float(spearmanr(fmag, af[:, 2])[0])
    for part in thirds:
        m = np.isin(af[:, 0], part)
        sig, df = af[m, 1], af[m, 2]
        stages.append({"steps": [int(part[0]), int(part[-1])], "atom_frames": int(m.sum()),
                       "mean_sigma": float(sig.mean()), "mean_abs_dF": float(df.mean()),
                       "max_abs_dF": float(df.max()),
                       "spearman": float(spearmanr(sig, df)[0]),
                       "spearman_own_force_baseline": float(spearmanr(fmag[m], df)[0])})
    from ase.geometry import find_mic
    from ase.io import read

    traj = read(Path(run_dir) / "frames.extxyz", ":")
    by_step = {int(a.info["step"]): a for a in traj}

    def state(step: int) -> dict[str, float]:
        """Kinetic temperature (K) and displacement from step 0 (Å) at ``step``."""
        a = by_step[step]
        d = np.linalg.norm(find_mic(a.positions - traj[0].positions, a.cell, True)[0], axis=1)
        return {"step": step, "kinetic_T_K": float(a.get_temperature()),
                "rms_displacement_A": float(np.sqrt((d ** 2).mean())),
                "fraction_moved_over_1.5A": float((d > 1.5).mean())}

    for st, part in zip(stages, thirds, strict=True):
        st["end_state"] = state(int(part[-1]))
    energies = [(f["step"], f["energy"] / len(f["numbers"])) for f in data["frames"]]
    relax_dir = Path(run_dir) / "symmetry_relax"
    relax = (json.loads((relax_dir / "summary.json").read_text())
             if (relax_dir / "summary.json").is_file() else None)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    res = {
        "what": "main job (scripts/demo.sh): CHGNet 0.3.0 Si64 heated 300 -> 4000 K, "
                "uncertainty sigma vs SevenNet-0 force disagreement at the same frames",
        "commit": commit,
        "command": "PYTHONPATH=src bash scripts/demo.sh runs/demo && PYTHONPATH=src "
                   ".venv-sevenn/bin/python research/uncertainty/demo_numbers.py runs/demo",
        "config": c.pop("config"),
        "comparison": c,
        "stages": stages,
        "energy_eV_per_atom": {"first": energies[0], "last": energies[-1],
                               "per_third": [float(np.mean([e for s, e in energies
                                                            if part[0] <= s <= part[-1]]))
                                             for part in thirds]},
        "symmetry_relax": None if relax is None else {
            "status": relax["status"], "steps": relax["last_step"],
            "events": relax["monitoring"]["n_events"]},
    }
    Path(out).write_text(json.dumps(res, indent=1, default=str) + "\n")
    print(json.dumps({k: res[k] for k in ("stages", "energy_eV_per_atom", "symmetry_relax")}
                     | {k: c[k] for k in ("first_over", "force_at_first_over", "worst_force",
                                          "sigma_peak", "spearman", "per_frame",
                                          "per_frame_halves", "over_run",
                                          "spearman_own_force_baseline")}, default=str))


if __name__ == "__main__":
    main(*sys.argv[1:])
