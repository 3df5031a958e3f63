# Shared by hack/up.sh, hack/install.sh and hack/uninstall.sh (sourced, not run).
# say/die print steps and errors; tool finds helm or kubectl: $HELM / $KUBECTL, else PATH, else the
# copies the test suite pins (make venv). Needs the working directory at the repository root.

say() { printf '\n==> %s\n' "$*"; }
die() { printf '%s: %s\n' "${SCRIPT:-hack}" "$*" >&2; exit 1; }

tool() {
    local name=$1 override=$2
    if [[ -n $override ]]; then echo "$override"; return; fi
    if command -v "$name" >/dev/null 2>&1; then command -v "$name"; return; fi
    if [[ -x .venv/bin/python ]]; then
        .venv/bin/python -c "from tests.support.tools import ${name}_binary; print(${name}_binary())" && return
    fi
    die "$name not found: install it (https://helm.sh, https://kubernetes.io/docs/tasks/tools/) or run 'make venv'"
}
