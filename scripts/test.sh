#!/usr/bin/env bash
# Install imp with its test extra (transformers 5.24 for parity) and the out-of-tree test plugin
# into .venv, then run the test suite on IMP_TEST_WORKERS pytest-xdist workers (default 2: most of
# the time is the CUDA simulator, one CPU-bound Python process per test). Extra arguments go to pytest.
. "$(dirname "$0")/setup_env.sh"
pip_once imp-test -e ".[test]"
pip_once toy --no-deps --no-build-isolation ./tests/plugins/toy
exec python -m pytest -q -n "${IMP_TEST_WORKERS:-2}" tests "$@"
