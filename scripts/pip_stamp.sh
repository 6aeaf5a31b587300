# Sourced by setup_env.sh: `pip_once NAME ARGS...` runs `pip_q ARGS...` only when .venv's stamp for
# NAME does not already hold the hash of imp's and the toy plugin's pyproject.toml and ARGS, so a
# second set-up on an up-to-date environment starts at once. `rm .venv/.imp-pip-*` forces pip.
pip_stamp_key() {
    { cat pyproject.toml tests/plugins/toy/pyproject.toml 2>/dev/null; printf '%s\n' "$@"; } | sha256sum | cut -d' ' -f1
}

pip_once() {
    local name="$1"; shift
    local stamp=".venv/.imp-pip-$name" key
    key="$(pip_stamp_key "$@")"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$key" ]; then
        return 0
    fi
    pip_q "$@" && printf '%s\n' "$key" > "$stamp"
}
