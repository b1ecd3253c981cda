"""Reports of a run folder (``platoscope md``, ``relax`` or ``monitor`` output): PNGs + text.

Reads only the run's files (sidecar, events, summary), so it also works on a folder left by a
killed run. Plots: worst score per step relative to its threshold, score distributions per
element, energy, anchor coverage per element against its threshold; and each monitor's own
plots (``Monitor.report_plots``: symmetry spread per class, two-model disagreement).
"""

from __future__ import annotations

import contextlib
import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from platoscope.errors import CorruptFileError
from platoscope.records import status_line
from platoscope.writers import SidecarLockedError, read_events, read_sidecar, repair_run
from platoscope.writers.runfiles import EVENTS, REPORT, SIDECAR, SUMMARY


def _thresholds(mon: dict[str, Any], symbols: list[str]) -> np.ndarray | None:
    """Per-atom thresholds from a monitor's summary entry (scalar or per element)."""
    per_el = mon.get("element_thresholds")
    if per_el:
        fallback = min(per_el.values())
        return np.array([per_el.get(s, fallback) for s in symbols], dtype=float)
    if mon.get("threshold") is not None:
        return np.full(len(symbols), float(mon["threshold"]))
    return None


def load_run(run_dir: str | Path) -> dict[str, Any]:
    """Everything a report needs, as plain Python: per-frame scores, events, summary.

    Frames leave out the Platonic coordinates (``platonic`` is None; with K = 3000 they would be
    the bulk of the memory, and derived ones cost a projection each): use
    :func:`platoscope.writers.read_sidecar` for them.
    """
    from ase.data import chemical_symbols

    run = Path(run_dir)
    summary_path = run / SUMMARY
    summary: dict[str, Any] = {}
    if summary_path.is_file():
        try:
            summary = json.loads(summary_path.read_text())
        except ValueError as err:
            raise CorruptFileError(f"{summary_path} is not valid JSON ({err}): the run's "
                                   "record is damaged; restore it or rerun") from None
    events = read_events(run / EVENTS, warn=False).events if (
        run / EVENTS).is_file() else []
    side = read_sidecar(run / SIDECAR)
    frames = [side.frame(i, platonic=False) for i in range(side.n_frames)]
    cov_thr: dict[str, float] = {}
    if side.projector_state is not None and frames:
        els = np.unique(np.concatenate([f["numbers"] for f in frames]))
        cov_thr = {chemical_symbols[z]: float(t) for z, t in
                   zip(els, side.projector.coverage_threshold(els), strict=True)}
    side.close()
    mons = {m["name"]: m for m in summary.get("monitoring", {}).get("monitors", [])}
    return {"summary": summary, "events": events, "frames": frames, "monitors": mons,
            "symbols": [[chemical_symbols[z] for z in f["numbers"]] for f in frames],
            "coverage_threshold": cov_thr}


def step_axis(ax: Any) -> None:
    """Steps are integers: no fractional ticks."""
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def score_names_of(data: dict[str, Any]) -> list[str]:
    """Every stored score name of a :func:`load_run` result."""
    return sorted({k for f in data["frames"] for k in f["scores"]})


def units_of(data: dict[str, Any]) -> dict[str, str]:
    """Units of every stored score, from the monitors' summaries."""
    return {k: v for m in data["monitors"].values() for k, v in (m.get("units") or {}).items()}


def model_of(data: dict[str, Any]) -> str:
    """The running model's spec, for titles."""
    return data["summary"].get("provenance", {}).get("model", "running model")


