"""The report's uncertainty-vs-second-model comparison, on a run's data written out by hand
(every expected number recomputed here from the same arrays)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr

from platoscope.report import (
    plot_sigma_vs_disagreement,
    sigma_vs_disagreement,
    sigma_vs_disagreement_text,
)


def run_data(n_frames: int = 21, n_atoms: int = 6, interval: int = 5, seed: int = 0):
    """A load_run-shaped dict: sigma every frame, |F_A - F_B| every ``interval`` frames,
    both growing over the run (a ramp 300 -> 3300 K over 20 steps)."""
    rng = np.random.default_rng(seed)
    frames, symbols = [], []
    for step in range(n_frames):
        scale = 0.1 + 0.05 * step
        df = rng.gamma(2.0, scale / 2, n_atoms)
        scores = {"uncertainty": 1.5 * df + rng.normal(0, 0.02 + 0.01 * step, n_atoms) + 0.05}
        scores["uncertainty"] = np.abs(scores["uncertainty"])
        if step % interval == 0:
            scores["bias_force"] = df
            scores["bias"] = df / 10
        frames.append({"step": step, "scores": scores, "energy": -1.0,
                       "numbers": np.full(n_atoms, 14)})
        symbols.append(["Si"] * n_atoms)
    return {"frames": frames, "symbols": symbols, "events": [],
            "monitors": {"uncertainty": {"threshold": 0.5}, "bias": {"model_b": "sevenn:7net-0"}},
            "summary": {"provenance": {"model": "chgnet:0.3.0"},
                        "config": {"kind": "md", "ensemble": "nvt", "steps": 20,
                                   "temperature_K": 300.0, "temperature_end_K": 3300.0}}}


def test_comparison_numbers_and_words(tmp_path):
    data = run_data()
    c = sigma_vs_disagreement(data)
    fr = data["frames"]
    sig_max = [f["scores"]["uncertainty"].max() for f in fr]
    first = next(i for i, v in enumerate(sig_max) if v > 0.5)
    assert c["first_over"][0] == fr[first]["step"] and c["first_over"][1] == sig_max[first]
    evaluated = [f for f in fr if "bias_force" in f["scores"]]
    assert [r[0] for r in c["force"]] == [f["step"] for f in evaluated] == [0, 5, 10, 15, 20]
    after = next(f for f in evaluated if f["step"] >= first)
    assert c["force_at_first_over"][0] == after["step"]
    assert c["force_at_first_over"][1] == after["scores"]["bias_force"].max()
    worst = max(evaluated, key=lambda f: f["scores"]["bias_force"].max())
    j = int(np.argmax(worst["scores"]["bias_force"]))
    assert c["worst_force"][:3] == (worst["step"], worst["scores"]["bias_force"][j], j)
    assert c["worst_force"][4] == worst["scores"]["uncertainty"][j]
    s = np.concatenate([f["scores"]["uncertainty"] for f in evaluated])
    d = np.concatenate([f["scores"]["bias_force"] for f in evaluated])
    assert c["worst_force_sigma_rank"] == pytest.approx(np.mean(s < c["worst_force"][4]))
    assert c["n_atom_frames"] == 30
    assert c["spearman"] == pytest.approx(spearmanr(s, d)[0], abs=1e-12)
    assert c["over_run"] == pytest.approx(spearmanr(
        [f["scores"]["uncertainty"].max() for f in evaluated],
        [f["scores"]["bias_force"].max() for f in evaluated])[0], abs=1e-12)
    assert c["per_frame"] == pytest.approx(np.median(
        [spearmanr(f["scores"]["uncertainty"], f["scores"]["bias_force"])[0]
         for f in evaluated]), abs=1e-12)
    assert c["per_frame_halves"] is None  # 5 frames: too few to split

    text = "\n".join(sigma_vs_disagreement_text(c))
    t_first = 300 + 3000 * fr[first]["step"] / 20
    assert (f"sigma first exceeded 0.5 eV/Å at step {first} (thermostat target "
            f"{t_first:.0f} K)") in text
    assert f"differed by up to {after['scores']['bias_force'].max():.2f} eV/Å" in text
    assert f"over 30 evaluated atom-frames: {c['spearman']:.2f}" in text
    assert "sevenn:7net-0" in text and "chgnet:0.3.0" in text
    png = plot_sigma_vs_disagreement(c, tmp_path)
    assert png.name == "uncertainty_vs_disagreement.png" and png.stat().st_size > 10_000


def test_comparison_needs_both_scores_and_says_when_never_over():
    data = run_data()
    for f in data["frames"]:
        f["scores"].pop("bias_force", None)
    assert sigma_vs_disagreement(data) is None
    data = run_data()
    data["monitors"]["uncertainty"]["threshold"] = 1e6
    c = sigma_vs_disagreement(data)
    assert c["first_over"] is None and c["force_at_first_over"] is None
    assert "sigma never exceeded the threshold (1000000.0 eV/Å)" in "\n".join(
        sigma_vs_disagreement_text(c))


def test_report_of_a_folder_that_is_not_a_run_names_the_run_folders_inside(tmp_path):
    from click.testing import CliRunner

    from platoscope.cli import main

    (tmp_path / "md_frames").mkdir()  # as `monitor a.extxyz b.extxyz --out tmp_path` leaves
    (tmp_path / "md_frames" / "summary.json").write_text("{}")
    r = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert r.exit_code != 0 and "Traceback" not in r.output
    assert "not a run folder" in r.output and "md_frames" in r.output


def test_percentages_in_report_text_never_use_exponents():
    from platoscope.report import _percent

    assert [_percent(x) for x in (1.0, 0.113, 0.05, 0.0012, 0.0)] == ["100", "11", "5", "0.12",
                                                                      "0"]
