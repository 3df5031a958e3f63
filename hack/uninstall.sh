#!/usr/bin/env bash
# Undoes hack/install.sh on the same cluster: deletes the example's ContinualModel while the
# operator still runs to release its finalizer, waiting until its children and their pods are
# gone (foreground cascading deletion); uninstalls the Helm release; deletes the operator
# namespace; deletes the CRD once no ContinualModel is left anywhere (deleting it would delete
# them). `make down` deletes the whole kind cluster instead.
# Knobs (environment): the same as hack/install.sh (KONTINUAL_CONTEXT, KONTINUAL_NAMESPACE,
# KONTINUAL_EXAMPLE, HELM, KUBECTL); KONTINUAL_WAIT (default 5m) bounds each deletion.
set -euo pipefail
cd "$(dirname "$0")/.."
SCRIPT="uninstall"
source hack/common.sh

CRD=continualmodels.kontinual.io
cluster_knobs 5m

if kubectl get "crd/$CRD" >/dev/null 2>&1; then
    say "Deleting what $EXAMPLE created"
    kubectl delete -f "$EXAMPLE" --ignore-not-found --cascade=foreground --wait --timeout="$WAIT" \
        || die "deleting $EXAMPLE did not finish within $WAIT: the operator removes its finalizer, is it running?"
fi

if "$HELM" status "$RELEASE" ${hctx[@]+"${hctx[@]}"} --namespace "$NAMESPACE" >/dev/null 2>&1; then
    say "Uninstalling the Helm release '$RELEASE' (namespace '$NAMESPACE')"
    "$HELM" uninstall "$RELEASE" ${hctx[@]+"${hctx[@]}"} --namespace "$NAMESPACE" --wait --timeout "$WAIT"
else
    say "No Helm release '$RELEASE' in namespace '$NAMESPACE'"
fi
say "Deleting namespace '$NAMESPACE'"
kubectl delete namespace "$NAMESPACE" --ignore-not-found --wait --timeout="$WAIT"

if kubectl get "crd/$CRD" >/dev/null 2>&1; then
    left=$(kubectl get "$CRD" --all-namespaces -o name)
    if [[ -n $left ]]; then
        say "Keeping CRD $CRD: ContinualModels remain ($(echo "$left" | wc -l)); delete them first to remove it"
    else
        say "Deleting CRD $CRD (no ContinualModel left)"
        kubectl delete "crd/$CRD" --wait --timeout="$WAIT"
    fi
fi
say "Kontinual is uninstalled${CONTEXT:+ from $CONTEXT}"