def save_figure(fig: Any, path: Path) -> Path:
    """Lay out, save at 120 dpi and close ``fig``; returns ``path``."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def sigma_vs_disagreement(data: dict[str, Any]) -> dict[str, Any] | None:
    """The uncertainty monitor's sigma beside the second model's force disagreement.

    From a :func:`load_run` result holding both ``uncertainty`` (sigma_i, eV/Å) and
    ``bias_force`` (|F_A - F_B|, eV/Å) scores; None when either is missing. Returns plain
    numbers (eV/Å, steps, 0-based atom indices): per scored frame the largest sigma (``sigma``:
    list of (step, max sigma, atom)); per frame where B was evaluated the largest disagreement
    (``force``: (step, max |dF|, atom, sigma of that atom)); ``threshold``, the first step
    whose largest sigma exceeds it (``first_over``: (step, sigma, atom) or None); the
    disagreement at or after that step (``force_at_first_over``); the largest disagreement
    (``worst_force``) and the share of evaluated atom-frames whose sigma is below that atom's
    (``worst_force_sigma_rank``, 0..1); every evaluated atom-frame (``atom_frames``: (n, 3)
    step, sigma, |dF|);
    the Spearman correlation of sigma and |dF| over them (``spearman``, ``n_atom_frames``) and
    within each frame (``per_frame``:
    median over frames, None under 3 frames with a defined value; ``per_frame_halves``: the
    medians over the first and second half of those frames, None under 6); element symbols
    beside atoms; the Spearman correlation of the evaluated frames' largest sigma and largest
    |dF| over the run (``over_run``: do they rise together; None under 3 frames); the run's
    ``config``.
    """
    from scipy.stats import spearmanr

    sig_rows, force_rows, pairs = [], [], []
    per_frame: list[float] = []
    for f, sy in zip(data["frames"], data["symbols"], strict=True):
        sc = f["scores"]
        if "uncertainty" not in sc:
            continue
        sig = np.asarray(sc["uncertainty"], dtype=float)
        i = int(np.nanargmax(sig))
        sig_rows.append((f["step"], float(sig[i]), i, sy[i]))
        df = sc.get("bias_force")
        if df is None or not np.isfinite(df).any():
            continue
        df = np.asarray(df, dtype=float)
        j = int(np.nanargmax(df))
        force_rows.append((f["step"], float(df[j]), j, sy[j], float(sig[j])))
        ok = np.isfinite(df) & np.isfinite(sig)
        pairs.append(np.stack([np.full(ok.sum(), f["step"]), sig[ok], df[ok]], axis=1))
        if ok.sum() > 2 and np.ptp(sig[ok]) > 0 and np.ptp(df[ok]) > 0:
            per_frame.append(float(spearmanr(sig[ok], df[ok])[0]))
    if not sig_rows or not force_rows:
        return None
    both = np.concatenate(pairs)  # (n, 3): step, sigma, |dF|
    rho = (float(spearmanr(both[:, 1], both[:, 2])[0])
           if len(both) > 2 and np.ptp(both[:, 1]) > 0 and np.ptp(both[:, 2]) > 0 else None)
    thr = (data["monitors"].get("uncertainty") or {}).get("threshold")
    first = next((r for r in sig_rows if thr is not None and r[1] > float(thr)), None)
    at_first = (next((r for r in force_rows if r[0] >= first[0]), None)
                if first is not None else None)
    bias = data["monitors"].get("bias") or {}
    worst = max(force_rows, key=lambda r: r[1])
    worst_rank = float(np.mean(both[:, 1] < worst[4]))  # share of atom-frames with lower sigma
    fr_sig = [r[1] for r in sig_rows if r[0] in {fr[0] for fr in force_rows}]
    fr_df = [r[1] for r in force_rows]
    over_run = (float(spearmanr(fr_sig, fr_df)[0]) if len(fr_df) >= 3 and len(fr_sig) == len(fr_df)
                and np.ptp(fr_sig) > 0 and np.ptp(fr_df) > 0 else None)
    half = len(per_frame) // 2
    halves = ((float(np.median(per_frame[:half])), float(np.median(per_frame[half:])))
              if half >= 3 else None)
    return {"sigma": sig_rows, "force": force_rows, "threshold": thr,
            "first_over": first, "force_at_first_over": at_first,
            "worst_force": worst, "worst_force_sigma_rank": worst_rank,
            "spearman": rho, "n_atom_frames": len(both), "atom_frames": both,
            "per_frame": float(np.median(per_frame)) if len(per_frame) >= 3 else None,
            "per_frame_halves": halves, "over_run": over_run,
            "config": data["summary"].get("config") or {},
            "model_a": model_of(data), "model_b": bias.get("model_b", "second model")}


def _thermostat(step: int, config: dict[str, Any]) -> str:
    """`` (thermostat target N K)`` for an MD run's step (its ramp, if any), else ``""``."""
    if config.get("kind") != "md" or config.get("ensemble") == "nve":
        return ""
    from platoscope.runner import ramp_temperature

    t = ramp_temperature(step, int(config.get("steps", 0)), float(config["temperature_K"]),
                         config.get("temperature_end_K"))
    return f" (thermostat target {t:.0f} K)"


