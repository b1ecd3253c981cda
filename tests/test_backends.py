"""Each backend against its bare ASE calculator, with real weights (CHGNet, SevenNet) or a real
MACE architecture trained here (tests/data/mace_emt_tiny.model)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from ase.stress import full_3x3_to_voigt_6_stress

from platoscope.backends import load_backend
from platoscope.errors import (
    BackendUnavailableError,
    InvalidStructureError,
    UnknownBackendError,
    UnsupportedElementError,
)

MACE_MODEL = Path(__file__).parent / "data" / "mace_emt_tiny.model"


def nacl(rattle: float = 0.05) -> Atoms:
    a = bulk("NaCl", "rocksalt", a=5.64, cubic=True)
    a.rattle(rattle, seed=3)
    return a


def cuau() -> Atoms:
    a = bulk("Cu", "fcc", a=3.7, cubic=True).repeat((2, 1, 1))
    a.numbers[[1, 4, 6]] = 79
    a.rattle(0.05, seed=4)
    return a


def assert_parity(backend, bare, atoms: Atoms) -> None:
    """Wrapper results equal the bare calculator's to 1e-6 relative."""
    results, feats = backend.compute(atoms, ["energy", "forces", "stress"])
    ref = atoms.copy()
    ref.calc = bare
    e, f, s = ref.get_potential_energy(), ref.get_forces(), ref.get_stress()
    assert results["energy"] == pytest.approx(e, rel=1e-6)
    np.testing.assert_allclose(results["forces"], f, rtol=1e-6, atol=1e-6 * np.abs(f).max())
    stress = np.asarray(results["stress"])
    if stress.shape == (3, 3):  # CHGNet keeps 3x3; ASE's get_stress turns it into Voigt order
        stress = full_3x3_to_voigt_6_stress(stress)
    np.testing.assert_allclose(stress, s, rtol=1e-6, atol=1e-6 * np.abs(s).max())
    assert feats.shape[0] == len(atoms) and feats.dtype == np.float64
    assert np.isfinite(feats).all()


class ForwardCounter:
    """Counts calls of a submodule that runs exactly once per model evaluation."""

    def __init__(self, model: torch.nn.Module, name: str):
        self.n = 0
        self.handle = model.get_submodule(name).register_forward_hook(self)

    def __call__(self, *_):
        self.n += 1


