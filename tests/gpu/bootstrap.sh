# Source on the GPU machine (the device tool's copy of the repo is the cwd):
#   . tests/gpu/bootstrap.sh
# Installs the carried wheels (.whl/: pydantic, loguru, platformdirs, gguf, ...) into /tmp/site and
# makes imp importable there as if installed: links to the package folders plus a dist-info with
# imp's entry points, so the family plugins are discovered exactly as on a real install.
set -e
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
ln -sfn "$PWD/imp_core" /tmp/site/imp_core
ln -sfn "$PWD/kernels" /tmp/site/imp_kernels
for fam in mistral qwen36 gemma4; do ln -sfn "$PWD/plugins/$fam" "/tmp/site/imp_$fam"; done
mkdir -p /tmp/site/imp_llm-0.1.0.dist-info
printf 'Metadata-Version: 2.1\nName: imp-llm\nVersion: 0.1.0\n' > /tmp/site/imp_llm-0.1.0.dist-info/METADATA
python3 - <<'PY'
import tomllib
eps = tomllib.load(open("pyproject.toml", "rb"))["project"]["entry-points"]["imp.plugins"]
with open("/tmp/site/imp_llm-0.1.0.dist-info/entry_points.txt", "w") as f:
    f.write("[imp.plugins]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()))
PY
export PYTHONPATH=/tmp/site:$PWD
export PYTHONUNBUFFERED=1
set +e