def sigma_vs_disagreement_text(c: dict[str, Any]) -> list[str]:
    """Plain-words lines of :func:`sigma_vs_disagreement`'s result (numbers from this run)."""
    a, b = c["model_a"], c["model_b"]
    cfg = c.get("config") or {}
    sig0, sig_max = c["sigma"][0], max(c["sigma"], key=lambda r: r[1])
    w = c["worst_force"]
    lines = [f"uncertainty vs the second model ({b}) at the {len(c['force'])} frames where "
             "both were computed:",
             f"  {a}'s predicted force error sigma (largest atom) went from {sig0[1]:.2f} eV/Å "
             f"at step {sig0[0]} to a peak of {sig_max[1]:.2f} eV/Å at step {sig_max[0]}"
             f"{_thermostat(sig_max[0], cfg)} (atom {sig_max[2]}, {sig_max[3]})."]
    thr = c["threshold"]
    if c["first_over"] is None:
        lines.append(f"  sigma never exceeded the threshold ({thr} eV/Å).")
    else:
        st, sv, at, el = c["first_over"]
        msg = (f"  sigma first exceeded {float(thr):g} eV/Å at step {st}{_thermostat(st, cfg)} "
               f"(atom {at}, {el}: {sv:.2f} eV/Å)")
        fa = c["force_at_first_over"]
        if fa is None:
            msg += f"; {b} was not evaluated at or after that step."
        else:
            msg += (f"; at step {fa[0]} (the first frame {b} evaluated from then on) the two "
                    f"models' forces differed by up to {fa[1]:.2f} eV/Å (atom {fa[2]}, {fa[3]}).")
        lines.append(msg)
    lines.append(f"  Largest disagreement |F_A - F_B|: {w[1]:.2f} eV/Å at step {w[0]}"
                 f"{_thermostat(w[0], cfg)} on atom {w[2]} ({w[3]}), where sigma was "
                 f"{w[4]:.2f} eV/Å, " + (
                     "the highest sigma of all evaluated atom-frames."
                     if c["worst_force_sigma_rank"] >= 1 - 1 / c["n_atom_frames"] else
                     f"higher than for {100 * c['worst_force_sigma_rank']:.1f} % of the "
                     "evaluated atom-frames."))
    rho = "undefined" if c["spearman"] is None else f"{c['spearman']:.2f}"
    per = "" if c["per_frame"] is None else (
        f"; within one frame, median over frames {c['per_frame']:.2f}")
    if c.get("per_frame_halves") is not None:
        h1, h2 = c["per_frame_halves"]
        per += f" (first half of the run {h1:.2f}, second half {h2:.2f})"
    if c.get("over_run") is not None:
        lines.append(f"  Over the run, the largest sigma and the largest |F_A - F_B| of the "
                     f"evaluated frames rose and fell together with Spearman {c['over_run']:.2f} "
                     "(1: always together, 0: unrelated, below 0: opposite).")
    lines.append(f"  Spearman correlation of sigma and |F_A - F_B| over {c['n_atom_frames']} "
                 f"evaluated atom-frames: {rho}{per} (1: sigma ranks atoms exactly as the "
                 "two-model disagreement does; 0: no relation). Disagreement between two "
                 "models is not the error against DFT: it is the committee-style check, "
                 "sigma the single-model estimate.")
    return lines


