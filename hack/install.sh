#!/usr/bin/env bash
# `make up`'s steps once the cluster exists and its nodes hold the images: applies the CRD,
# installs the Helm chart with those image tags (pull policy Never: nothing is pulled), applies
# the example, waits until it is Ready (its DeepSparse Server answers its readiness probe) and
# prints how to reach it. hack/up.sh runs it on kind; the real-node tier
# (tests/node/test_make_up.py) runs it as is on a real node. hack/uninstall.sh undoes it.
# Needs: KONTINUAL_OPERATOR_TAG, KONTINUAL_SERVER_TAG, KONTINUAL_TRAINER_TAG (tags of the images
# kontinual/operator, kontinual/server and kontinual/trainer present on every node); optional:
# KONTINUAL_SERVER_OPENVINO_TAG (kontinual/server-openvino, for spec.serving.runtime openvino/onnxruntime).
# Knobs (environment): KONTINUAL_CONTEXT (kubeconfig context; empty: the current one),
# KONTINUAL_NAMESPACE (operator namespace, default kontinual-system), KONTINUAL_EXAMPLE (default
# examples/minimal.yaml), KONTINUAL_WAIT (default 20m: zoo download + compilation); HELM, KUBECTL.
# Arguments go to `helm upgrade --install` as well, e.g. --set sparsezoo.apiUrl=http://mirror:8080.
set -euo pipefail
cd "$(dirname "$0")/.."
SCRIPT="make up"
source hack/common.sh

for var in KONTINUAL_OPERATOR_TAG KONTINUAL_SERVER_TAG KONTINUAL_TRAINER_TAG; do
    [[ -n ${!var:-} ]] || die "$var is not set: give the tag of the image already on the cluster's nodes"
done
cluster_knobs 20m

# Helm installs crds/ only on the first install and never upgrades them: apply them ourselves.
say "Applying the ContinualModel CRD"
kubectl apply --server-side -f crds/
kubectl wait --for=condition=Established --timeout=60s crd/continualmodels.kontinual.io

say "Installing the Helm chart (release '$RELEASE' in namespace '$NAMESPACE')"
"$HELM" upgrade --install "$RELEASE" helm/kontinual ${hctx[@]+"${hctx[@]}"} \
    --namespace "$NAMESPACE" --create-namespace --skip-crds \
    --set "image.tag=$KONTINUAL_OPERATOR_TAG" \
    --set "serverImage.tag=$KONTINUAL_SERVER_TAG" \
    --set "trainerImage.tag=$KONTINUAL_TRAINER_TAG" \
    ${KONTINUAL_SERVER_OPENVINO_TAG:+--set "serverOpenvinoImage.tag=$KONTINUAL_SERVER_OPENVINO_TAG"} \
    --set "image.pullPolicy=Never" \
    --wait --timeout 5m "$@"

say "Applying $EXAMPLE"
applied=$(kubectl apply -f "$EXAMPLE" -o name | grep -m 1 '^continualmodel') \
    || die "$EXAMPLE holds no ContinualModel"
model=${applied##*/}

say "Waiting up to $WAIT for ContinualModel '$model' to be Ready (model download and compilation)"
if ! kubectl wait --for=condition=Ready "cmodel/$model" --timeout="$WAIT"; then
    kubectl describe "cmodel/$model" || true
    kubectl --namespace "$NAMESPACE" logs "deployment/$RELEASE" --tail=50 || true
    die "ContinualModel '$model' did not become Ready within $WAIT (see its conditions and events above)"
fi
kubectl get cmodel "$model"

cat <<NEXT

Kontinual is up: ContinualModel '$model' is Ready${CONTEXT:+ (context $CONTEXT)}.

Send an image to the model's DeepSparse Server:
  kubectl$shown port-forward service/$model-server 5543:5543 &
  curl -F request=@img.jpg http://127.0.0.1:5543/v2/models/$model/infer/from_files

Follow the loop:
  kubectl$shown get cmodel -w
  kubectl$shown describe cmodel $model
  kubectl$shown --namespace $NAMESPACE logs deployment/$RELEASE -f

Remove Kontinual and the example${CONTEXT:+ from $CONTEXT}: ${CONTEXT:+KONTINUAL_CONTEXT=$CONTEXT }hack/uninstall.sh
NEXT
