#!/usr/bin/env bash
# Install imp into .venv and run it.
#   ./scripts/demo.sh                         tiny random demo checkpoint (its text is noise)
#   ./scripts/demo.sh --model PATH [args...]  a real checkpoint; any `imp run` arguments pass through
. "$(dirname "$0")/setup_env.sh"
pip_once imp -e .
args=("$@")
if [[ " ${args[*]-} " != *" --model "* && " ${args[*]-} " != *" -m "* ]]; then
    if [ ! -f demo-checkpoint/config.json ]; then
        python -m imp_mistral.demo demo-checkpoint
    fi
    args=(--model demo-checkpoint "${args[@]}")
fi
if [[ " ${args[*]} " != *" --prompt "* && " ${args[*]} " != *" -p "* ]]; then
    args+=(--prompt "Write a haiku about the sea.")
fi
exec imp run "${args[@]}"