def plot_sigma_vs_disagreement(c: dict[str, Any], run_dir: Path) -> Path:
    """``uncertainty_vs_disagreement.png``: largest sigma and largest |F_A - F_B| per step
    (eV/Å), and sigma against |F_A - F_B| at the evaluated frames' atoms."""
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4), width_ratios=(3, 2))
    s = np.array([r[:2] for r in c["sigma"]], dtype=float)
    f = np.array([(r[0], r[1], r[4]) for r in c["force"]], dtype=float)
    ax.plot(s[:, 0], s[:, 1], lw=1, label=f"largest sigma ({c['model_a']}, predicted error)")
    ax.plot(f[:, 0], f[:, 1], "o-", ms=3, lw=1,
            label=f"largest |F_A - F_B| ({c['model_a']} vs {c['model_b']})")
    if c["threshold"] is not None:
        ax.axhline(float(c["threshold"]), color="k", ls="--", lw=1, label="sigma threshold")
    step_axis(ax)
    ax.set_ylabel("force (error) per atom (eV/Å)")
    ax.set_title("Predicted error vs two-model disagreement, worst atom per step", fontsize=9)
    ax.legend(fontsize=7)
    af = c["atom_frames"]
    pts = ax2.scatter(af[:, 1], af[:, 2], c=af[:, 0], s=4, cmap="viridis")
    fig.colorbar(pts, ax=ax2, label="step")
    ax2.set_xlabel(f"sigma, {c['model_a']} (eV/Å)")
    ax2.set_ylabel(f"|F_A - F_B|, B = {c['model_b']} (eV/Å)")
    rho = "n/a" if c["spearman"] is None else f"{c['spearman']:.2f}"
    ax2.set_title(f"Every atom of the evaluated frames: Spearman {rho}", fontsize=9)
    lim = max(float(np.nanmax(af[:, 1:])), 1e-3) * 1.05
    ax2.plot([0, lim], [0, lim], "k:", lw=1, label="y = x")
    ax2.legend(fontsize=7)
    return save_figure(fig, Path(run_dir) / "uncertainty_vs_disagreement.png")


