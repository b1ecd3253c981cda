"""Tests of platoscope.readers on the repository's copy of the data (data/, no mocks)."""

from __future__ import annotations

import ast
import csv
import gzip
import json
import logging
import re
from collections import Counter
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase.formula import Formula
from ase.units import GPa

from platoscope.errors import CorruptFileError, InvalidStructureError, PlatoscopeError
from platoscope.readers import read_frames, read_structures, structures_hash

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data"
MP20_TRAIN = DATA / "mp20_partial" / "train.csv"
MP20_VAL = DATA / "mp20_partial" / "val.csv"
PEROV5 = DATA / "perov5" / "val.csv"
CARBON24 = DATA / "carbon24" / "val.csv"
LI_TEST = DATA / "mlearn" / "Li_test.json"
SI_TEST = DATA / "mlearn" / "Si_test.json"
# structures_hash of data/mlearn/Li_test.json (parsed here without ASE's CIF code): a change means
# the reader, the hash or the data changed.
LI_TEST_HASH = "4bada1ca920ed91a"

NACL_CIF = """data_NaCl
_cell_length_a 5.64
_cell_length_b 5.64
_cell_length_c 5.64
_cell_angle_alpha 90
_cell_angle_beta 90
_cell_angle_gamma 90
_symmetry_space_group_name_H-M 'F m -3 m'
_symmetry_Int_Tables_number 225
loop_
 _atom_site_type_symbol
 _atom_site_label
 _atom_site_fract_x
 _atom_site_fract_y
 _atom_site_fract_z
  Na Na1 0.0 0.0 0.0
  Cl Cl1 0.5 0.5 0.5
"""

DISORDERED_CIF = """data_CsClBr
_cell_length_a 4.0
_cell_length_b 4.0
_cell_length_c 4.0
_cell_angle_alpha 90
_cell_angle_beta 90
_cell_angle_gamma 90
_symmetry_space_group_name_H-M 'P 1'
loop_
 _symmetry_equiv_pos_as_xyz
  'x, y, z'
loop_
 _atom_site_type_symbol
 _atom_site_label
 _atom_site_fract_x
 _atom_site_fract_y
 _atom_site_fract_z
 _atom_site_occupancy
  Cs Cs0 0.0 0.0 0.0 1
  Cl Cl1 0.5 0.5 0.5 0.5
"""


# ------------------------------------------------------------------------------------ helpers


def _csv_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    return rows[0], rows[1:]


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        csv.writer(fh, lineterminator="\n").writerows([header, *rows])
    return path


def _cif_sites(cif: str) -> tuple[list[str], np.ndarray]:
    """Symbols and fractional coordinates of the _atom_site loop of a pymatgen P1 CIF."""
    lines = [ln.split() for ln in cif.splitlines()]
    sites = [ln for ln in lines if len(ln) == 7 and re.fullmatch(r"[A-Z][a-z]?\d+", ln[1])]
    return [s[0] for s in sites], np.array([[float(x) for x in s[3:6]] for s in sites])


@pytest.fixture(scope="module")
def mp20_train():
    return read_structures(MP20_TRAIN)


@pytest.fixture(scope="module")
def mp20_val():
    return read_structures(MP20_VAL)


@pytest.fixture(scope="module")
def li_test():
    return read_structures(LI_TEST)


@pytest.fixture(scope="module")
def si_test():
    return read_structures(SI_TEST)


# ------------------------------------------------------------------------- the data folder


