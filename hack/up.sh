#!/usr/bin/env bash
# `make up`: Kontinual on a local kind cluster in one command.
# Creates (or reuses) the kind cluster of kind-config.yaml, builds the operator, server, trainer and
# server-openvino images (the last serves spec.serving.runtime openvino/onnxruntime), loads them
# into kind, then runs hack/install.sh (applies the CRD, installs the Helm chart with those image tags, applies examples/minimal.yaml, waits for it to be Ready, prints what to do
# next). Only the kind steps are this script's own: the real-node tier runs hack/install.sh as is.
# Needs: docker (running) and kind; helm and kubectl from PATH, else the pinned copies from .venv.
# Knobs (environment): KONTINUAL_CLUSTER (kind cluster name, default kontinual),
# TORCH_VARIANT (trainer torch build: cpu or cuda, default cpu), and hack/install.sh's
# KONTINUAL_NAMESPACE, KONTINUAL_EXAMPLE, KONTINUAL_WAIT.
set -euo pipefail
shopt -s inherit_errexit 2>/dev/null || true  # bash >= 4.4; build_and_load sets -e itself for 3.2
cd "$(dirname "$0")/.."

SCRIPT="make up"
source hack/common.sh
CLUSTER=${KONTINUAL_CLUSTER:-kontinual}
TORCH_VARIANT=${TORCH_VARIANT:-cpu}
CONTEXT="kind-${CLUSTER}"

command -v docker >/dev/null 2>&1 || die "docker not found: install Docker (https://docs.docker.com/get-docker/)"
docker info >/dev/null 2>&1 || die "docker is installed but its daemon is not reachable: start Docker"
command -v kind >/dev/null 2>&1 || die "kind not found: install it (https://kind.sigs.k8s.io/docs/user/quick-start/)"
HELM=$(tool helm "${HELM:-}")
KUBECTL=$(tool kubectl "${KUBECTL:-}")
EXAMPLE=${KONTINUAL_EXAMPLE:-examples/minimal.yaml}
[[ -f $EXAMPLE ]] || die "$EXAMPLE does not exist"  # before minutes of image builds
VERSION=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\} *$/\1/p' helm/kontinual/Chart.yaml)
[[ -n $VERSION ]] || die "no appVersion in helm/kontinual/Chart.yaml"

if kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
    say "Reusing kind cluster '$CLUSTER'"
else
    say "Creating kind cluster '$CLUSTER' from kind-config.yaml"
    kind create cluster --config kind-config.yaml --name "$CLUSTER" --wait 120s
fi

# Each tag is the version plus the image's content digest: an unchanged image keeps its tag
# (nothing restarts), a rebuilt one gets a new tag (its pods roll). Prints the tag.
build_and_load() {
    set -e
    local image=$1 id tag
    shift
    say "Building kontinual/$image (images/$image/Dockerfile)" >&2
    docker build -f "images/$image/Dockerfile" "$@" -t "kontinual/$image:build" . >&2
    id=$(docker image inspect --format '{{.Id}}' "kontinual/$image:build")
    id=${id#sha256:}
    tag="$VERSION-${id:0:12}"
    docker tag "kontinual/$image:build" "kontinual/$image:$tag" >&2
    say "Loading kontinual/$image:$tag into kind" >&2
    kind load docker-image "kontinual/$image:$tag" --name "$CLUSTER" >&2
    echo "$tag"
}
OPERATOR_TAG=$(build_and_load operator)
SERVER_TAG=$(build_and_load server)
TRAINER_TAG=$(build_and_load trainer --build-arg "TORCH_VARIANT=$TORCH_VARIANT")
OPENVINO_TAG=$(build_and_load server-openvino)

KONTINUAL_CONTEXT=$CONTEXT HELM=$HELM KUBECTL=$KUBECTL KONTINUAL_OPERATOR_TAG=$OPERATOR_TAG \
    KONTINUAL_SERVER_TAG=$SERVER_TAG KONTINUAL_TRAINER_TAG=$TRAINER_TAG \
    KONTINUAL_SERVER_OPENVINO_TAG=$OPENVINO_TAG bash hack/install.sh

echo "Delete the kind cluster '$CLUSTER' and everything on it: make down"