# --------------------------------------------------------------------------- CHGNet
@pytest.mark.backend("chgnet")
class TestCHGNet:
    def test_parity_with_bare_calculator(self, chgnet_backend, single_thread):
        from chgnet.model import CHGNet
        from chgnet.model.dynamics import CHGNetCalculator

        bare = CHGNetCalculator(model=CHGNet.load(verbose=False), use_device="cpu")
        assert_parity(chgnet_backend, bare, nacl())

    def test_features_are_chgnet_atom_fea(self, chgnet_backend):
        from pymatgen.io.ase import AseAtomsAdaptor

        atoms = nacl()
        _, feats = chgnet_backend.compute(atoms)
        net = chgnet_backend.calc.model
        graph = net.graph_converter(AseAtomsAdaptor.get_structure(atoms))
        pred = net.predict_graph(graph, task="e", return_atom_feas=True)
        np.testing.assert_allclose(feats, pred["atom_fea"], rtol=1e-5, atol=1e-6)
        assert feats.shape == (8, 64)

    def test_one_forward_pass_per_call(self, chgnet_backend):
        counter = ForwardCounter(chgnet_backend.torch_model, "atom_embedding")
        try:
            chgnet_backend.compute(nacl(), ["energy", "forces", "stress"])
        finally:
            counter.handle.remove()
        assert counter.n == 1

    def test_layers(self, chgnet_backend):
        layers = chgnet_backend.available_layers()
        assert layers[0] == "atom_fea" and "conv0" in layers
        conv = load_backend("chgnet", layer=f"conv{chgnet_backend.n_conv - 2}")
        conv.calc = chgnet_backend.calc  # same weights, other layer name for the same tensor
        np.testing.assert_allclose(conv.compute(nacl())[1], chgnet_backend.compute(nacl())[1],
                                   rtol=1e-5, atol=1e-6)  # float32 model, threads
        with pytest.raises(ValueError, match="unknown layer 'conv99'.*available: atom_fea"):
            load_backend("chgnet", layer="conv99")

    def test_batched_embed_matches_single(self, chgnet_backend):
        structs = [nacl(), bulk("Si", "diamond", a=5.43), cuau()]
        batched = chgnet_backend.embed(structs, batch_size=2)
        for a, f in zip(structs, batched, strict=True):
            np.testing.assert_allclose(f, chgnet_backend.compute(a)[1], rtol=1e-5, atol=1e-6)

    def test_isolated_atom_is_named(self, chgnet_backend):
        lonely = Atoms("Rb2", positions=[[0, 0, 0], [5, 5, 5]], cell=[20, 20, 20], pbc=True)
        with pytest.raises(InvalidStructureError, match=r"atom\(s\) \[0, 1\] \(Rb, Rb\)"):
            chgnet_backend.compute(lonely)

    def test_molecule_without_a_cell_is_named(self, chgnet_backend):
        """A cell-less molecule (a plain .xyz) ended in numpy's 'Singular matrix'."""
        from ase.build import molecule

        water = molecule("H2O")
        for call in (chgnet_backend.compute, lambda a: chgnet_backend.embed([a])):
            with pytest.raises(InvalidStructureError, match="needs a 3D cell.*give it a box"):
                call(water)
        water.center(vacuum=6.0)
        assert chgnet_backend.embed([water])[0].shape == (3, chgnet_backend.feature_dim)

    def test_element_outside_model(self, chgnet_backend):
        a = nacl()
        a.numbers[0] = 99
        msg = r"'chgnet:0.3.0' has no parameters for element\(s\) Es \(Z=99\)"
        with pytest.raises(UnsupportedElementError, match=msg):
            chgnet_backend.compute(a)

    def test_provenance(self, chgnet_backend):
        p = chgnet_backend.provenance().to_dict()
        assert p["model"] == "chgnet:0.3.0" and p["layer"] == "atom_fea"
        assert len(p["weights_sha256"]) == 64 and p["feature_dim"] == 64
        assert p["device"] == "cpu"
        assert "chgnet" in p["versions"] and "torch" in p["versions"]

    def test_unknown_model(self):
        with pytest.raises(UnknownBackendError, match="chgnet:0.3.0, chgnet:0.2.0"):
            load_backend("chgnet:9.9")


