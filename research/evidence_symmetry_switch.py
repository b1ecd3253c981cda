"""Evidence for the symmetry-breaking monitor and the model-switch check (docs/symmetry_switch.md).

    python research/evidence_symmetry_switch.py [--models chgnet,sevenn:7net-0] [--json out.json]
                                               [--skip-symmetry] [--skip-switch] [--threads 1]

1. Symmetry: 17 perfect crystals built from textbook parameters (none of them is in the shipped
   reference data). For each crystal and model, :class:`SymmetryMonitor` starts on the perfect
   crystal; false alarms are counted on four more symmetric frames (the same crystal evaluated
   again, strained uniformly by -2 % and +2 %, shifted rigidly); then one atom (each class
   representative in turn) is displaced by 0.001 ... 0.1 Å along a general direction and we
   record whether the monitor fires, the worst score over the threshold, and whether the event's
   ``most_displaced`` atom and class are the displaced ones.
2. Switch: a short Langevin MD (300 K, 1 fs) on a few structures runs on model A with a
   :class:`SwitchingCalculator` that hands over to model B at step 5, watched by a
   :class:`SwitchMonitor` (carrying the atypical monitor's thresholds into B's space with a map
   fitted on the switch frame) and the atypical monitor itself. Pairs: CHGNet 0.3.0 -> SevenNet-0
   (the hand-over asked about), CHGNet -> CHGNet (same model: the control) and CHGNet 0.3.0 ->
   0.2.0 (same family). Then the carried atypical thresholds are compared with B's own
   calibration (B's reference bank is built once and cached: a few minutes for SevenNet-0).

Prints markdown tables; ``--json`` also stores every number. Run time: docs/symmetry_switch.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
import warnings
from typing import Any

import numpy as np
from ase import Atoms
from ase.build import bulk
from ase.spacegroup import crystal

from platoscope.anchors import AnchorSet
from platoscope.calculator import PlatonicCalculator
from platoscope.monitors import Frame, Watcher
from platoscope.monitors.atypical import AtypicalMonitor
from platoscope.monitors.switch import SwitchMonitor
from platoscope.monitors.symmetry import SymmetryMonitor
from platoscope.provenance import invocation
from platoscope.reference import default_bank, reference_structures
from platoscope.switching import SwitchingCalculator

DISPLACEMENTS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1)  # Å
DIRECTION = np.array([1.0, 0.6, 0.3]) / np.linalg.norm([1.0, 0.6, 0.3])


def perovskite(a: float = 3.905) -> Atoms:
    frac = [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]
    return Atoms("SrTiO3", scaled_positions=frac, cell=[a, a, a], pbc=True)


def crystals() -> dict[str, Atoms]:
    """17 perfect crystals (experimental lattice parameters), supercells where a primitive cell
    would leave classes of one atom."""
    return {
        "NaCl rocksalt (8)": bulk("NaCl", "rocksalt", a=5.64, cubic=True),
        "NaCl rocksalt (64)": bulk("NaCl", "rocksalt", a=5.64, cubic=True).repeat(2),
        "Si diamond": bulk("Si", "diamond", a=5.43, cubic=True),
        "Cu fcc": bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2),
        "Fe bcc": bulk("Fe", "bcc", a=2.87, cubic=True).repeat(2),
        "Mg hcp": bulk("Mg", "hcp", a=3.21, c=5.21).repeat((2, 2, 2)),
        "ZnO wurtzite": bulk("ZnO", "wurtzite", a=3.25, c=5.21).repeat((2, 2, 1)),
        "GaAs zincblende": bulk("GaAs", "zincblende", a=5.65, cubic=True),
        "CsCl": bulk("CsCl", "cesiumchloride", a=4.12).repeat(2),
        "CaF2 fluorite": bulk("CaF2", "fluorite", a=5.46, cubic=True),
        "TiO2 rutile": crystal(["Ti", "O"], basis=[(0, 0, 0), (0.3053, 0.3053, 0)],
                               spacegroup=136, cellpar=[4.594, 4.594, 2.959, 90, 90, 90]),
        "SrTiO3 perovskite": perovskite().repeat(2),
        "MgAl2O4 spinel": crystal(["Mg", "Al", "O"], basis=[(0.125, 0.125, 0.125),
                                  (0.5, 0.5, 0.5), (0.2624, 0.2624, 0.2624)], spacegroup=227,
                                  setting=2, cellpar=[8.08, 8.08, 8.08, 90, 90, 90]),
        "Al2O3 corundum": crystal(["Al", "O"], basis=[(0, 0, 0.352), (0.306, 0, 0.25)],
                                  spacegroup=167, cellpar=[4.759, 4.759, 12.99, 90, 90, 120]),
        "SiO2 alpha-quartz": crystal(["Si", "O"], basis=[(0.4697, 0, 2 / 3),
                                     (0.4135, 0.2669, 0.1191 + 2 / 3)], spacegroup=154,
                                     cellpar=[4.913, 4.913, 5.405, 90, 90, 120]),
        "MoS2 2H": crystal(["Mo", "S"], basis=[(1 / 3, 2 / 3, 1 / 4), (1 / 3, 2 / 3, 0.621)],
                           spacegroup=194, cellpar=[3.16, 3.16, 12.29, 90, 90, 120]),
        "BaTiO3 P4mm": Atoms("BaTiO3", scaled_positions=[[0, 0, 0], [0.5, 0.5, 0.515],
                             [0.5, 0.5, -0.025], [0.5, 0, 0.485], [0, 0.5, 0.485]],
                             cell=[3.992, 3.992, 4.036], pbc=True).repeat((2, 2, 1)),
    }


def frame_of(calc: Any, atoms: Atoms, step: int) -> Frame:
    atoms = atoms.copy()
    return Frame(step=step, atoms=atoms, platonic=calc.get_platonic(atoms), calc=calc)


def symmetry_study(spec: str, anchors: AnchorSet) -> dict[str, Any]:
    calc = PlatonicCalculator(spec, anchors)
    out: dict[str, Any] = {}
    for name, atoms in crystals().items():
        t0 = time.time()
        mon = SymmetryMonitor()
        ref = frame_of(calc, atoms, 0)
        mon.start(ref)
        info, classes = mon.info_, mon.classes_
        reps = np.unique(classes, return_index=True)[1]
        # false alarms: the reference itself and four more symmetric frames
        sym_frames = [atoms.copy(), atoms.copy()]
        for s in (0.98, 1.02):
            b = atoms.copy()
            b.set_cell(atoms.cell * s, scale_atoms=True)
            sym_frames.append(b)
        b = atoms.copy()
        b.translate([0.123, 0.456, 0.789])
        b.wrap()
        sym_frames.append(b)
        false, worst_sym = 0, 0.0
        for k, b in enumerate(sym_frames):
            f = frame_of(calc, b, k) if k else ref
            sc = mon.score(f)
            false += bool(mon.events(f, sc))
            worst_sym = max(worst_sym, float(sc.max() / mon.threshold))
        rows = []
        for rep in reps:
            for d in DISPLACEMENTS:
                mon.broken_ = {}
                b = atoms.copy()
                b.positions[rep] += d * DIRECTION
                f = frame_of(calc, b, 1)
                sc = mon.score(f)
                ev = mon.events(f, sc)
                md = ev[0].details["most_displaced"] if ev else None
                rows.append({
                    "atom": int(rep), "element": atoms[rep].symbol,
                    "class": int(classes[rep]), "d": d, "flagged": bool(ev),
                    "ratio": float(sc.max() / mon.threshold),
                    "worst_atom": int(np.argmax(sc)),
                    "own_class_broken": bool(ev) and any(
                        c["class"] == classes[rep] for c in ev[0].details["broken_classes"]),
                    "most_displaced_ok": bool(md and md["atom"] == rep
                                              and md["class"] == classes[rep]),
                    "broken_classes": [c["class"] for c in ev[0].details["broken_classes"]]
                    if ev else []})
        out[name] = {"n_atoms": len(atoms), "spacegroup": f"{info.symbol} ({info.spacegroup})",
                     "class_sizes": np.bincount(classes).tolist(), "noise": mon.noise_,
                     "model_split": [{k: v for k, v in x.items() if k != "atoms"}
                                     for x in mon.model_split_classes_],
                     "threshold": float(mon.threshold), "false_alarm_frames": false,
                     "symmetric_frames": len(sym_frames), "worst_symmetric_ratio": worst_sym,
                     "displaced": rows, "seconds": round(time.time() - t0, 1)}
        split = "".join(
            f"; model splits class {x['spglib_class']} ({x['n_atoms']} {x['element']}, "
            f"spread {x['spread']:.1e}) into {x['into']}" for x in mon.model_split_classes_)
        print(f"  {spec} {name}: noise {mon.noise_:.2e}, threshold {mon.threshold:.2e}, "
              f"false alarms {false}/{len(sym_frames)}{split} ({time.time() - t0:.0f} s)",
              flush=True)
    return out


def print_symmetry(results: dict[str, dict[str, Any]]) -> None:
    for spec, res in results.items():
        print(f"\n#### {spec}: representatives flagged / displaced (worst score / threshold)\n")
        head = " | ".join(f"{d:g} Å" for d in DISPLACEMENTS)
        print(f"| crystal | N | space group | noise | threshold | false alarms | {head} |")
        print("|---" * (6 + len(DISPLACEMENTS)) + "|")
        for name, r in res.items():
            cells = []
            for d in DISPLACEMENTS:
                rows = [x for x in r["displaced"] if x["d"] == d]
                cells.append(f"{sum(x['flagged'] for x in rows)}/{len(rows)} "
                             f"({min(x['ratio'] for x in rows):.2g})")
            print(f"| {name} | {r['n_atoms']} | {r['spacegroup']} | {r['noise']:.1e} | "
                  f"{r['threshold']:.1e} | {r['false_alarm_frames']}/{r['symmetric_frames']} "
                  f"| " + " | ".join(cells) + " |")
        flagged = [x for r in res.values() for x in r["displaced"] if x["flagged"]]
        big = [x for r in res.values() for x in r["displaced"] if x["d"] >= 0.005]
        worst = max(r["worst_symmetric_ratio"] for r in res.values())
        print(f"\nfalse alarms: {sum(r['false_alarm_frames'] for r in res.values())} of "
              f"{sum(r['symmetric_frames'] for r in res.values())} symmetric frames; worst "
              f"symmetric score / threshold {worst:.2f}; "
              f"most_displaced right in {sum(x['most_displaced_ok'] for x in flagged)}/"
              f"{len(flagged)} events; displaced atom's own class among the broken ones in "
              f"{sum(x['own_class_broken'] for x in big)}/{len(big)} cases >= 0.005 Å")


def switch_structures() -> dict[str, Atoms]:
    refs = reference_structures()
    out = {"Si diamond 2x2x2": bulk("Si", "diamond", a=5.43, cubic=True).repeat(2),
           "TiO2 rutile 2x2x2": crystals()["TiO2 rutile"].repeat(2)}
    for i in (100, 500, 700):
        out[f"MP-20 #{i} {refs[i].get_chemical_formula()}"] = refs[i]
    return out


def switch_run(calc_a: PlatonicCalculator, calc_b: PlatonicCalculator, atoms: Atoms,
               bank_a: Any, *, steps: int = 10, switch_at: int = 5, seed: int = 0
               ) -> dict[str, Any]:
    from ase import units
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    atoms = atoms.copy()
    atoms.calc = SwitchingCalculator(calc_a, calc_b, rule=switch_at)
    atypical = AtypicalMonitor(bank_a, space="projected")  # carried thresholds live there
    thr_a = {k: round(v, 4) for k, v in atypical.summary()["element_thresholds"].items()
             if k in set(atoms.get_chemical_symbols())}
    switch = SwitchMonitor(atypical=atypical)
    events: list[Any] = []

    class Sink:
        def frame(self, frame: Frame, scores: dict[str, np.ndarray]) -> None:
            pass

        def event(self, event: Any) -> None:
            events.append(event)

    watcher = Watcher([switch, atypical], sinks=[Sink()], strict=True)
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(seed))
    dyn = Langevin(atoms, 1 * units.fs, temperature_K=300, friction=0.01,
                   rng=np.random.default_rng(seed))
    dyn.attach(watcher, interval=1, atoms=atoms)
    dyn.run(steps)
    sw = [e for e in events if e.monitor == "switch"]
    at = [e for e in events if e.monitor == "atypical"]
    d = sw[0].details if sw else {}
    carried = {k: v for k, v in (d.get("carried_thresholds") or {}).items() if k in thr_a}
    return {"switch_step": sw[0].step if sw else None,
            **{k: d.get(k) for k in ("cost", "offset", "identity_cost", "matched_self",
                                      "matched_equivalent", "same_element", "chance_equivalent",
                                      "flagged", "energy_a_per_atom", "energy_b_per_atom",
                                      "force_disagreement_mean")},
            "atypical_events_before": sum(e.step < switch_at for e in at),
            "atypical_events_after": sum(e.step >= switch_at for e in at),
            "atypical_atoms_after": sorted({i for e in at if e.step >= switch_at
                                            for i in e.atoms})[:20],
            "thresholds_a": thr_a, "thresholds_carried": carried}


def switch_study(anchors: AnchorSet, pairs: list[tuple[str, str]]) -> dict[str, Any]:
    calcs: dict[str, PlatonicCalculator] = {}
    banks: dict[str, Any] = {}

    def get(spec: str) -> PlatonicCalculator:
        if spec not in calcs:
            calcs[spec] = PlatonicCalculator(spec, anchors)
        return calcs[spec]

    structures = switch_structures()
    out: dict[str, Any] = {}
    for a, b in pairs:
        ca = get(a)
        cb = PlatonicCalculator(ca.backend, anchors) if a == b else get(b)
        if a not in banks:
            banks[a] = default_bank(ca.backend, anchors)
        for name, atoms in structures.items():
            t0 = time.time()
            r = switch_run(ca, cb, atoms, banks[a])
            r["n_atoms"] = len(atoms)
            out[f"{a} -> {b} | {name}"] = r
            print(f"  {a} -> {b} {name}: matched equivalent {r['matched_equivalent']:.2f} "
                  f"(chance {r['chance_equivalent']:.2f}), self {r['matched_self']:.2f}, "
                  f"flagged {r['flagged']} ({time.time() - t0:.0f} s)", flush=True)
    return out


def print_switch(res: dict[str, Any]) -> None:
    print("\n| hand-over | structure | N | cost | offset | matched self | matched equiv. "
          "(chance) | same element | flagged | F disagreement (eV/Å) | atypical events "
          "before / after |")
    print("|---" * 11 + "|")
    for key, r in res.items():
        pair, name = key.split(" | ")
        print(f"| {pair} | {name} | {r.get('n_atoms', '')} | {r['cost']:.3f} | {r['offset']:.3f} "
              f"| {r['matched_self']:.2f} | {r['matched_equivalent']:.2f} "
              f"({r['chance_equivalent']:.2f}) | {r['same_element']:.2f} | {r['flagged']} | "
              f"{r['force_disagreement_mean']:.3f} | {r['atypical_events_before']} / "
              f"{r['atypical_events_after']} |")
    print("\ncarried thresholds (A's own -> carried into B's space):")
    for key, r in res.items():
        pairs = ", ".join(f"{el} {r['thresholds_a'][el]:.3g} -> {v:.3g}"
                          for el, v in r["thresholds_carried"].items())
        print(f"- {key}: {pairs}")


def carry_study(anchors: AnchorSet, a: str = "chgnet", b: str = "sevenn:7net-0"
                ) -> dict[str, Any]:
    """Atypical thresholds carried from A's space into B's, against B's own calibration.

    Per element of the switch structures: A's own threshold, the threshold carried by a map
    fitted on one frame (what a switch does without B's bank), by a map fitted on the two
    reference banks, and B's own (an AtypicalMonitor on B's bank: the target)."""
    ca, cb = PlatonicCalculator(a, anchors), PlatonicCalculator(b, anchors)
    bank_a = default_bank(ca.backend, anchors)
    bank_b = default_bank(cb.backend, anchors, progress=True)
    own_a = AtypicalMonitor(bank_a, space="projected")
    own_b = AtypicalMonitor(bank_b, space="projected")
    t0 = time.time()
    by_bank = SwitchMonitor(bank_b=bank_b, retarget=False)
    carried_bank = by_bank.carry(own_a, np.zeros((1, 1)), np.zeros((1, 1)), np.zeros(1))
    bank_seconds = time.time() - t0
    out: dict[str, Any] = {"bank_map_seconds": round(bank_seconds, 1), "structures": {},
                           "bias": bias_holdout(bank_a, bank_b)}
    for name, atoms in switch_structures().items():
        x = atoms.copy()
        z_a, z_b = ca.get_platonic(x), cb.get_platonic(x.copy())
        carried_frame = SwitchMonitor(retarget=False).carry(own_a, z_a, z_b, atoms.numbers)
        rows = {}
        for z in sorted(set(atoms.numbers.tolist())):
            rows[atoms[list(atoms.numbers).index(z)].symbol] = {
                "a_own": own_a.element_thresholds_[z],
                "carried_frame": carried_frame.element_thresholds_[z],
                "carried_banks": carried_bank.element_thresholds_[z],
                "b_own": own_b.element_thresholds_[z]}
        out["structures"][name] = rows
        print(f"  carry {name}: done", flush=True)
    return out


def bias_holdout(bank_a: Any, bank_b: Any, quantiles: tuple[float, ...] = (0.99, 0.999)
                 ) -> dict[str, Any]:
    """BiasMonitor's per-element thresholds fitted on half of the reference structures (even,
    then odd indices) and the fraction of the other half's atoms above them: the real
    false-alarm rate. Also for plain per-element quantiles (>= 20 atoms, else pooled)."""
    from platoscope.monitors.bias import calibrate_thresholds, paired_distances

    d = paired_distances(bank_a, bank_b)
    z = bank_a.numbers
    out: dict[str, Any] = {"median_distance": float(np.median(d))}
    for q in quantiles:
        rates: dict[str, list[float]] = {"monitor": [], "plain per-element quantile": []}
        for half in (0, 1):
            fit = bank_a.structure_index % 2 == half
            per, glob = calibrate_thresholds(d[fit], z[fit], q)
            thr = np.array([per.get(int(x), glob) for x in z])
            rates["monitor"].append(float(np.mean(d[~fit] > thr[~fit])))
            plain = np.full(len(d), np.quantile(d[fit], q))
            for x in np.unique(z):
                m = fit & (z == x)
                if m.sum() >= 20:
                    plain[z == x] = np.quantile(d[m], q)
            rates["plain per-element quantile"].append(float(np.mean(d[~fit] > plain[~fit])))
        out[str(q)] = {"target": 1 - q, **rates}
    return out


def print_carry(res: dict[str, Any]) -> None:
    b = res["bias"]
    print(f"\nbias monitor (CHGNet vs SevenNet-0, median per-atom distance "
          f"{b['median_distance']:.3f}): thresholds fitted on even reference structures, "
          "false-alarm rate on the odd ones:")
    for q, r in b.items():
        if q != "median_distance":
            print(f"- quantile {q}: target {r['target']:.3g}; held out (even -> odd, odd -> "
                  f"even): monitor {r['monitor'][0]:.4f}, {r['monitor'][1]:.4f}; plain "
                  f"per-element quantiles {r['plain per-element quantile'][0]:.4f}, "
                  f"{r['plain per-element quantile'][1]:.4f}")
    print(f"\n(bank-to-bank map fitted in {res['bank_map_seconds']} s)\n")
    print("| structure | element | A own | carried (frame map) | carried (bank map) | B own |")
    print("|---" * 6 + "|")
    for name, rows in res["structures"].items():
        for el, r in rows.items():
            print(f"| {name} | {el} | {r['a_own']:.3f} | {r['carried_frame']:.3f} | "
                  f"{r['carried_banks']:.3f} | {r['b_own']:.3f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="chgnet,sevenn:7net-0")
    p.add_argument("--json", default=None, help="also write every number here")
    p.add_argument("--skip-symmetry", action="store_true")
    p.add_argument("--skip-switch", action="store_true")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (1: fastest on a loaded 2-core machine, deterministic)")
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.WARNING)
    anchors = AnchorSet.default()
    print(f"anchors: K={len(anchors)} ({anchors.hash[:12]})", flush=True)
    results: dict[str, Any] = {}
    if not args.skip_symmetry:
        results["symmetry"] = {spec: symmetry_study(spec, anchors)
                               for spec in args.models.split(",")}
        print_symmetry(results["symmetry"])
    if not args.skip_switch:
        pairs = [("chgnet", "sevenn:7net-0"), ("chgnet", "chgnet"), ("chgnet", "chgnet:0.2.0")]
        results["switch"] = switch_study(anchors, pairs)
        print_switch(results["switch"])
        results["carry"] = carry_study(anchors)
        print_carry(results["carry"])
    if args.json:
        results["provenance"] = invocation()
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1, default=float)


if __name__ == "__main__":
    main()
