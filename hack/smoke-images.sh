#!/usr/bin/env bash
# Build the four images and run each the way the operator runs it (uid 10001, read-only root,
# /tmp as tmpfs, no capabilities): the trainer trains 2 epochs at 64 px on a synthetic dataset
# into a models volume, the server serves that model with the config `kontinual render` makes,
# and an image is sent to it. Prints the image sizes. Needs docker and the test venv (make venv).
# PYTHON_IMAGE overrides the base image (e.g. a locally made one where no registry is reachable);
# TORCH_VARIANT (cpu|cuda) picks the torch of the trainer and the server (one shared layer).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
[[ -x $PY ]] || { echo "smoke-images: run 'make venv' first (test data comes from tests/support)" >&2; exit 1; }
TAG=smoke
args=()
[[ -n ${PYTHON_IMAGE:-} ]] && args+=(--build-arg "PYTHON_IMAGE=$PYTHON_IMAGE")

work=$(mktemp -d)
cleanup() { docker rm -f kontinual-smoke-server kontinual-smoke-openvino >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT

export DOCKER_BUILDKIT=1  # the per-Dockerfile .dockerignore files need BuildKit
docker build -f images/operator/Dockerfile ${args[@]+"${args[@]}"} -t "kontinual/operator:$TAG" .
docker build -f images/server/Dockerfile ${args[@]+"${args[@]}"} --build-arg "TORCH_VARIANT=${TORCH_VARIANT:-cpu}" \
    -t "kontinual/server:$TAG" .
docker build -f images/server-openvino/Dockerfile ${args[@]+"${args[@]}"} -t "kontinual/server-openvino:$TAG" .
docker build -f images/trainer/Dockerfile ${args[@]+"${args[@]}"} --build-arg "TORCH_VARIANT=${TORCH_VARIANT:-cpu}" \
    -t "kontinual/trainer:$TAG" .

hardened=(--read-only --tmpfs /tmp --user 10001:10001 --cap-drop ALL --security-opt no-new-privileges -e HOME=/tmp)
echo "==> operator"
docker run --rm "${hardened[@]}" "kontinual/operator:$TAG" --help >/dev/null
[[ $(docker run --rm --entrypoint id "kontinual/operator:$TAG" -u) == 10001 ]]

echo "==> trainer: 2 epochs at 64 px on a synthetic dataset"
NM_DISABLE_ANALYTICS=1 $PY -c "import sys; from pathlib import Path; sys.path.insert(0, '.'); \
from tests.support.synthetic import make_dataset; make_dataset(Path(sys.argv[1]))" "$work/data"
mkdir -p "$work/models" && touch "$work/result.json" && chmod -R a+rwX "$work"
docker run --rm "${hardened[@]}" -v "$work/data:/data:ro" -v "$work/models:/models" \
    -v "$work/result.json:/dev/termination-log" "kontinual/trainer:$TAG" \
    --dataset-dir /data --base-weights yolov5n.yaml --epochs 2 --image-size 64 --batch-size 4 \
    --workers 0 --device cpu --output-dir /models --version 1
grep -q '"status":"Succeeded"' "$work/result.json" || { cat "$work/result.json"; exit 1; }
cat "$work/result.json"; echo

echo "==> server: serving the trained model with the operator's rendered config"
mkdir -p "$work/config"
sed 's|uri: zoo:.*|uri: pvc://demo-models/v1/model.onnx|' examples/minimal.yaml > "$work/cr.yaml"
.venv/bin/kontinual render -f "$work/cr.yaml" | $PY -c "import sys, yaml; \
[open(sys.argv[1], 'w').write(d['data']['server.yaml']) for d in yaml.safe_load_all(sys.stdin) \
 if d and d['kind'] == 'ConfigMap']" "$work/config/server.yaml"
port=$($PY -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
docker run -d --name kontinual-smoke-server "${hardened[@]}" -v "$work/models:/models:ro" \
    -v "$work/config:/etc/kontinual:ro" -p "127.0.0.1:$port:5543" "kontinual/server:$TAG" >/dev/null
for _ in $(seq 120); do curl -sf "http://127.0.0.1:$port/v2/health/ready" >/dev/null && break; sleep 1; done
$PY -c "from PIL import Image; Image.new('RGB', (64, 64), (120, 60, 30)).save('$work/img.jpg')"
curl -sf -F "request=@$work/img.jpg" "http://127.0.0.1:$port/v2/models/demo/infer/from_files" | grep -q '"boxes"'
echo "served: POST /v2/models/demo/infer/from_files -> 200 with boxes"

echo "==> server-openvino: the same model and route with spec.serving.runtime openvino"
mkdir -p "$work/config-openvino"
printf '  serving:\n    runtime: openvino\n' >> "$work/cr.yaml"
.venv/bin/kontinual render -f "$work/cr.yaml" | $PY -c "import sys, yaml; \
[open(sys.argv[1], 'w').write(d['data']['server.yaml']) for d in yaml.safe_load_all(sys.stdin) \
 if d and d['kind'] == 'ConfigMap']" "$work/config-openvino/server.yaml"
grep -q '^runtime: openvino' "$work/config-openvino/server.yaml"
port=$($PY -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
docker run -d --name kontinual-smoke-openvino "${hardened[@]}" -v "$work/models:/models:ro" \
    -v "$work/config-openvino:/etc/kontinual:ro" -p "127.0.0.1:$port:5543" "kontinual/server-openvino:$TAG" >/dev/null
for _ in $(seq 120); do curl -sf "http://127.0.0.1:$port/v2/models/demo/ready" >/dev/null && break; sleep 1; done
curl -sf -F "request=@$work/img.jpg" "http://127.0.0.1:$port/v2/models/demo/infer/from_files" | grep -q '"boxes"'
echo "served by server-openvino: POST /v2/models/demo/infer/from_files -> 200 with boxes"

docker images --format '{{.Repository}}:{{.Tag}}\t{{.Size}}' | grep ":$TAG"