# --------------------------------------------------------------------------- SevenNet
@pytest.mark.backend("sevenn")
class TestSevenNet:
    def test_parity_with_bare_calculator(self, sevenn_backend, single_thread):
        from sevenn.calculator import SevenNetCalculator

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            bare = SevenNetCalculator("7net-0", device="cpu")
        assert_parity(sevenn_backend, bare, nacl())

    def test_pre_readout_is_last_gate_output(self, sevenn_backend):
        # 7net-0's last interaction block outputs scalars only, so its 0e slice is the
        # readout input: two different hooks must agree exactly.
        gate = load_backend("sevenn:7net-0", layer="4_equivariant_gate")
        pre = load_backend("sevenn:7net-0", layer="pre_readout")
        a = nacl()
        np.testing.assert_allclose(gate.compute(a)[1], pre.compute(a)[1], rtol=1e-5, atol=1e-6)

    def test_invariant_slice_of_inner_block(self, sevenn_backend):
        from platoscope.backends.base import invariant_columns

        b = sevenn_backend
        assert b.layer == "1_equivariant_gate"  # the default: best shared-space agreement
        irreps = b.torch_model.get_submodule("1_equivariant_gate").gate.irreps_out
        assert len(invariant_columns(irreps)) == b.compute(nacl())[1].shape[1] < irreps.dim

    def test_one_forward_pass_per_call(self, sevenn_backend):
        counter = ForwardCounter(sevenn_backend.torch_model, "edge_embedding")
        try:
            sevenn_backend.compute(nacl(), ["energy", "forces", "stress"])
        finally:
            counter.handle.remove()
        assert counter.n == 1

    def test_embed_stops_at_the_layer(self, sevenn_backend):
        """Bank building: embed runs the model only up to the hooked layer (no later block,
        no force backward pass) and gives the features compute gives."""
        structs = [nacl(), bulk("Si", "diamond", a=5.43, cubic=True), nacl(0.2)]
        later = ForwardCounter(sevenn_backend.torch_model, "4_equivariant_gate")
        try:
            feats = sevenn_backend.embed(structs)
        finally:
            later.handle.remove()
        assert later.n == 0
        for atoms, got in zip(structs, feats, strict=True):
            want = sevenn_backend.compute(atoms, ["energy", "forces"])[1]
            assert got.shape == want.shape and got.dtype == np.float64
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())
        with pytest.raises(UnsupportedElementError, match="structure 1: .*Am"):
            sevenn_backend.embed([nacl(), Atoms("Am", positions=[[0, 0, 0]], cell=[3, 3, 3],
                                                pbc=True)])
        # a full pass after interrupted ones still gives the same features (hooks removed)
        np.testing.assert_allclose(sevenn_backend.compute(nacl())[1],
                                   sevenn_backend.embed([nacl()])[0], rtol=1e-5, atol=1e-6)

    def test_multifidelity_modal(self):
        b = load_backend("sevenn:7net-mf-0@PBE")
        assert b.spec == "sevenn:7net-mf-0@PBE"
        assert b.provenance().extra == {"modal": "PBE"}
        r = load_backend("sevenn:7net-mf-0@R2SCAN")
        assert b.fingerprint != r.fingerprint
        a = nacl()
        assert b.compute(a)[0]["energy"] != pytest.approx(r.compute(a)[0]["energy"], rel=1e-6)

    def test_isolated_atom_warns(self, sevenn_backend):
        lonely = Atoms("Rb2", positions=[[0, 0, 0], [9, 9, 9]], cell=[20, 20, 20], pbc=True)
        with pytest.warns(UserWarning, match=r"atom\(s\) \[0, 1\] have no neighbour"):
            sevenn_backend.compute(lonely)

    def test_element_outside_model(self, sevenn_backend):
        a = nacl()
        a.numbers[0] = 95
        msg = r"'sevenn:7net-0' has no parameters for element\(s\) Am \(Z=95\)"
        with pytest.raises(UnsupportedElementError, match=msg):
            sevenn_backend.compute(a)

    def test_unknown_and_download_only_models(self):
        with pytest.raises(UnknownBackendError, match="sevenn:7net-l3i5"):
            load_backend("sevenn:7net-99")
        with pytest.raises(BackendUnavailableError, match="needs internet.*checkpoint.pth"):
            load_backend("sevenn:7net-omat")


