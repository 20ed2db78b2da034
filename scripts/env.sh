# Sourced by the scripts (setup, test, demo, fuzz, package): where pydp is installed and which Python runs it.
#
#   PYDP_PREFIX   the virtual environment pydp is installed into and run from (default /opt/pydp)
#   PYTHON        the interpreter that creates that environment (default Debian's /usr/bin/python3; any
#                 Python >= 3.11, e.g. a pyenv one). If PYTHON is itself the python of a virtual environment and
#                 PYDP_PREFIX is not set, that environment is the prefix: pydp is installed into it and the tests
#                 run with it (a developer's own venv).
#   PYDP_LINKS    where the programs, man pages and bash completion are linked: PYDP_LINKS/bin,
#                 PYDP_LINKS/share/man/man1, PYDP_LINKS/share/bash-completion/completions. Default /usr/local,
#                 but nothing for a developer's venv; PYDP_LINKS= (empty) links nothing.
#
# After sourcing: PYDP_PREFIX, PYDP_PY (the prefix's python), PYDP_BASE_PYTHON, PYDP_LINKS, PYDP_DEV_VENV (0/1).

pydp_resolve_env() {
    PYDP_BASE_PYTHON="${PYTHON:-/usr/bin/python3}"
    PYDP_DEV_VENV=0
    if [ -z "${PYDP_PREFIX:-}" ]; then
        local venv=""
        if [ -n "${PYTHON:-}" ]; then
            venv="$("$PYTHON" -c 'import sys; print(sys.prefix if sys.prefix != sys.base_prefix else "")' 2>/dev/null || true)"
        fi
        if [ -n "$venv" ]; then
            PYDP_PREFIX="$venv"
            PYDP_DEV_VENV=1
        else
            PYDP_PREFIX=/opt/pydp
        fi
    fi
    PYDP_PREFIX="${PYDP_PREFIX%/}"
    if [ -z "${PYDP_LINKS+set}" ]; then
        if [ "$PYDP_DEV_VENV" = 1 ]; then PYDP_LINKS=""; else PYDP_LINKS=/usr/local; fi
    fi
    PYDP_PY="$PYDP_PREFIX/bin/python"
    export PYDP_PREFIX PYDP_LINKS
}

pydp_resolve_env
