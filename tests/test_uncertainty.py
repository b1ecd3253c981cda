"""Force-error model and uncertainty monitor (issue 11), with real CHGNet 0.3.0 on a few mlearn
Li/Si training structures."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write
from click.testing import CliRunner

from platoscope import AnchorSet
from platoscope.cli import main
from platoscope.errors import ConfigError, InputError
from platoscope.readers import read_structures
from platoscope.uncertainty import (
    DEFAULT_FORM,
    ForceErrorModel,
    calibrate,
    default_file,
    local_force_scale,
)

pytestmark = [pytest.mark.backend("chgnet"), pytest.mark.usefixtures("one_torch_thread")]
MLEARN = Path(__file__).resolve().parents[1] / "data" / "mlearn"


@pytest.fixture(scope="module")
def structures():
    li = list(read_structures(MLEARN / "Li_training.json.gz", limit=4))
    si = list(read_structures(MLEARN / "Si_training.json.gz", limit=4))
    return li + si


@pytest.fixture(scope="module")
def bank(chgnet_backend):
    from platoscope import AnchorSet
    from platoscope.reference import default_bank

    return default_bank(chgnet_backend, AnchorSet.default(), progress=False)


@pytest.fixture(scope="module")
def fitted(chgnet_backend, bank, structures):
    return calibrate(chgnet_backend, bank, structures, dft_forces_key="dft_forces")


def test_fit_predict_shapes_units_and_round_trip(chgnet_backend, bank, structures, fitted):
    est, report = fitted
    assert est.provenance_["model"] == "chgnet:0.3.0"
    assert est.provenance_["n_structures"] == len(structures)
    assert 0.0 <= report["held_out_coverage_1sigma"] <= report["held_out_coverage_2sigma"] <= 1
    atoms = structures[5].copy()
    res, feats = chgnet_backend.compute(atoms, ["energy", "forces"])
    sigma = est.predict(feats, res["forces"], atoms.numbers, atoms=atoms)
    assert sigma.shape == (len(atoms),)
    assert np.all(np.isfinite(sigma)) and np.all(sigma > 0)
    assert np.all(sigma < 50.0)  # eV/Å: a force error, not a log or a squared norm
    back = ForceErrorModel.from_state(est.get_state(), bank)
    np.testing.assert_allclose(back.predict(feats, res["forces"], atoms.numbers, atoms=atoms),
                               sigma, rtol=1e-9)
    assert back.form == est.form and back.terms == est.terms and back.unseen == est.unseen
    # an element outside the calibration (Cu): the ``unseen`` offset rule, and flagged
    from ase.build import bulk

    cu = bulk("Cu", "fcc", a=3.6, cubic=True)
    cu.rattle(0.05, seed=1)
    r2, f2 = chgnet_backend.compute(cu, ["energy", "forces"])
    s2 = back.predict(f2, r2["forces"], cu.numbers, atoms=cu)
    assert np.all(np.isfinite(s2)) and np.all(s2 > 0)
    assert back.uncalibrated_elements_ == [29]
    # larger forces everywhere -> larger sigma when the force slopes are positive
    if est.params_.get("b", 1.0) > 0 and est.params_.get("e", 1.0) >= 0:
        big = est.predict(feats, np.asarray(res["forces"]) * 10 + 1.0, atoms.numbers,
                          atoms=atoms)
        assert np.all(big > sigma)


def test_unseen_prior_rule(chgnet_backend, bank, fitted):
    """An element outside the calibration gets mean_c(o_c - log D_c) + log D_Z (D: the shipped
    committee table); an element outside the table falls back to the mean and is named in the
    monitor summary and report; the saved state keeps its table; format-2 files still load."""
    from ase.build import bulk

    from platoscope.monitors.uncertainty import UncertaintyMonitor
    from platoscope.uncertainty import element_prior

    est, _ = fitted
    assert est.unseen == "prior" and set(est.offsets_) == {3, 14}
    prior = element_prior()
    assert len(prior) >= 60 and all(v > 0 for v in prior.values())
    assert 84 not in prior  # Po: SevenNet-0 has no parameters for it
    base = np.mean([est.offsets_[z] - np.log(prior[z]) for z in (3, 14)])
    got = est.unseen_offsets([29, 32, 84, 3])
    assert set(got) == {29, 32, 84}  # Li is calibrated
    np.testing.assert_allclose(got[29], base + np.log(prior[29]), rtol=1e-12)
    np.testing.assert_allclose(got[32], base + np.log(prior[32]), rtol=1e-12)
    np.testing.assert_allclose(got[84], np.mean(list(est.offsets_.values())), rtol=1e-12)

    # sigma of Cu under the prior rule vs the mean rule: only the floor moves, by exp(shift)
    cu = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    cu.rattle(0.02, seed=2)
    res, feats = chgnet_backend.compute(cu, ["energy", "forces"])
    mean_rule = ForceErrorModel.from_state({**est.get_state(), "unseen": np.array("mean")}, bank)
    s_prior = est.predict(feats, res["forces"], cu.numbers, atoms=cu)
    s_mean = mean_rule.predict(feats, res["forces"], cu.numbers, atoms=cu)
    shift = got[29] - np.mean(list(est.offsets_.values()))
    assert (np.sign(s_prior - s_mean) == np.sign(shift)).all()

    state = est.get_state()
    assert str(state["format"]) == "platoscope.uncertainty/3"
    back = ForceErrorModel.from_state(state, bank)
    assert back.prior_ == est.prior_ and back.unseen_offsets([29]) == est.unseen_offsets([29])
    old = {k: v for k, v in state.items() if not k.startswith("prior_")}
    old.update(format=np.array("platoscope.uncertainty/2"), unseen=np.array("mean"))
    v2 = ForceErrorModel.from_state(old, bank)
    assert v2.unseen == "mean" and v2.prior_ == {}
    np.testing.assert_allclose(v2.predict(feats, res["forces"], cu.numbers, atoms=cu), s_mean,
                               rtol=1e-9)

    fresh = ForceErrorModel.from_state(state, bank)
    mon = UncertaintyMonitor(fresh, max_force_error=0.5)
    fresh.predict(feats, res["forces"], cu.numbers, atoms=cu)
    summ = mon.summary()
    assert summ["elements_not_in_calibration"] == ["Cu"]
    assert summ["unseen_element_offset"] == "prior"
    np.testing.assert_allclose(summ["uncalibrated_element_offsets"]["Cu"], got[29], rtol=1e-12)
    assert summ["elements_without_prior"] == []
    # threshold= is the base class's name for max_force_error: used and recorded as one
    assert UncertaintyMonitor(fresh, threshold=0.01).settings()["max_force_error"] == 0.01
    assert UncertaintyMonitor(fresh, threshold=0.01).threshold == 0.01
    with pytest.raises(InputError, match="name the same setting"):
        UncertaintyMonitor(fresh, threshold=0.01, max_force_error=0.5)


def test_local_force_scale_contract():
    from ase.build import bulk

    si = bulk("Si", "diamond", a=5.43)  # 2 atoms, 4 neighbours each at 2.35 Å
    f = np.array([[3.0, 0.0, 0.0], [0.0, 4.0, 0.0]])  # eV/Å
    L = local_force_scale(si, f, radius=2.5)
    # atom 0: itself (9) and 4 images of atom 1 (16 each): sqrt((9 + 64) / 5)
    np.testing.assert_allclose(L, [np.sqrt(73 / 5), np.sqrt((16 + 36) / 5)], rtol=1e-12)
    np.testing.assert_allclose(local_force_scale(si, f, radius=1.0), [3.0, 4.0], rtol=1e-12)
    with pytest.raises(InputError, match="expected"):
        local_force_scale(si, np.zeros((3, 3)))
    with pytest.raises(InputError, match="radius"):
        local_force_scale(si, f, radius=0.0)


@pytest.mark.parametrize("form,terms,per_element", [
    ("mult", ("force", "context", "distance"), True),
    ("additive", ("force", "context", "distance"), False),
])
def test_forms_fit_and_round_trip(chgnet_backend, bank, structures, form, terms, per_element):
    X, F, G, Z, S, L = [], [], [], [], [], []
    for i, a in enumerate(structures):
        b = a.copy()
        res, feats = chgnet_backend.compute(b, ["energy", "forces"])
        X.append(feats)
        F.append(res["forces"])
        G.append(a.arrays["dft_forces"])
        Z.append(a.numbers)
        S.append(np.full(len(a), i))
        L.append(local_force_scale(b, res["forces"]))
    X, F, G, Z, S, L = (np.concatenate(v) for v in (X, F, G, Z, S, L))
    m = ForceErrorModel(bank, form=form, terms=terms, per_element=per_element,
                        unseen="mean").fit(X, F, G, Z, S, force_scale=L)
    assert set(m.params_) >= {"a", "e", "d"}
    sig = m.predict(X, F, Z, force_scale=L)
    assert sig.shape == (len(Z),) and np.all(np.isfinite(sig)) and np.all(sig > 0)
    err = np.linalg.norm(F - G, axis=1)
    # in-sample coverage of a 0.68-quantile fit: near 68 % (tolerance for the smoothed loss)
    assert 0.55 <= np.mean(err <= sig) <= 0.80
    back = ForceErrorModel.from_state(m.get_state(), bank)
    np.testing.assert_allclose(back.predict(X, F, Z, force_scale=L), sig, rtol=1e-9)
    with pytest.raises(InputError, match="atoms"):
        m.predict(X, F, Z)
    with pytest.raises(InputError, match="force_scale"):
        ForceErrorModel(bank, form=form, terms=terms).fit(X, F, G, Z, S)
    if form == "mult":  # a format-1 file (before the local-force-scale term) still loads
        old = ForceErrorModel(bank, terms=("force", "distance")).fit(X, F, G, Z, S)
        st = old.get_state()
        p = old.params_
        st1 = {k: v for k, v in st.items() if k not in ("form", "params", "unseen", "radius")}
        st1.update(format=np.array("platoscope.uncertainty/1"),
                   coef=np.array([p["a"], p["b"], p["d"]]))
        back1 = ForceErrorModel.from_state(st1, bank)
        np.testing.assert_allclose(back1.predict(X, F, Z), old.predict(X, F, Z), rtol=1e-9)
        assert back1.unseen == "max"


def test_bad_input(bank, structures, fitted):
    est, _ = fitted
    x = np.zeros((3, bank.embeddings.shape[1]))
    with pytest.raises(InputError, match="must both be"):
        est.fit(x, np.zeros((3, 3)), np.zeros((2, 3)), np.array([3, 3, 3]), np.arange(3))
    with pytest.raises(InputError, match="at least 2 structures"):
        ForceErrorModel(bank).fit(x, np.zeros((3, 3)), np.ones((3, 3)), np.array([3, 3, 3]),
                                  np.zeros(3))
    with pytest.raises(InputError, match="expected"):
        est.predict(np.zeros((3, 7)), np.zeros((3, 3)), np.array([3, 3, 3]),
                    force_scale=np.ones(3))
    with pytest.raises(InputError, match="form must be"):
        ForceErrorModel(bank, form="sum")
    with pytest.raises(InputError, match="additive form needs"):
        ForceErrorModel(bank, form="additive", terms=("context",))
    with pytest.raises(InputError, match="unseen must be"):
        ForceErrorModel(bank, unseen="min")
    with pytest.raises(InputError, match="no per-atom array 'nope'"):
        calibrate(None, bank, structures, dft_forces_key="nope")
    with pytest.raises(InputError, match="at least 4"):
        calibrate(None, bank, structures[:2], dft_forces_key="dft_forces")
    other = copy.copy(bank)
    other.data_hash = "0" * 64
    with pytest.raises(ConfigError, match="reference bank"):
        ForceErrorModel.from_state(est.get_state(), other)
    with pytest.raises(ConfigError, match="platoscope calibrate"):
        ForceErrorModel.default(SimpleNamespace(spec="sevenn:7net-l3i5"), bank)


def test_shipped_default(chgnet_backend, bank):
    assert default_file("chgnet:0.3.0").is_file()
    est = ForceErrorModel.default(chgnet_backend, bank)
    assert est.provenance_["data"] == "mlearn Li+Si training"
    # the shipped file has the form that `platoscope calibrate` fits by default
    assert est.form == DEFAULT_FORM["form"] and est.terms == tuple(DEFAULT_FORM["terms"])
    assert est.unseen == DEFAULT_FORM["unseen"]
    # SevenNet-0's calibration ships too (same form; its bank is built on first use)
    with np.load(default_file("sevenn:7net-0"), allow_pickle=False) as z:
        prov = json.loads(str(z["provenance"]))
        assert str(z["form"]) == DEFAULT_FORM["form"]
    assert prov["model"] == "sevenn:7net-0" and prov["data"] == "mlearn Li+Si training"


def test_calibrate_cli_and_monitor_in_md(tmp_path, structures):
    frames = []
    for a in structures:
        b = a.copy()
        b.calc = SinglePointCalculator(b, forces=a.arrays["dft_forces"])
        del b.arrays["dft_forces"]
        frames.append(b)
    write(tmp_path / "dft.extxyz", frames)
    r = CliRunner()
    res = r.invoke(main, ["calibrate", str(tmp_path / "dft.extxyz"), "--model", "chgnet",
                          "--out", str(tmp_path / "m.npz")])
    assert res.exit_code == 0, res.output
    assert "held-out check" in res.output and (tmp_path / "m.npz").is_file()
    cover = float(re.search(r"<= sigma for ([\d.]+) %", res.output).group(1))
    assert ("is outside 60-75 %" in res.output) == (not 60.0 <= cover <= 75.0), res.output
    bad = r.invoke(main, ["calibrate", str(tmp_path / "dft.extxyz"), "--model", "chgnet",
                          "--dft-forces-key", "dft_f", "--out", str(tmp_path / "x.npz")])
    assert bad.exit_code != 0 and "no per-atom array 'dft_f'" in bad.output
    old_form = r.invoke(main, ["calibrate", str(tmp_path / "dft.extxyz"), "--model", "chgnet",
                               "--form", "mult", "--out", str(tmp_path / "mult.npz")])
    assert old_form.exit_code == 0, old_form.output
    with np.load(tmp_path / "mult.npz") as z:
        assert str(z["form"]) == "mult" and str(z["terms"]) == "force,distance"

    start = structures[4].copy()  # Si
    del start.arrays["dft_forces"]
    write(tmp_path / "start.xyz", start)
    for extra, name in ((["--max-force-error", "1e-4"], "shipped"),
                        (["--uncertainty-max-force-error", "1e-4", "--uncertainty-model",
                          str(tmp_path / "m.npz")], "user")):
        out = tmp_path / name
        res = r.invoke(main, ["md", str(tmp_path / "start.xyz"), "--model", "chgnet",
                              "--monitor", "uncertainty", "--steps", "2", "--out", str(out),
                              "--no-report", *extra])
        assert res.exit_code == 0, res.output
        summary = json.loads((out / "summary.json").read_text())
        (mon,) = summary["monitoring"]["monitors"]
        assert mon["name"] == "uncertainty" and mon["threshold"] == 1e-4
        assert mon["units"] == {"uncertainty": "eV/Å"}
        assert mon["estimator"]["model"] == "chgnet:0.3.0"
        events = [json.loads(x) for x in (out / "events.jsonl").read_text().splitlines()]
        assert events and all(e["monitor"] == "uncertainty" for e in events)
        assert all(np.isfinite(e["score"]) and e["score"] > 1e-4 for e in events)

    # an element outside the calibration (Cu) is named in summary.json and in the report
    from ase.build import bulk

    cu = bulk("Cu", "fcc", a=3.6, cubic=True)
    cu.rattle(0.02, seed=3)
    write(tmp_path / "cu.xyz", cu)
    res = r.invoke(main, ["md", str(tmp_path / "cu.xyz"), "--model", "chgnet", "--monitor",
                          "uncertainty", "--steps", "1", "--out", str(tmp_path / "cu")])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "cu" / "summary.json").read_text())
    (mon,) = summary["monitoring"]["monitors"]
    assert mon["elements_not_in_calibration"] == ["Cu"] and "Cu" in mon[
        "uncalibrated_element_offsets"]
    report = (tmp_path / "cu" / "report.txt").read_text()
    assert "sigma NOT calibrated on DFT data of Cu (error floor scaled from a model-committee" \
        in report, report


def test_calibrate_cli_names_file_and_frame_before_any_forward_pass(tmp_path, structures):
    """Forces under a custom key, over two files: a frame without the key, and one with an
    element the model lacks, are named by their own file and frame index (not a position in
    the concatenated input), before the model runs."""
    frames = []
    for a in structures:
        b = a.copy()
        b.info = {}
        b.arrays["REF_f"] = b.arrays.pop("dft_forces")
        frames.append(b)
    write(tmp_path / "a.extxyz", frames[:4])
    second = [f.copy() for f in frames[4:]]
    del second[2].arrays["REF_f"]
    write(tmp_path / "b.extxyz", second)
    r = CliRunner()
    res = r.invoke(main, ["calibrate", str(tmp_path / "a.extxyz"), str(tmp_path / "b.extxyz"),
                          "--dft-forces-key", "REF_f", "--out", str(tmp_path / "m.npz")])
    assert res.exit_code != 0
    assert "frame 2 of " in res.output and "b.extxyz: no per-atom array 'REF_f'" in res.output
    am = [f.copy() for f in frames[4:]]
    am[1].numbers[0] = 95  # Am: CHGNet has no parameters for it
    write(tmp_path / "am.extxyz", am)
    res = r.invoke(main, ["calibrate", str(tmp_path / "a.extxyz"), str(tmp_path / "am.extxyz"),
                          "--dft-forces-key", "REF_f", "--out", str(tmp_path / "m.npz")])
    assert res.exit_code != 0
    assert "frame 1 of " in res.output and "am.extxyz: model 'chgnet:0.3.0' has no " \
        "parameters for element(s) Am (Z=95)" in res.output, res.output
    assert not (tmp_path / "m.npz").exists()
    nan = [f.copy() for f in frames[4:]]
    nan[2].arrays["REF_f"][3, 1] = np.nan  # fitted nothing and wrote the start values before
    write(tmp_path / "nan.extxyz", nan)
    res = r.invoke(main, ["calibrate", str(tmp_path / "a.extxyz"), str(tmp_path / "nan.extxyz"),
                          "--dft-forces-key", "REF_f", "--out", str(tmp_path / "m.npz")])
    assert res.exit_code == 1, res.output
    assert "nan.extxyz" in res.output and "'REF_f' is NaN or inf at atom indices [3]" \
        in res.output, res.output
    assert not (tmp_path / "m.npz").exists()


FORCE_ATOL = 1e-5
"""eV/Å: forces written by ``monitor`` vs a separate CHGNet calculation of the same frames as
read from the same file (frames.extxyz keeps 8 decimals; float noise). Not against the frames
before they were written: rounding positions to the file's 8 decimals (5e-9 Å) moved CHGNet's
float32 forces by up to 1e-4 eV/Å on a 63-atom Si frame."""


def _positions_only(structures, tmp_path):
    frames = [a.copy() for a in structures[4:6]]  # Si, 2 frames
    for f in frames:
        del f.arrays["dft_forces"]
        f.info = {}
    path = tmp_path / "noforces.extxyz"
    write(path, frames)
    return path, frames


def test_monitor_cli_uncertainty_computes_the_models_forces(tmp_path, structures):
    """`platoscope monitor --monitor uncertainty` over a positions-only trajectory (issue 11):
    the default ``--forces auto`` computes the running model's energy and forces in the pass
    that gives the features, so every frame is scored (was: every frame failed, 'the frame
    holds no forces'); frames.extxyz and frames.h5 hold forces equal to a separate CHGNet
    calculation (FORCE_ATOL), and summary.json says where they came from."""
    from ase.io import read
    from chgnet.model import CHGNet
    from chgnet.model.dynamics import CHGNetCalculator

    from platoscope.writers import read_sidecar

    path, _ = _positions_only(structures, tmp_path)
    frames = read(path, ":")  # what the monitor reads: positions rounded to the file's decimals
    res = CliRunner().invoke(main, ["monitor", str(path), "--monitor", "uncertainty",
                                    "--no-report", "--out", str(tmp_path / "m")])
    assert res.exit_code == 0, res.output
    assert "monitor error" not in res.output and "note: " not in res.output, res.output
    summary = json.loads((tmp_path / "m" / "summary.json").read_text())
    assert summary["monitoring"]["monitor_errors"] == []
    assert summary["config"]["forces"].startswith(
        "computed by chgnet:0.3.0 in the same pass as the features")
    assert summary["config"]["forces_mode"] == {"requested": "auto", "used": "model"}
    written = read(tmp_path / "m" / "frames.extxyz", ":")
    assert len(written) == len(frames)
    bare = CHGNetCalculator(model=CHGNet.load(verbose=False), use_device="cpu")
    with read_sidecar(tmp_path / "m" / "frames.h5") as side:
        for i, (w, a) in enumerate(zip(written, frames, strict=True)):
            sigma = w.arrays["score_uncertainty"]
            assert sigma.shape == (len(a),) and np.all(np.isfinite(sigma)) and np.all(sigma > 0)
            ref = a.copy()
            ref.calc = bare
            f_ref = ref.get_forces()
            assert np.abs(f_ref).max() > 0.1  # not a trivially force-free frame
            np.testing.assert_allclose(w.get_forces(), f_ref, rtol=0, atol=FORCE_ATOL)
            np.testing.assert_allclose(w.get_potential_energy(), ref.get_potential_energy(),
                                       rtol=0, atol=1e-4)
            np.testing.assert_allclose(side.frame(i)["forces"], f_ref, rtol=0, atol=FORCE_ATOL)


def test_monitor_forces_model_vs_file_on_dft_labelled_frames(tmp_path, structures,
                                                             chgnet_backend, bank):
    """A DFT-labelled trajectory: with ``forces="model"`` sigma comes from the model's own
    forces, so frames whose stored forces are 3x the DFT ones give the same sigma as the
    unscaled file; with ``forces="file"`` sigma uses the stored forces and differs."""
    from ase.io import read

    from platoscope import AnchorSet
    from platoscope.calculator import PlatonicCalculator
    from platoscope.monitors.uncertainty import UncertaintyMonitor
    from platoscope.readers import read_frames
    from platoscope.runner import monitor_frames

    calc = PlatonicCalculator(chgnet_backend, anchors=AnchorSet.default(),
                              projection=bank.projector)
    est = ForceErrorModel.default(chgnet_backend, bank)
    sigma = {}
    for scale in (1.0, 3.0):
        frames = []
        for a in structures[4:6]:
            b = a.copy()
            b.calc = SinglePointCalculator(b, forces=scale * a.arrays["dft_forces"])
            del b.arrays["dft_forces"]
            frames.append(b)
        path = tmp_path / f"dft_x{scale:g}.extxyz"
        write(path, frames)
        for mode in ("model", "file"):
            out = tmp_path / f"{mode}_x{scale:g}"
            got, _ = read_frames(path)
            res = monitor_frames(got, calc, [UncertaintyMonitor(est)], out, progress=False,
                                 forces=mode, source=str(path))
            assert res["status"] == "completed" and res["monitoring"]["monitor_errors"] == []
            summary = json.loads((out / "summary.json").read_text())
            assert summary["config"]["forces_mode"]["used"] == mode
            written = read(out / "frames.extxyz", ":")
            sigma[mode, scale] = np.concatenate([w.arrays["score_uncertainty"]
                                                 for w in written])
            if mode == "file":
                assert summary["config"]["forces"] == ("as stored in the source (2 of 2 frames "
                                                       "hold forces), not computed by the "
                                                       "model")
                np.testing.assert_allclose(written[0].get_forces(),
                                           scale * structures[4].arrays["dft_forces"],
                                           rtol=0, atol=1e-7)
    # the same forward passes: equal up to float noise (stated: rtol 1e-6)
    np.testing.assert_allclose(sigma["model", 3.0], sigma["model", 1.0], rtol=1e-6)
    rel = np.abs(sigma["file", 3.0] - sigma["file", 1.0]) / sigma["file", 1.0]
    assert rel.max() > 0.05, rel.max()
    with pytest.raises(InputError, match="forces must be one of auto, model, file"):
        monitor_frames(got, calc, [], tmp_path / "bad", progress=False, forces="dft")


def test_monitor_cli_uncertainty_on_frames_without_forces_is_refused(tmp_path, structures):
    """`platoscope monitor --monitor uncertainty --forces file` over frames that hold no
    forces ran every frame through the model, failed the monitor on each and ended
    "completed; 0 events". It is now refused before anything loads, naming the frames."""
    path, _ = _positions_only(structures, tmp_path)
    res = CliRunner().invoke(main, ["monitor", str(path), "--monitor", "uncertainty",
                                    "--forces", "file", "--no-report", "--out",
                                    str(tmp_path / "m")])
    assert res.exit_code == 1, res.output
    assert (f"--forces file: 2 of 2 frames of {path} hold no forces (frame 0, 1) and the "
            "uncertainty monitor needs them: leave out --forces file") in res.output
    assert not (tmp_path / "m").exists()
    ok = CliRunner().invoke(main, ["monitor", str(path), "--monitor", "atypical", "--forces",
                                   "file", "--no-report", "--out", str(tmp_path / "a")])
    assert ok.exit_code == 0, ok.output  # a monitor that needs no forces runs without them


def test_max_force_error_out_of_range_is_refused_naming_the_flag(tmp_path):
    """--max-force-error <= 0 or nan is a usage error naming the flag, raised by the option
    itself (before the model, bank or calibration load), for md and monitor alike."""
    structure = str(Path(__file__).resolve().parents[1] / "examples" / "structures" / "Si.cif")
    r = CliRunner()
    for cmd in (["md", structure, "--steps", "1"], ["monitor", structure]):
        for value in ("-1", "0", "nan"):
            out = tmp_path / "run"
            res = r.invoke(main, [*cmd, "--monitor", "uncertainty", f"--max-force-error={value}",
                                  "--out", str(out)])
            assert res.exit_code == 2, (cmd, value, res.output)  # click's usage error
            want = "'nan' is not a finite number" if value == "nan" else "must be > 0 eV/Å, got"
            assert f"'--max-force-error': {want}" in res.output, res.output
            assert not out.exists()
    ok = r.invoke(main, ["md", structure, "--steps", "1", "--monitor", "uncertainty",
                         "--max-force-error", "0.3", "--no-report", "--out", str(tmp_path / "ok")])
    assert ok.exit_code == 0, ok.output
    summary = json.loads((tmp_path / "ok" / "summary.json").read_text())
    assert summary["monitoring"]["monitors"][0]["max_force_error"] == 0.3


def test_wrong_kind_of_file_for_uncertainty_model_or_anchors_is_named(tmp_path, bank):
    """An HDF5 file (embed's output), a text file or an anchor set given as a force-error
    model, or an HDF5 file given to `anchors show`: one error naming the file and what it
    is (was a ValueError traceback, 'This file contains pickled (object) data')."""
    import h5py

    from platoscope.errors import CorruptFileError

    h5 = tmp_path / "coords.h5"
    with h5py.File(h5, "w") as f:
        f["x"] = np.zeros(3)
    text = tmp_path / "frames.extxyz"
    text.write_text("1\n\nSi 0 0 0\n")
    with pytest.raises(CorruptFileError, match=r"coords\.h5: not a readable force-error model "
                       r"\(from platoscope calibrate\): the file is an HDF5 file"):
        ForceErrorModel.load(h5, bank)
    with pytest.raises(CorruptFileError, match=r"frames\.extxyz: .* not an \.npz \(zip\)"):
        ForceErrorModel.load(text, bank)
    other = tmp_path / "anchors.npz"
    np.savez(other, format=np.array("platoscope.anchorset/1"))
    with pytest.raises(InputError, match=r"anchors\.npz: not a platoscope force-error model "
                       r"\(format 'platoscope\.anchorset/1', expected"):
        ForceErrorModel.load(other, bank)
    r = CliRunner()
    res = r.invoke(main, ["anchors", "show", str(h5)])
    assert res.exit_code == 1 and "coords.h5: not a readable anchor-set file: the file is an " \
        "HDF5 file" in res.output, res.output
    structure = str(Path(__file__).resolve().parents[1] / "examples" / "structures" / "Si.cif")
    res = r.invoke(main, ["md", structure, "--steps", "1", "--monitor", "uncertainty",
                          "--uncertainty-model", str(h5), "--out", str(tmp_path / "run")])
    assert res.exit_code == 1 and "coords.h5: not a readable force-error model" in res.output, \
        (res.output, res.exception)


def test_calibrate_refuses_the_models_own_forces_as_labels(chgnet_backend, bank, structures):
    """A platoscope run's frames.extxyz passed to calibrate fitted sigma ~0.01 eV/Å on every
    atom (the labels were the model's own forces) with only a coverage warning."""
    own = []
    for atoms in structures:
        a = atoms.copy()
        a.arrays["own"] = chgnet_backend.compute(a, ["energy", "forces"])[0]["forces"]
        own.append(a)
    with pytest.raises(InputError, match=r"'own' forces of all \d+ atoms agree with "
                       r"chgnet:0.3.0's own within .* eV/Å: they are this model's forces"):
        calibrate(chgnet_backend, bank, own, dft_forces_key="own")


def test_calibrate_holdout_out_of_range_is_refused(tmp_path, bank, structures):
    """--holdout outside (0, 1) is a usage error naming the option (1.5 was a numpy
    ValueError traceback, 1 a misleading 'need DFT forces of at least 2 structures, got 0'
    after every forward pass, 0 and negatives silently held out one structure); a fraction
    that leaves fewer than 2 structures to fit on is refused before any forward pass."""
    for value in ("0", "1", "1.5", "-0.2"):
        res = CliRunner().invoke(main, ["calibrate", "x.extxyz", "--holdout", value,
                                        "--out", str(tmp_path / "m.npz")])
        assert res.exit_code == 2 and "Invalid value for '--holdout'" in res.output, res.output
    with pytest.raises(InputError, match="holdout 0.9 of 8 structures leaves 1 to fit on"):
        calibrate(None, bank, structures, dft_forces_key="dft_forces", holdout=0.9)
    with pytest.raises(InputError, match=r"holdout must be a fraction in \(0, 1\), got 1.5"):
        calibrate(None, bank, structures, dft_forces_key="dft_forces", holdout=1.5)


def test_save_reports_the_path_written_and_out_folders_are_refused(tmp_path, fitted, bank):
    """ForceErrorModel.save returns the file it wrote (numpy appended '.npz' to a name
    without it, and calibrate printed 'wrote m; use --uncertainty-model m', a file that did
    not exist); an --out that is a folder is refused before any work by every one-file
    command (embed failed with IsADirectoryError after all its forward passes)."""
    est, _ = fitted
    written = est.save(tmp_path / "m")
    assert written == tmp_path / "m.npz" and written.is_file() and not (tmp_path / "m").exists()
    ForceErrorModel.load(written, bank)
    folder = tmp_path / "folder"
    folder.mkdir()
    (tmp_path / "folder2.npz").mkdir()
    structure = str(Path(__file__).resolve().parents[1] / "examples" / "structures" / "Si.cif")
    r = CliRunner()
    for args in (["embed", structure, "--out", str(folder)],
                 ["reference", "build", structure, "--out", str(folder)],
                 ["calibrate", structure, "--out", str(tmp_path / "folder2")]):
        res = r.invoke(main, args)
        assert res.exit_code == 1 and "is a folder; this command writes one file" in res.output, \
            (args, res.output, res.exception)
    assert list(folder.iterdir()) == [] and not (tmp_path / "folder.parts").exists()


def test_existing_out_files_are_kept_without_overwrite(tmp_path):
    """embed, reference build/extend, calibrate and anchors select/extend replaced an existing
    --out file silently (a day's embed lost to a repeated command). They now refuse it before
    any work unless --overwrite is given, and leave it as it was."""
    structure = str(Path(__file__).resolve().parents[1] / "examples" / "structures" / "Si.cif")
    cases = {"e.h5": ["embed", structure], "b.npz": ["reference", "build", structure],
             "x.npz": ["reference", "extend", "default", structure, "--model", "chgnet"],
             "m.npz": ["calibrate", structure], "a.npz": ["anchors", "select", structure],
             "n.npz": ["anchors", "extend", "default", structure]}
    r = CliRunner()
    for name, args in cases.items():
        out = tmp_path / name
        out.write_bytes(b"an earlier result")
        # calibrate and the anchor commands append .npz: the check applies to the file written
        given = str(out.with_suffix("")) if name in ("m.npz", "a.npz") else str(out)
        res = r.invoke(main, [*args, "--out", given])
        assert res.exit_code == 1 and f"--out {out} exists; pass --overwrite" in res.output, \
            (args, res.output, res.exception)
        assert out.read_bytes() == b"an earlier result"
    res = r.invoke(main, ["anchors", "extend", "default", structure, "--out",
                          str(tmp_path / "n.npz"), "--overwrite"])
    assert res.exit_code == 0, res.output
    assert AnchorSet.load(tmp_path / "n.npz").meta  # replaced by a real anchor set
    res = r.invoke(main, ["embed", structure, "--workers", "0", "--out", str(tmp_path / "w.h5")])
    assert res.exit_code == 2 and "'--workers'" in res.output, res.output  # before any load


def test_uncertainty_keeps_its_own_bank_beside_an_extended_reference(tmp_path):
    """The README's workflow (extend the default bank with your structures, pass it as
    --reference) was refused by the uncertainty monitor: its shipped calibration is tied to
    the default bank. sigma now keeps that bank; the atypical monitor uses the extended one."""
    from ase.build import bulk

    si = bulk("Si", "diamond", a=5.43, cubic=True)
    si.rattle(0.05, seed=1)
    write(tmp_path / "mine.extxyz", si)
    r = CliRunner()
    res = r.invoke(main, ["reference", "extend", "default", str(tmp_path / "mine.extxyz"),
                          "--model", "chgnet", "--out", str(tmp_path / "ext.npz")])
    assert res.exit_code == 0, res.output
    out = tmp_path / "run"
    res = r.invoke(main, ["md", str(tmp_path / "mine.extxyz"), "--model", "chgnet", "--steps",
                          "1", "--monitor", "atypical,uncertainty", "--reference",
                          str(tmp_path / "ext.npz"), "--no-report", "--out", str(out)])
    assert res.exit_code == 0, res.output
    mons = {m["name"]: m for m in
            json.loads((out / "summary.json").read_text())["monitoring"]["monitors"]}
    from platoscope.reference import ReferenceBank

    ext = ReferenceBank.load(tmp_path / "ext.npz")
    assert mons["atypical"]["reference_data_hash"] == ext.data_hash
    assert mons["uncertainty"]["estimator"]["bank_data_hash"] != ext.data_hash
