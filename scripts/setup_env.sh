# Sourced by demo.sh and test.sh: create .venv (once) and install imp into it.
# torch is pinned to 2.13.0 here (on the project's machines that is a local CPU build; an
# unpinned install would pull several GB of CUDA packages). Users with their own torch set
# IMP_TORCH=skip (keep the torch already importable) or IMP_TORCH='torch==X.Y' .
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
. .venv/bin/activate
pip_q() {
    local out
    if ! out=$(python -m pip install -q --disable-pip-version-check "$@" 2>&1); then
        echo "$out" >&2
        return 1
    fi
    grep -v -e "^WARNING: Location" -e "^$" <<<"$out" >&2 || true
}
. "$ROOT/scripts/pip_stamp.sh"
if [ "${IMP_TORCH:-}" != "skip" ]; then
    pip_once torch "${IMP_TORCH:-torch==2.13.0}" numpy
fi
python -W ignore -c "import torch" || { echo "torch is not importable (set IMP_TORCH or install it)" >&2; exit 1; }