# --------------------------------------------------------------------------- MACE
@pytest.mark.backend("mace")
class TestMACE:
    def bare(self):
        from mace.calculators import MACECalculator

        return MACECalculator(model_paths=str(MACE_MODEL), device="cpu", default_dtype="float64")

    def test_parity_with_bare_calculator(self, mace_backend, single_thread):
        assert_parity(mace_backend, self.bare(), cuau())

    def test_invariants_match_get_descriptors(self, mace_backend):
        a = cuau()
        bare = self.bare()
        want1 = bare.get_descriptors(a, invariants_only=True, num_layers=1)
        np.testing.assert_allclose(mace_backend.compute(a)[1], want1, rtol=1e-10, atol=1e-12)
        full = load_backend(f"mace:{MACE_MODEL}", layer="invariant")
        want = bare.get_descriptors(a, invariants_only=True, num_layers=-1)
        np.testing.assert_allclose(full.compute(a)[1], want, rtol=1e-10, atol=1e-12)

    def test_invariant_slice_comes_from_irreps(self, mace_backend):
        irreps = mace_backend.block_irreps
        eq = load_backend(f"mace:{MACE_MODEL}", layer="interaction0")
        width = eq.compute(cuau())[1].shape[1]
        assert width == irreps[0].dim
        assert mace_backend.feature_dim == sum(m for m, ir in irreps[0] if ir.l == 0)

    def test_one_forward_pass_per_call(self, mace_backend):
        counter = ForwardCounter(mace_backend.torch_model, "node_embedding")
        try:
            mace_backend.compute(cuau(), ["energy", "forces", "stress"])
        finally:
            counter.handle.remove()
        assert counter.n == 1

    def test_element_outside_model(self, mace_backend):
        with pytest.raises(UnsupportedElementError, match=r"Si \(Z=14\)"):
            mace_backend.compute(bulk("Si", "diamond", a=5.43))

    def test_foundation_models_need_internet(self, monkeypatch, tmp_path):
        import mace.calculators.foundations_models as fm

        monkeypatch.setattr(fm, "get_cache_dir", lambda: str(tmp_path))
        with pytest.raises(BackendUnavailableError, match="internet.*mace:/path/to/file.model"):
            load_backend("mace-mp:small")
        with pytest.raises(BackendUnavailableError, match="mace-omat"):
            load_backend("mace-omat")

    def test_missing_file(self):
        with pytest.raises(FileNotFoundError, match="nope.model"):
            load_backend("mace:/nope.model")


# --------------------------------------------------------------------------- registry
def test_unknown_spec_lists_valid_ones():
    with pytest.raises(UnknownBackendError, match="(?s)sevenn:7net-0.*mace:/path/to/file.model"):
        load_backend("nequip:foo")


def test_missing_package_says_which_extra():
    from platoscope.backends import available_backends

    missing = [k for k, v in available_backends().items() if not v and k != "orb"]
    if not missing:
        pytest.skip("every backend package is installed here")
    spec = {"mace": "mace:x.model", "sevenn": "sevenn:7net-0", "chgnet": "chgnet"}[missing[0]]
    with pytest.raises(BackendUnavailableError, match=rf"platoscope\[{missing[0]}\]"):
        load_backend(spec)


def test_unsupported_calculator_type():
    from ase.calculators.emt import EMT

    with pytest.raises(UnknownBackendError, match="cannot wrap a .*EMT"):
        load_backend(EMT())


@pytest.mark.backend("sevenn")
def test_sevenn_modal_missing_wrong_or_ignored_is_named(tmp_path):
    """``--model sevenn:7net-mf-0`` (no modal) and ``@FOO`` ended in a ValueError traceback
    from SevenNetCalculator; ``sevenn:7net-0@PBE`` dropped the modal without a word."""
    from click.testing import CliRunner

    from platoscope.cli import main

    for spec, want in (("sevenn:7net-mf-0", "modal argument missing"),
                       ("sevenn:7net-mf-0@FOO", "unknown modal FOO"),
                       ("sevenn:7net-0@PBE", "sevenn:7net-0 has no modalities: leave out @PBE")):
        with pytest.raises(UnknownBackendError, match=want):
            load_backend(spec)
    r = CliRunner().invoke(main, ["embed", str(Path(__file__).parents[1] / "examples" /
                                              "structures" / "Si.cif"),
                                  "--model", "sevenn:7net-mf-0", "--out", str(tmp_path / "e.h5")])
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    assert "give the modal after @, e.g. sevenn:7net-mf-0@PBE" in r.output
    assert load_backend("sevenn:7net-mf-0@PBE").spec == "sevenn:7net-mf-0@PBE"
