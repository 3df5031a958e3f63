#!/usr/bin/env bash
# A real Kubernetes control plane on 127.0.0.1 for tests: build | up DIR | down DIR.
# Thin wrapper: the logic is the Python package tests/cluster (stdlib only).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
python="${PYTHON:-}"
if [[ -z "$python" ]]; then
    if [[ -x "$root/.venv/bin/python" ]]; then python="$root/.venv/bin/python"; else python=python3; fi
fi
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
exec "$python" -m tests.cluster "$@"
