#!/usr/bin/env bash
# Install imp with its test extra (transformers 5.24 for parity) and the out-of-tree test plugin
# into .venv, then run the test suite. Extra arguments go to pytest.
. "$(dirname "$0")/setup_env.sh"
pip_once imp-test -e ".[test]"
pip_once toy --no-deps --no-build-isolation ./tests/plugins/toy
exec python -m pytest -q tests "$@"