def make_report(run_dir: str | Path) -> list[Path]:
    """Write ``report.txt`` and PNG plots into ``run_dir``; return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = Path(run_dir)
    if run.is_dir() and not (run / "frames.h5").is_file() and not (run / "summary.json").is_file():
        inner = sorted(p.parent.name for p in run.glob("*/summary.json"))
        raise FileNotFoundError(
            f"{run} is not a run folder (no frames.h5 or summary.json): give the --out of md, "
            "relax or monitor" + (f"; it holds the run folders {', '.join(inner)} (monitor of "
                                  "several inputs): report each" if inner else ""))
    with contextlib.suppress(SidecarLockedError):  # a live run is read as it is
        repair_run(run)
    data = load_run(run)
    frames, mons, syms = data["frames"], data["monitors"], data["symbols"]
    steps = np.array([f["step"] for f in frames])
    paths: list[Path] = []
    score_names = score_names_of(data)
    main_scores = [n for n in score_names if n in mons]
    units = units_of(data)
    model = model_of(data)

    if main_scores:
        fig, ax = plt.subplots(figsize=(8, 4))
        for name in main_scores:
            xs, ys = [], []
            for f, sy in zip(frames, syms, strict=True):
                if name not in f["scores"]:
                    continue
                thr = _thresholds(mons[name], sy)
                s = f["scores"][name]
                ys.append(np.nanmax(s / thr) if thr is not None else np.nanmax(s))
                xs.append(f["step"])
            ax.plot(xs, ys, marker="." if len(xs) < 60 else None, label=name)
        ax.axhline(1.0, color="k", ls="--", lw=1, label="threshold")
        ax.set_yscale("log")  # the threshold line at 1 is always positive
        step_axis(ax)
        ax.set_ylabel("worst atom's score / its threshold (1 = threshold)")
        ax.set_title(f"Worst atom per step, per monitor ({model})")
        ax.legend()
        fig.tight_layout()
        paths.append(run / "worst_score.png")
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)

        fig, axes = plt.subplots(1, len(main_scores), figsize=(4.5 * len(main_scores), 4),
                                 squeeze=False)
        for ax, name in zip(axes[0], main_scores, strict=True):
            by_el: dict[str, list[float]] = defaultdict(list)
            thr_el: dict[str, float] = {}
            for f, sy in zip(frames, syms, strict=True):
                if name not in f["scores"]:
                    continue
                thr = _thresholds(mons[name], sy)
                for i, (el, v) in enumerate(zip(sy, f["scores"][name], strict=True)):
                    by_el[el].append(v)
                    if thr is not None:
                        thr_el[el] = thr[i]
            els = sorted(by_el)
            ax.boxplot([by_el[e] for e in els], tick_labels=els, showfliers=True)
            for j, e in enumerate(els, start=1):
                if e in thr_el:
                    ax.plot([j - 0.4, j + 0.4], [thr_el[e]] * 2, color="r", lw=1.5)
            if all(min(v) > 0 for v in by_el.values()):  # 0/1 scores (switch) stay linear
                ax.set_yscale("log")
            ax.set_title(f"monitor {name}: score per element (red: threshold)", fontsize=9)
            ax.set_xlabel("element")
            ax.set_ylabel(f"{name} score ({units.get(name, 'see summary.json')})", fontsize=8)
        fig.tight_layout()
        paths.append(run / "scores_by_element.png")
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)

    from platoscope.monitors.registry import monitor_classes

    for name, cls in monitor_classes().items():
        if name in mons:
            paths.extend(cls.report_plots(data, run))

    cov = _coverage(data)
    if cov:
        fig, ax = plt.subplots(figsize=(8, 3.5))
        for j, (el, c) in enumerate(sorted(cov["per_element"].items())):
            line, = ax.plot(c["steps"], c["min"], label=f"{el} (lowest atom)")
            if c["threshold"] is not None:
                ax.axhline(c["threshold"], color=line.get_color(), ls="--", lw=1,
                           label=f"{el} threshold" if j < 6 else None)
        step_axis(ax)
        ax.set_ylabel("coverage (cosine to best anchor)")
        ax.set_title("Anchor coverage per element (below the dashed line: coordinates rest on "
                     "anchors unlike the atom)", fontsize=9)
        ax.legend(fontsize=7, ncol=2)
        paths.append(save_figure(fig, run / "coverage.png"))

    comparison = sigma_vs_disagreement(data)
    if comparison is not None:
        paths.append(plot_sigma_vs_disagreement(comparison, run))

    energies = [(f["step"], f["energy"]) for f in frames if f["energy"] is not None]
    if energies:
        fig, ax = plt.subplots(figsize=(8, 3))
        e = np.array(energies)
        ax.plot(e[:, 0], e[:, 1] / len(frames[0]["numbers"]))
        step_axis(ax)
        ax.set_ylabel("potential energy (eV/atom)")
        ax.set_title(f"Potential energy ({model})")
        fig.tight_layout()
        paths.append(run / "energy.png")
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)

    paths.append(run / REPORT)
    text = _text(data, steps)
    if comparison is not None:
        text += "\n".join(sigma_vs_disagreement_text(comparison)) + "\n"
    paths[-1].write_text(text)
    return paths


def _percent(frac: float) -> str:
    """A fraction as a percentage for text: two significant figures, never an exponent
    (``{:.2g}`` printed 100 % as "1e+02 %")."""
    p = 100.0 * frac
    return f"{p:.0f}" if p >= 10 else f"{p:.2g}"


def _coverage(data: dict[str, Any]) -> dict[str, Any] | None:
    """Per element: steps, the lowest coverage per step, the threshold; and the atom-frames
    below their threshold (None if the run stored no coverage)."""
    thr = data.get("coverage_threshold") or {}
    per: dict[str, dict[str, Any]] = {}
    below = total = 0
    worst: tuple[float, str, int, int] | None = None
    for f, sy in zip(data["frames"], data["symbols"], strict=True):
        c = f["scores"].get("coverage")
        if c is None:
            continue
        sy_arr = np.array(sy)
        for el in np.unique(sy_arr):
            rows = np.flatnonzero(sy_arr == el)
            e = per.setdefault(el, {"steps": [], "min": [], "threshold": thr.get(el)})
            e["steps"].append(f["step"])
            e["min"].append(float(np.min(c[rows])))
            if e["threshold"] is not None:
                below += int(np.sum(c[rows] < e["threshold"]))
        total += len(c)
        i = int(np.argmin(c))
        if worst is None or c[i] < worst[0]:
            worst = (float(c[i]), sy[i], i, f["step"])
    if not per:
        return None
    return {"per_element": per, "below": below, "total": total, "worst": worst}


def _text(data: dict[str, Any], steps: np.ndarray) -> str:
    s, events, frames = data["summary"], data["events"], data["frames"]
    prov = s.get("provenance", {})
    lines = [
        "status: " + ("running, or killed (no final summary)" if s.get("status") == "running"
                      else status_line(s) if s.get("status")
                      else "unknown (no summary.json)"),
        f"model: {prov.get('model')} layer {prov.get('layer')} weights "
        f"{str(prov.get('weights_sha256'))[:16]}",
        f"anchors: {str(prov.get('anchor_set_hash'))[:16]} (K={prov.get('n_anchors')}), "
        f"projection {prov.get('projection')}",
        f"coordinates: {s.get('platonic_source', 'frames.extxyz, frames.h5')}",
        f"frames: {len(frames)}"
        + (f" (steps {int(steps.min())}..{int(steps.max())})" if len(steps) else ""),
        f"events: {len(events)}",
    ]
    by_mon = Counter(e["monitor"] for e in events)
    errs = s.get("monitoring", {}).get("monitor_errors") or []
    failed_at = Counter(e.get("monitor") for e in errs if isinstance(e, dict))
    for name, mon in data["monitors"].items():
        fa = mon.get("expected_false_alarm_rate")
        lines.append(f"  {name}: {by_mon.get(name, 0)} events; action {mon.get('action')}; "
                     f"expected false-alarm rate per atom-frame "
                     f"{'n/a' if fa is None else f'{fa:.2g}'}"
                     + (f"; FAILED on {failed_at[name]} frame(s), not checked there (monitor "
                        "errors below)" if failed_at.get(name) else ""))
        if mon.get("elements_above_every_reference_distance"):
            never = ", ".join(mon["elements_above_every_reference_distance"])
            lines.append(f"    cannot flag {never}: their calibrated threshold lies above every "
                         "distance between the two models on the reference atoms")
        if mon.get("elements_not_in_reference"):
            missing = ", ".join(mon["elements_not_in_reference"])
            lines.append(f"    NOT in the reference bank: {missing}"
                         " (scored against all bank atoms with the smallest element threshold, "
                         f"{mon.get('not_in_reference_threshold')}; not calibrated for them)")
        if mon.get("elements_not_in_calibration"):
            missing = ", ".join(mon["elements_not_in_calibration"])
            guess = [e for e in mon["elements_not_in_calibration"]
                     if e not in (mon.get("elements_without_prior") or [])]
            how = ("error floor scaled from a model-committee table"
                   if mon.get("unseen_element_offset") == "prior" and guess
                   else f"the {mon.get('unseen_element_offset')} offset of the calibrated elements")
            lines.append(f"    sigma NOT calibrated on DFT data of {missing} ({how}; expect it "
                         "off by a factor of 2 or more there: `platoscope calibrate` with a few "
                         "DFT-labelled structures of them)")
        if mon.get("documentation"):
            lines.append(f"    evidence (documentation): {mon['documentation']}")
        first = next((e for e in events if e["monitor"] == name), None)
        if first:
            lines.append(f"    first at step {first['step']}: atoms {first['atoms'][:8]} "
                         f"{first.get('elements', [])[:8]} score {first['score']:.4g} > "
                         f"{first['threshold']:.4g}")
        atom_counts = Counter(a for e in events if e["monitor"] == name for a in e["atoms"][:3])
        if atom_counts:
            lines.append("    most flagged atoms: " + ", ".join(
                f"{a} ({n}x)" for a, n in atom_counts.most_common(5)))
    cov = _coverage(data)
    if cov:
        c, el, i, st = cov["worst"]
        frac = cov["below"] / max(cov["total"], 1)
        lines.append(f"anchor coverage: {cov['below']} of {cov['total']} atom-frames "
                     f"({_percent(frac)} %) below their element's threshold (their coordinates "
                     "rest on anchors unlike them: comparisons there are less trustworthy; "
                     "platoscope anchors extend adds anchors); lowest "
                     f"{c:.3f} (atom {i}, {el}, step {st})")
        lines.append("  thresholds: " + ", ".join(
            f"{e} {v['threshold']:.3f}" for e, v in sorted(cov["per_element"].items())
            if v["threshold"] is not None))
    skipped = s.get("skipped_frames") or []
    if skipped:
        lines.append(f"skipped frames: {len(skipped)} (not monitored)")
        lines.extend(f"  {line}" for line in skipped[:20])
    failed = s.get("failed_frames") or []
    if failed:
        lines.append(f"failed frames: {len(failed)} (could not be embedded)")
        lines.extend(f"  {line}" for line in failed[:20])
    if errs:
        lines.append(f"monitor errors: {len(errs)} (first: {errs[0]})")
    return "\n".join(lines) + "\n"