def test_data_folder_is_complete_small_and_attributed():
    files = [p for p in DATA.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 8 * 1024 * 1024
    for rel in ["PROVENANCE.md", "LICENSE-CDVAE", "mlearn/LICENSE", "mp20_partial/README.md",
                "perov5/README.md", "carbon24/README.md", "mlearn/Li_training.json.gz",
                "mlearn/Si_training.json.gz"]:
        assert (DATA / rel).is_file(), rel
    prov = (DATA / "PROVENANCE.md").read_text(encoding="utf-8")
    for needle in ["CC-BY-4.0", "MIT", "BSD-3-Clause", "Jain et al.", "Castelli", "Pickard",
                   "Zuo et al.", "builders/copy_data.py"]:
        assert needle in prov, needle
    assert (REPO / "builders" / "copy_data.py").is_file()


# ---------------------------------------------------------------------------------- CDVAE CSV


@pytest.mark.parametrize(("path", "n", "n_atoms", "n_elements", "sizes"), [
    (MP20_TRAIN, 847, 9047, 85, (1, 20)),
    (MP20_VAL, 123, 1226, 79, (2, 20)),
    (PEROV5, 500, 2500, 56, (5, 5)),
    (CARBON24, 300, 2750, 1, (6, 22)),
])
def test_csv_counts(path, n, n_atoms, n_elements, sizes):
    structures = read_structures(path)
    lengths = [len(a) for a in structures]
    assert len(structures) == n
    assert sum(lengths) == n_atoms
    assert (min(lengths), max(lengths)) == sizes
    assert len({s for a in structures for s in a.get_chemical_symbols()}) == n_elements
    assert [a.info["source_index"] for a in structures] == list(range(n))
    assert {a.info["source"] for a in structures} == {f"{path.parent.name}/{path.name}"}
    assert all(a.pbc.all() and a.calc is None for a in structures)


def test_csv_labels_and_columns(mp20_train):
    header, rows = _csv_rows(MP20_TRAIN)
    ids = [r[header.index("material_id")] for r in rows]
    assert [a.info["material_id"] for a in mp20_train] == ids
    first = mp20_train[0]
    assert first.info["material_id"] == "mp-3507"
    assert first.info["label"] == first.info["pretty_formula"] == "Lu(SiPd)2"
    assert first.info["spacegroup.number"] == 139
    assert first.info["csv_index"] == 5830
    assert isinstance(first.info["formation_energy_per_atom"], float)
    for key in ("cif", "elements", "spacegroup", "occupancy", "unit_cell"):
        assert key not in first.info
    assert "spacegroup_kinds" not in first.arrays
    # the CSV's element list agrees with the atoms
    elements = header.index("elements")
    for atoms, row in zip(mp20_train, rows, strict=True):
        assert set(atoms.get_chemical_symbols()) == set(ast.literal_eval(row[elements]))


def test_perov5_formulas_match_atoms():
    for atoms in read_structures(PEROV5):
        assert Counter(atoms.get_chemical_symbols()) == Formula(atoms.info["formula"]).count()
        assert isinstance(atoms.info["material_id"], str)


def test_carbon24_is_carbon():
    structures = read_structures(CARBON24)
    assert {s for a in structures for s in a.get_chemical_symbols()} == {"C"}
    assert all(isinstance(a.info["energy_per_atom"], float) for a in structures)
    assert structures[0].info["label"] == structures[0].info["material_id"]


def test_csv_atom_order_is_the_cif_site_order(mp20_val):
    _, rows = _csv_rows(MP20_VAL)
    for atoms, row in zip(mp20_val, rows, strict=True):
        symbols, frac = _cif_sites(row[-2])
        assert atoms.get_chemical_symbols() == symbols
        diff = atoms.get_scaled_positions(wrap=False) - frac
        np.testing.assert_allclose(diff - np.round(diff), 0.0, atol=1e-6)


def test_cif_with_symmetry_expands_in_ase_order(tmp_path):
    path = tmp_path / "nacl.cif"
    path.write_text(NACL_CIF)
    first, second = read_structures(path), read_structures(path)
    atoms = first[0]
    assert atoms.get_chemical_symbols() == ["Na"] * 4 + ["Cl"] * 4
    np.testing.assert_allclose(atoms.get_scaled_positions()[:4],
                               [[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]],
                               atol=1e-12)
    assert structures_hash(first) == structures_hash(second)
    assert "spacegroup" not in atoms.info and "spacegroup_kinds" not in atoms.arrays


# ------------------------------------------------------------------------------ mlearn JSON


@pytest.mark.parametrize(("path", "n", "n_atoms", "element", "groups"), [
    (LI_TEST, 29, 1320, "Li", {"AIMD-NVT": 20, "Vacancy": 4, "Elastic": 3, "Surface": 2}),
    (SI_TEST, 25, 1525, "Si", {"AIMD-NVT": 10, "Vacancy": 7, "Elastic": 6, "Surface": 2}),
    (DATA / "mlearn" / "Li_training.json.gz", 241, 11576, "Li",
     {"AIMD-NVT": 172, "Vacancy": 36, "Elastic": 22, "Surface": 11}),
    (DATA / "mlearn" / "Si_training.json.gz", 214, 13233, "Si",
     {"AIMD-NVT": 90, "Vacancy": 57, "Elastic": 55, "Surface": 12}),
])
def test_mlearn_counts_and_groups(path, n, n_atoms, element, groups):
    structures = read_structures(path)
    assert len(structures) == n
    assert sum(len(a) for a in structures) == n_atoms
    assert {s for a in structures for s in a.get_chemical_symbols()} == {element}
    assert Counter(a.info["config_type"] for a in structures) == groups
    split = "test" if "test" in path.name else "train"
    assert {a.info["split"] for a in structures} == {split}
    assert all(a.pbc.all() for a in structures)


@pytest.mark.parametrize(("name", "e_per_atom"), [("Li", (-1.95, -1.70)), ("Si", (-5.45, -4.5))])
def test_mlearn_dft_labels_shapes_and_units(name, e_per_atom, request):
    structures = request.getfixturevalue(f"{name.lower()}_test")
    raw = json.loads((DATA / "mlearn" / f"{name}_test.json").read_text())
    for atoms, doc in zip(structures, raw, strict=True):
        forces = atoms.arrays["dft_forces"]
        assert forces.shape == (len(atoms), 3) and forces.dtype == np.float64
        np.testing.assert_array_equal(forces, doc["outputs"]["forces"])
        # sites in file order: positions are the stored Cartesian coordinates (Å)
        xyz = np.array([s["xyz"] for s in doc["structure"]["sites"]])
        np.testing.assert_allclose(atoms.positions, xyz, atol=1e-9)
        # eV/Å: forces of a periodic DFT cell sum to ~0 and stay below ~10 eV/Å
        assert np.abs(forces.sum(axis=0)).max() < 1e-3
        assert np.abs(forces).max() < 10.0
        # eV per cell: the PBE cohesive scale per atom
        assert e_per_atom[0] < atoms.info["dft_energy"] / len(atoms) < e_per_atom[1]
        assert atoms.info["label"] == doc["description"]
        # DFT labels never pose as a model's results
        assert atoms.calc is None
        assert "energy" not in atoms.info and "forces" not in atoms.arrays


def test_mlearn_stress_as_given_and_in_ase_convention(si_test, li_test):
    for atoms in [*si_test, *li_test]:
        kbar = atoms.info["dft_stress"]
        assert kbar.shape == (6,)
        np.testing.assert_allclose(atoms.info["dft_stress_ase"],
                                   -0.1 * GPa * kbar[[0, 1, 2, 4, 5, 3]], rtol=1e-12)
    # Si 2x2x2 cell compressed 6% along x: compressive, so VASP xx > 0 and ASE xx < 0
    (squeezed,) = [a for a in si_test if a.info["label"].endswith("mode 0, strain -0.06")]
    assert squeezed.cell[0, 0] < squeezed.cell[1, 1]
    assert squeezed.info["dft_stress"][0] > 50.0
    assert squeezed.info["dft_stress_ase"][0] < -50.0 * 0.1 * GPa
    # Li cell sheared in yz (c gains a y component): the ASE yz component carries the shear
    (sheared,) = [a for a in li_test if a.info["label"].endswith("mode 4, strain 0.01")]
    assert sheared.cell[2, 1] > 0.0
    ase_stress = sheared.info["dft_stress_ase"]
    assert ase_stress[3] > 0.0 and ase_stress[4] == 0.0 and ase_stress[5] == 0.0


# ---------------------------------------------------------------------- determinism and hash


def test_reading_twice_gives_identical_arrays_and_hash(mp20_val):
    again = read_structures(MP20_VAL)
    assert len(again) == len(mp20_val)
    for a, b in zip(mp20_val, again, strict=True):
        np.testing.assert_array_equal(a.numbers, b.numbers)
        np.testing.assert_array_equal(a.positions, b.positions)
        np.testing.assert_array_equal(a.cell.array, b.cell.array)
        assert a.info == b.info
    digest = structures_hash(mp20_val)
    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    assert structures_hash(again) == digest


def test_hash_is_pinned_and_sensitive(li_test):
    assert structures_hash(li_test).startswith(LI_TEST_HASH)
    assert structures_hash(read_structures(LI_TEST)) == structures_hash(li_test)
    copies = [a.copy() for a in li_test]
    base = structures_hash(copies)
    copies[3].positions[0] += 1e-10  # far below the 1e-6 Å rounding: unchanged
    copies[3].positions[0] -= 1e-10
    assert structures_hash(copies) == base
    moved = [a.copy() for a in li_test]
    moved[3].positions[5, 1] += 1e-3
    assert structures_hash(moved) != base
    assert structures_hash(li_test[::-1]) != base
    flipped = [a.copy() for a in li_test]
    flipped[0].pbc = [True, True, False]
    assert structures_hash(flipped) != base
    strained = [a.copy() for a in li_test]
    strained[0].cell[0, 0] += 1e-3
    assert structures_hash(strained) != base
    assert structures_hash(li_test[:2]) != structures_hash(li_test[:3])
    assert structures_hash([]) == structures_hash([])


def test_hash_ignores_negative_zero(li_test):
    a = li_test[0].copy()
    b = a.copy()
    a.positions[0] = [0.0, 0.0, 0.0]
    b.positions[0] = [-0.0, -1e-9, 0.0]  # rounds to -0.0
    assert structures_hash([a]) == structures_hash([b])


# ------------------------------------------------------------------------------ index, limit


def test_index_and_limit_select_rows():
    def picked(**kw):
        return [a.info["source_index"] for a in read_structures(MP20_VAL, **kw)]

    assert picked(index="10:20") == list(range(10, 20))
    assert picked(index="-1") == [122]
    assert picked(index=5) == [5]
    assert picked(index=slice(0, 10, 3)) == [0, 3, 6, 9]
    assert picked(limit=4) == [0, 1, 2, 3]
    assert picked(index="100:", limit=3) == [100, 101, 102]
    assert picked(index="5:5") == []
    with pytest.raises(PlatoscopeError, match=r"val\.csv.*index 500 out of range"):
        read_structures(MP20_VAL, index=500)
    assert [a.info["source_index"] for a in read_structures(LI_TEST, index="-2:")] == [27, 28]


def test_ase_formats_roundtrip_and_keep_origin(tmp_path, mp20_val):
    subset = mp20_val[:10]
    ase.io.write(tmp_path / "val10.traj", subset)
    ase.io.write(tmp_path / "val10.extxyz", subset)
    traj = read_structures(tmp_path / "val10.traj")
    assert structures_hash(traj) == structures_hash(subset)
    xyz = read_structures(tmp_path / "val10.extxyz")
    for a, b in zip(subset, xyz, strict=True):
        np.testing.assert_array_equal(a.numbers, b.numbers)
        np.testing.assert_allclose(a.positions, b.positions, atol=1e-7)
        assert b.info["material_id"] == a.info["material_id"]
        assert b.info["origin_source"] == "mp20_partial/val.csv"
        assert b.info["origin_source_index"] == a.info["source_index"]
        assert b.info["source"] == f"{tmp_path.name}/val10.extxyz"
    assert [a.info["source_index"] for a in xyz] == list(range(10))
    for path in (tmp_path / "val10.traj", tmp_path / "val10.extxyz"):
        assert [a.info["source_index"] for a in read_structures(path, index="-3:")] == [7, 8, 9]
        assert [a.info["source_index"] for a in read_structures(path, index=2)] == [2]
        assert [a.info["source_index"] for a in read_structures(path, index="1::4")] == [1, 5, 9]
        assert [a.info["source_index"] for a in read_structures(path, limit=2)] == [0, 1]
        with pytest.raises(PlatoscopeError, match="index 10 out of range"):
            read_structures(path, index=10)


# ------------------------------------------------------------------------------- bad input


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nothere\.csv: no such file"):
        read_structures(tmp_path / "nothere.csv")


def test_unknown_format(tmp_path):
    path = tmp_path / "structures.foo"
    path.write_text("no structure here\n")
    with pytest.raises(CorruptFileError, match=r"structures\.foo.*unknown file format"):
        read_structures(path)


def test_garbage_in_a_known_format(tmp_path):
    path = tmp_path / "junk.xyz"
    path.write_text("hello\nworld\n")
    for on_error in ("raise", "skip"):
        with pytest.raises(CorruptFileError, match=r"junk\.xyz"):
            read_structures(path, on_error=on_error)


@pytest.mark.parametrize("name", ["empty.csv", "empty.json", "empty.extxyz", "empty.json.gz"])
def test_empty_file(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"")
    with pytest.raises(CorruptFileError, match=rf"{re.escape(name)}: file is empty"):
        read_structures(path)


def test_csv_with_header_only(tmp_path):
    header, _ = _csv_rows(MP20_VAL)
    path = _write_csv(tmp_path / "header.csv", header, [])
    with pytest.raises(CorruptFileError, match=r"header\.csv.*no structures"):
        read_structures(path)


def test_csv_without_cif_column(tmp_path):
    header, rows = _csv_rows(MP20_VAL)
    keep = [i for i, h in enumerate(header) if h != "cif"]
    path = _write_csv(tmp_path / "nocif.csv", [header[i] for i in keep],
                      [[r[i] for i in keep] for r in rows[:3]])
    with pytest.raises(CorruptFileError, match=r"nocif\.csv.*no 'cif' column"):
        read_structures(path)


@pytest.fixture
def bad_row_csv(tmp_path):
    """The first 4 rows of MP-20 val, row 2's CIF replaced by garbage."""
    header, rows = _csv_rows(MP20_VAL)
    rows = [list(r) for r in rows[:4]]
    rows[2][header.index("cif")] = "data_broken\n_cell_length_a oops\nloop_\n _atom_site_label\n"
    return _write_csv(tmp_path / "badrow.csv", header, rows), rows[2][header.index("material_id")]


def test_bad_cif_row_raises_naming_row_and_id(bad_row_csv):
    path, material_id = bad_row_csv
    with pytest.raises(CorruptFileError,
                       match=rf"badrow\.csv: row 2 \(material_id {re.escape(material_id)}\)"):
        read_structures(path)
    assert len(read_structures(path, limit=2)) == 2  # rows before it read fine


def test_a_parser_assert_without_message_names_the_check_that_failed(tmp_path):
    """ASE's parsers stop on bare asserts (no message): the error then names the failed check
    (its source line), never a bare 'AssertionError: '."""
    import importlib.util

    from platoscope.readers import _reason

    src = tmp_path / "fakeio" / "parser.py"  # a module pytest does not rewrite, as ASE's
    src.parent.mkdir()
    src.write_text("def parse(line):\n    assert line.startswith('data_')\n")
    spec = importlib.util.spec_from_file_location("fakeio_parser", src)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    with pytest.raises(AssertionError) as bare:
        mod.parse("_cell_length_a 4.0")
    assert str(bare.value) == ""
    assert _reason(bare.value) == (f"AssertionError in {'/'.join(src.parts[-3:])} line 2: "
                                   "assert line.startswith('data_')")
    assert _reason(ValueError("bad cell")) == "ValueError: bad cell"
    path = tmp_path / "no_data_block.cif"
    path.write_text("_cell_length_a 4.0\n")  # a CIF must open with a data_ block
    with pytest.raises(CorruptFileError, match=r"no_data_block\.cif: cannot be read as cif: ") \
            as err:
        read_structures(path)
    detail = str(err.value).split("cannot be read as cif: ", 1)[1]
    assert detail.split(":", 1)[-1].strip()  # whatever ASE raises, some detail follows


def test_bad_cif_row_skip_mode(bad_row_csv, caplog):
    path, material_id = bad_row_csv
    with caplog.at_level(logging.WARNING, logger="platoscope.readers"):
        structures = read_structures(path, on_error="skip")
    assert [a.info["source_index"] for a in structures] == [0, 1, 3]
    assert len(structures.skipped) == 1
    index, message = structures.skipped[0]
    assert index == 2 and material_id in message
    assert "badrow.csv" in caplog.text and "skipped 1 of 4" in caplog.text
    with pytest.raises(ValueError, match="on_error"):
        read_structures(path, on_error="ignore")


def test_disordered_cif_row_is_invalid(tmp_path):
    header, rows = _csv_rows(MP20_VAL)
    rows = [list(r) for r in rows[:2]]
    rows[1][header.index("cif")] = DISORDERED_CIF
    path = _write_csv(tmp_path / "disordered.csv", header, rows)
    with pytest.raises(InvalidStructureError, match=r"disordered\.csv: row 1 .*disordered"):
        read_structures(path)
    skipped = read_structures(path, on_error="skip")
    assert len(skipped) == 1 and skipped.skipped[0][0] == 1


def test_bad_mlearn_entries(tmp_path):
    docs = json.loads(LI_TEST.read_text())[:3]
    docs[1]["outputs"]["forces"] = docs[1]["outputs"]["forces"][:-1]
    path = tmp_path / "bad_forces.json"
    path.write_text(json.dumps(docs))
    with pytest.raises(CorruptFileError, match=r"bad_forces\.json: entry 1: forces have shape"):
        read_structures(path)
    assert [a.info["source_index"] for a in read_structures(path, on_error="skip")] == [0, 2]

    docs = json.loads(LI_TEST.read_text())[:2]
    docs[0]["structure"]["sites"][0]["species"] = [{"element": "Li", "occu": 0.5},
                                                   {"element": "Na", "occu": 0.5}]
    path = tmp_path / "mixed.json"
    path.write_text(json.dumps(docs))
    with pytest.raises(InvalidStructureError, match=r"mixed\.json: entry 0: site 0"):
        read_structures(path)

    path = tmp_path / "odd.json"
    path.write_text(json.dumps([{"hello": 1}]))
    with pytest.raises(CorruptFileError, match=r"odd\.json: entry 0: neither"):
        read_structures(path)

    path = tmp_path / "nothing.json"
    path.write_text("[]")
    with pytest.raises(CorruptFileError, match=r"nothing\.json.*no structures"):
        read_structures(path)

    path = tmp_path / "broken.json"
    path.write_text(LI_TEST.read_text()[:5000])
    with pytest.raises(CorruptFileError, match=r"broken\.json: not valid JSON"):
        read_structures(path)


def test_single_pymatgen_structure_dict(tmp_path):
    doc = json.loads(SI_TEST.read_text())[4]
    path = tmp_path / "one.json"
    path.write_text(json.dumps(doc["structure"]))
    (atoms,) = read_structures(path)
    assert len(atoms) == doc["num_atoms"] and "dft_energy" not in atoms.info
    assert atoms.info["source_index"] == 0


@pytest.fixture
def truncated_extxyz(tmp_path, mp20_val):
    """Five frames, the file cut inside frame 2 (as a crashed MD run leaves it)."""
    path = tmp_path / "run.extxyz"
    ase.io.write(path, mp20_val[:5])
    text = path.read_text()
    starts = [m.start() for m in re.finditer(r"(?m)^\d+\n", text)]
    path.write_text(text[:starts[2] + (starts[3] - starts[2]) // 2])
    return path


def test_truncated_trajectory(truncated_extxyz):
    with pytest.raises(CorruptFileError, match=r"run\.extxyz: frame 2 and any after it"):
        read_structures(truncated_extxyz)
    partial = read_structures(truncated_extxyz, on_error="skip")
    assert [a.info["source_index"] for a in partial] == [0, 1]
    assert partial.skipped[0][0] == 2
    frames, skipped = read_frames(truncated_extxyz)
    assert len(frames) == 2 and len(skipped) == 1 and "frame 2" in skipped[0]
    frames, skipped = read_frames(truncated_extxyz, index=":2")
    assert len(frames) == 2 and skipped == []


def test_invalid_frame_skip_and_stop(tmp_path, mp20_val):
    frames = [a.copy() for a in mp20_val[:4]]
    frames[1].positions[0, 0] = np.nan
    path = tmp_path / "nan.extxyz"
    ase.io.write(path, frames)
    with pytest.raises(InvalidStructureError, match=r"nan\.extxyz: frame 1: NaN"):
        read_structures(path)
    assert [a.info["source_index"] for a in read_structures(path, on_error="skip")] == [0, 2, 3]
    kept, skipped = read_frames(path, on_error="stop")
    assert len(kept) == 1 and "frame 1" in skipped[0]
    kept, skipped = read_frames(path)  # default: the bad frame is left out, the rest read
    assert [a.info["source_index"] for a in kept] == [0, 2, 3]
    assert len(skipped) == 1 and "frame 1: NaN" in skipped[0]
    with pytest.raises(InvalidStructureError, match="frame 1"):
        read_frames(path, on_error="raise")


def test_gzipped_csv_reads_like_the_plain_one(tmp_path):
    """A gzip-compressed CSV reads like the plain one (str paths work too)."""
    path = tmp_path / "val.csv.gz"
    path.write_bytes(gzip.compress(MP20_VAL.read_bytes()))
    plain = read_structures(str(MP20_VAL), index=":20")
    packed = read_structures(str(path), index=":20")
    assert structures_hash(packed) == structures_hash(plain)
    assert packed[0].info["source"] == f"{tmp_path.name}/val.csv.gz"


def test_source_names_parent_folder_however_the_path_is_given(monkeypatch):
    monkeypatch.chdir(MP20_VAL.parent)
    (atoms,) = read_structures("val.csv", index=0)
    assert atoms.info["source"] == "mp20_partial/val.csv"
