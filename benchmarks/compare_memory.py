"""Peak memory of ``platoscope compare`` on two coordinate files of ~100k atoms each.

Method: two real ``platoscope embed`` files of the same structures (e.g. MP-20 train, 9,047
atoms, embedded with CHGNet 0.3.0 and SevenNet-0 on the shipped defaults) are each replicated
``--reps`` times into files of ``reps x`` the atoms: every dataset is tiled, ``structure_index``
is offset by the number of structures per copy, and both files get the same derived
``data_hash`` (sha256 of the source hash and the factor), so ``compare`` accepts them as the
same atoms. The layout, dtypes, K and the number of stored entries per atom are those of a real
file of that size; only the values repeat (retrieval figures of such files mean nothing; the
memory does). Then ``platoscope compare`` runs in a child process; its peak memory is the
largest of the summed RSS of its process tree sampled every 0.1 s (compare's libraries may
start helper processes), ``/usr/bin/time -v`` and ``getrusage(RUSAGE_CHILDREN)``.

    python benchmarks/compare_memory.py A.h5 B.h5 --reps 11 \
        --out results/benchmark_compare_memory.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
LIMIT_GB = 4.0


def replicate(src: Path, dst: Path, reps: int) -> dict:
    """Write ``src`` tiled ``reps`` times to ``dst`` (see the module docstring)."""
    import h5py

    with h5py.File(src, "r") as h, h5py.File(dst, "w") as o:
        n_struct = int(h["structure_index"][()].max()) + 1
        for name, v in h.attrs.items():
            o.attrs[name] = v
        o.attrs["data_hash"] = hashlib.sha256(
            f"{h.attrs['data_hash']} x{reps}".encode()).hexdigest()
        prov = json.loads(h.attrs["provenance"])
        prov["replicated"] = {"source": str(src), "factor": reps,
                              "source_data_hash": str(h.attrs["data_hash"])}
        o.attrs["provenance"] = json.dumps(prov)
        for name, ds in h.items():
            a = ds[()]
            tiled = np.concatenate([a + r * n_struct if name == "structure_index" else a
                                    for r in range(reps)])
            kw = {}
            if ds.compression:
                kw = {"compression": ds.compression, "compression_opts": ds.compression_opts}
            o.create_dataset(name, data=tiled, chunks=ds.chunks and tuple(
                min(c, s) for c, s in zip(ds.chunks, tiled.shape, strict=True)), **kw)
        return {"atoms": len(o["numbers"]), "layout": str(o.attrs.get("platonic_layout"))}


def tree_rss_kb(root: int) -> int:
    """Sum of VmRSS (kB) of ``root`` and its descendants, from /proc (0 where unavailable)."""
    parent: dict[int, int] = {}
    rss: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            status = (d / "status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        parent[int(d.name)] = int(fields.get("PPid", "0").strip() or 0)
        rss[int(d.name)] = int(fields.get("VmRSS", "0 kB").split()[0]) if "VmRSS" in fields else 0
    tree, todo = set(), [root]
    while todo:
        p = todo.pop()
        tree.add(p)
        todo += [c for c, pp in parent.items() if pp == p and c not in tree]
    return sum(rss.get(p, 0) for p in tree)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("files", nargs=2)
    p.add_argument("--reps", type=int, default=11)
    p.add_argument("--max-atoms", type=int, default=None,
                   help="compare --max-atoms (default: compare's own default)")
    p.add_argument("--keep", default=None, help="folder to keep the replicated files in")
    p.add_argument("--out", default=str(REPO / "results" / "benchmark_compare_memory.json"))
    args = p.parse_args()
    work = Path(args.keep or tempfile.mkdtemp())
    work.mkdir(parents=True, exist_ok=True)
    files = []
    info = {}
    for f in args.files:
        dst = work / f"{Path(f).stem}_x{args.reps}.h5"
        info[str(dst.name)] = replicate(Path(f), dst, args.reps)
        info[str(dst.name)]["bytes"] = dst.stat().st_size
        files.append(str(dst))
    cmd = [sys.executable, "-m", "platoscope.cli", "compare", *files, "--out",
           str(work / "compare_out")]
    if args.max_atoms:
        cmd += ["--max-atoms", str(args.max_atoms)]
    timer = ["/usr/bin/time", "-v"] if Path("/usr/bin/time").exists() else []
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    proc = subprocess.Popen(timer + cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    tree_peak = 0  # compare may start helper processes: the sum over the process tree
    while proc.poll() is None:
        tree_peak = max(tree_peak, tree_rss_kb(proc.pid))
        time.sleep(0.1)
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - t0
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    time_v = None
    for line in stderr.splitlines():
        if "Maximum resident set size" in line:
            time_v = int(line.split(":")[-1])
    if proc.returncode:
        print(stdout, stderr, file=sys.stderr)
        raise SystemExit(f"compare failed ({proc.returncode})")
    peak_gb = max(tree_peak, time_v or 0, peak_kb) / 1024 ** 2
    from platoscope.provenance import package_versions

    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                            text=True).stdout.strip()
    res = {"what": "peak RSS of `platoscope compare` on two replicated embed files "
                   "(method: benchmarks/compare_memory.py docstring)",
           "commit": commit, "command": "python " + " ".join(sys.argv),
           "compare_command": " ".join(["platoscope", *cmd[3:]]),
           "sources": args.files, "replication_factor": args.reps, "files": info,
           "peak_rss_gb": round(peak_gb, 3),
           "peak_rss_kb_process_tree_sampled": tree_peak,
           "peak_rss_kb_getrusage_children": peak_kb if peak_kb > before else None,
           "peak_rss_kb_time_v": time_v, "wall_s": round(wall, 1),
           "limit_gb": LIMIT_GB, "met": peak_gb <= LIMIT_GB,
           "loadavg_after": [round(x, 2) for x in os.getloadavg()],
           "versions": package_versions()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res, indent=1))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
