#!/usr/bin/env bash
# Build platoscope's two environments (mace-torch and sevenn need different e3nn versions):
#   .venv-sevenn : platoscope[sevenn,dev]  (SevenNet + CHGNet)
#   .venv-mace   : platoscope[mace,dev]    (MACE + CHGNet)
# Usage: scripts/setup_envs.sh [sevenn|mace|all]   (default: all). Re-running is cheap: an
# environment is rebuilt only when its declared dependencies changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
which=${1:-all}
# Rebuild only when the declared dependencies change (not for lint or test settings).
stamp=$("$PY" - <<'PYEOF'
import hashlib, json, tomllib
p = tomllib.load(open("pyproject.toml", "rb"))["project"]
deps = {"deps": p["dependencies"], "extras": p["optional-dependencies"]}
print(hashlib.sha256(json.dumps(deps, sort_keys=True).encode()).hexdigest()[:16])
PYEOF
)

build() {
  local name=$1 extras=$2 venv=.venv-$1
  if [[ -f $venv/.ready && $(cat "$venv/.ready") == "$stamp" ]]; then
    echo "[setup] $venv is up to date"
    return
  fi
  echo "[setup] building $venv (platoscope[$extras]) ..."
  rm -rf "$venv"
  "$PY" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip > "$venv/pip.log" 2>&1
  # CPU build of torch first: a bare 'torch' requirement would pull a multi-GB CUDA build.
  if ! "$venv/bin/python" -m pip install "torch==${TORCH_VERSION:-2.13.0}" >> "$venv/pip.log" 2>&1
  then
    tail -n 40 "$venv/pip.log"; echo "[setup] torch install failed for $venv" >&2; exit 1
  fi
  if ! "$venv/bin/python" -m pip install -e ".[$extras]" >> "$venv/pip.log" 2>&1; then
    tail -n 40 "$venv/pip.log"; echo "[setup] pip failed for $venv (log: $venv/pip.log)" >&2
    exit 1
  fi
  "$venv/bin/python" -c "import platoscope, torch; print('[setup]', '$venv ok: torch', torch.__version__)"
  echo "$stamp" > "$venv/.ready"
}

case $which in
  sevenn) build sevenn sevenn,dev ;;
  mace) build mace mace,dev ;;
  all) build sevenn sevenn,dev; build mace mace,dev ;;
  *) echo "usage: $0 [sevenn|mace|all]" >&2; exit 2 ;;
esac
