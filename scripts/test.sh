#!/usr/bin/env bash
# Run the whole test suite in both environments (building them first if needed), plus ruff.
# Each environment *requires* its backends: a backend that fails to import fails the run
# instead of skipping. Extra arguments go to pytest, e.g. scripts/test.sh -x -k calculator
set -uo pipefail
cd "$(dirname "$0")/.."
scripts/setup_envs.sh all || exit 1
export MPLBACKEND=Agg
status=0
echo "=== ruff ==="
.venv-sevenn/bin/ruff check src tests scripts research builders benchmarks examples || status=1
for env in sevenn mace; do
  echo "=== tests in .venv-$env (requires chgnet,$env) ==="
  other=$([ $env = sevenn ] && echo mace || echo sevenn)
  PLATOSCOPE_REQUIRE_BACKENDS="chgnet,$env" PLATOSCOPE_OTHER_PYTHON="$PWD/.venv-$other/bin/python" \
    .venv-$env/bin/python -m pytest "$@" || status=1
done
exit $status
