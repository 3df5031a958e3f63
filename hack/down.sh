#!/usr/bin/env bash
# `make down`: delete the kind cluster `make up` created (KONTINUAL_CLUSTER, default kontinual).
set -euo pipefail
CLUSTER=${KONTINUAL_CLUSTER:-kontinual}
command -v kind >/dev/null 2>&1 || { echo "make down: kind not found; nothing to delete" >&2; exit 1; }
if kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
    kind delete cluster --name "$CLUSTER"
else
    echo "make down: no kind cluster named '$CLUSTER'; nothing to do"
fi
