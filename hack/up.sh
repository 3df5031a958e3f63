#!/usr/bin/env bash
# `make up`: Kontinual on a local kind cluster in one command.
# Creates (or reuses) the kind cluster of kind-config.yaml, builds the operator, server and trainer
# images, loads them into kind, applies the CRD, installs the Helm chart with those image tags,
# applies examples/minimal.yaml, waits for it to be Ready, and prints what to do next.
# Needs: docker (running) and kind; helm and kubectl from PATH, else the pinned copies from .venv.
# Knobs (environment): KONTINUAL_CLUSTER (kind cluster name, default kontinual),
# KONTINUAL_NAMESPACE (operator namespace, default kontinual-system), KONTINUAL_EXAMPLE
# (default examples/minimal.yaml), KONTINUAL_WAIT (default 20m: zoo download + compilation),
# TORCH_VARIANT (trainer torch build: cpu or cuda, default cpu).
set -euo pipefail
shopt -s inherit_errexit 2>/dev/null || true  # bash >= 4.4; build_and_load sets -e itself for 3.2
cd "$(dirname "$0")/.."

CLUSTER=${KONTINUAL_CLUSTER:-kontinual}
NAMESPACE=${KONTINUAL_NAMESPACE:-kontinual-system}
EXAMPLE=${KONTINUAL_EXAMPLE:-examples/minimal.yaml}
WAIT=${KONTINUAL_WAIT:-20m}
TORCH_VARIANT=${TORCH_VARIANT:-cpu}
RELEASE=kontinual
CONTEXT="kind-${CLUSTER}"

say() { printf '\n==> %s\n' "$*"; }
die() { printf 'make up: %s\n' "$*" >&2; exit 1; }

# helm / kubectl: $HELM / $KUBECTL, else PATH, else the copies the test suite pins (make venv).
tool() {
    local name=$1 override=$2
    if [[ -n $override ]]; then echo "$override"; return; fi
    if command -v "$name" >/dev/null 2>&1; then command -v "$name"; return; fi
    if [[ -x .venv/bin/python ]]; then
        .venv/bin/python -c "from tests.support.tools import ${name}_binary; print(${name}_binary())" && return
    fi
    die "$name not found: install it (https://helm.sh, https://kubernetes.io/docs/tasks/tools/) or run 'make venv'"
}

command -v docker >/dev/null 2>&1 || die "docker not found: install Docker (https://docs.docker.com/get-docker/)"
docker info >/dev/null 2>&1 || die "docker is installed but its daemon is not reachable: start Docker"
command -v kind >/dev/null 2>&1 || die "kind not found: install it (https://kind.sigs.k8s.io/docs/user/quick-start/)"
HELM=$(tool helm "${HELM:-}")
KUBECTL=$(tool kubectl "${KUBECTL:-}")
[[ -f $EXAMPLE ]] || die "$EXAMPLE does not exist"
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

# Helm installs crds/ only on the first install and never upgrades them: apply them ourselves.
say "Applying the ContinualModel CRD"
"$KUBECTL" --context "$CONTEXT" apply --server-side -f crds/
"$KUBECTL" --context "$CONTEXT" wait --for=condition=Established --timeout=60s \
    crd/continualmodels.kontinual.io

say "Installing the Helm chart (release '$RELEASE' in namespace '$NAMESPACE')"
"$HELM" upgrade --install "$RELEASE" helm/kontinual --kube-context "$CONTEXT" \
    --namespace "$NAMESPACE" --create-namespace --skip-crds \
    --set "image.tag=$OPERATOR_TAG" \
    --set "serverImage.tag=$SERVER_TAG" \
    --set "trainerImage.tag=$TRAINER_TAG" \
    --set "image.pullPolicy=Never" \
    --wait --timeout 5m

say "Applying $EXAMPLE"
applied=$("$KUBECTL" --context "$CONTEXT" apply -f "$EXAMPLE" -o name | grep -m 1 '^continualmodel') \
    || die "$EXAMPLE holds no ContinualModel"
model=${applied##*/}

say "Waiting up to $WAIT for ContinualModel '$model' to be Ready (model download and compilation)"
if ! "$KUBECTL" --context "$CONTEXT" wait --for=condition=Ready "cmodel/$model" --timeout="$WAIT"; then
    "$KUBECTL" --context "$CONTEXT" describe "cmodel/$model" || true
    "$KUBECTL" --context "$CONTEXT" --namespace "$NAMESPACE" logs "deployment/$RELEASE" --tail=50 || true
    die "ContinualModel '$model' did not become Ready within $WAIT (see its conditions and events above)"
fi
"$KUBECTL" --context "$CONTEXT" get cmodel "$model"

cat <<NEXT

Kontinual is up: ContinualModel '$model' is Ready on kind cluster '$CLUSTER' (context $CONTEXT).

Send an image to the model's DeepSparse Server:
  kubectl --context $CONTEXT port-forward service/$model-server 5543:5543 &
  curl -F request=@img.jpg http://127.0.0.1:5543/v2/models/$model/infer/from_files

Follow the loop:
  kubectl --context $CONTEXT get cmodel -w
  kubectl --context $CONTEXT describe cmodel $model
  kubectl --context $CONTEXT --namespace $NAMESPACE logs deployment/$RELEASE -f

Remove everything: make down
NEXT
