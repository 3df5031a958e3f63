# Shared by hack/up.sh, hack/install.sh and hack/uninstall.sh (sourced, not run).
# say/die print steps and errors; tool finds helm or kubectl: $HELM / $KUBECTL, else PATH, else the
# copies the test suite pins (make venv); cluster_knobs reads the knobs install.sh and uninstall.sh
# share. Needs the working directory at the repository root.

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

# The knobs of install.sh and uninstall.sh (see their headers); $1 is KONTINUAL_WAIT's default. Sets
# CONTEXT NAMESPACE EXAMPLE WAIT RELEASE HELM KUBECTL, the context flags kctx (kubectl) / hctx (helm),
# shown (the flag as printed for users) and a kubectl function that passes the context.
cluster_knobs() {
    CONTEXT=${KONTINUAL_CONTEXT:-}
    NAMESPACE=${KONTINUAL_NAMESPACE:-kontinual-system}
    EXAMPLE=${KONTINUAL_EXAMPLE:-examples/minimal.yaml}
    WAIT=${KONTINUAL_WAIT:-$1}
    RELEASE=kontinual
    [[ -f $EXAMPLE ]] || die "$EXAMPLE does not exist"
    HELM=$(tool helm "${HELM:-}")
    KUBECTL=$(tool kubectl "${KUBECTL:-}")
    kctx=() hctx=() shown=""
    if [[ -n $CONTEXT ]]; then kctx=(--context "$CONTEXT") hctx=(--kube-context "$CONTEXT") shown=" --context $CONTEXT"; fi
    kubectl() { "$KUBECTL" ${kctx[@]+"${kctx[@]}"} "$@"; }
}
