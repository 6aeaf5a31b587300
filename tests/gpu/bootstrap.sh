# Source on the GPU machine (the device tool's copy of the repo is the cwd):
#   . tests/gpu/bootstrap.sh
# Installs the carried wheels (.whl/: pydantic, loguru, platformdirs, gguf, ...) and imp itself
# (with its entry points, so the family plugins are discovered) into /tmp/site.
set -e
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --no-cache-dir --target /tmp/site . >/dev/null
export PYTHONPATH=/tmp/site
export PYTHONUNBUFFERED=1
set +e
