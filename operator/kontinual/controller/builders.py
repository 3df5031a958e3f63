"""Pure builders: a parsed Spec (and the model to serve) in, the serving children as plain dicts out."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from typing import Any, Mapping

from kontinual.common.names import (ANNOTATION_CONFIG_HASH, ANNOTATION_MODEL_VERSION, COMPONENT_LABEL,
                                    DEEPSPARSE_RUNTIME, GROUP, INSTANCE_LABEL, KIND, MANAGED_BY, MANAGED_BY_LABEL,
                                    MODEL_LABEL, MOUNTS_MODELS_LABEL, NAME_LABEL, ROBOFLOW_API_KEY_ENV, VERSION)
from kontinual.common import yamlio
from kontinual.common.classnames import COCO_NAMES, same_classes
from kontinual.common.contract import MODEL_ONNX, version_file
from kontinual.controller.capture_config import capture_settings, render_logging
from kontinual.controller.settings import Settings
from kontinual.controller.spec import DataLogging, ModelSource, Spec

CONFIG_DIR = "/etc/kontinual"
KSERVE_RUNTIME_MODULE = "kontinual.serving.kserve_runtime"  # images/server-openvino runs it
CONFIG_FILE = "server.yaml"
MODELS_MOUNT = "/models"
MODEL_CACHE = "/model-cache"
RUN_AS_USER = 10001
# DeepSparse compiles the model before it listens: allow up to 10 minutes for that.
STARTUP_PERIOD_SECONDS, STARTUP_FAILURES = 10, 60
# A terminating server pod keeps answering this long: kube-proxy removes it from the Service a
# moment after its deletion starts, and connections routed to it meanwhile must not be refused.
DRAIN_SECONDS = 5
DEFAULT_SERVER_RESOURCES = {"requests": {"cpu": "1", "memory": "1536Mi"}, "limits": {"memory": "4Gi"}}
# On every pod that mounts the model claim: with a single-node (ReadWriteOnce) claim they must
# all share one node, or the second one to start hits a multi-attach error.
HOSTNAME_TOPOLOGY = "kubernetes.io/hostname"
DEFAULT_AUTOSCALING_API = "autoscaling/v2beta2"  # what Kubernetes 1.20 serves; reconcile uses v2 where served
VERIFY_SCRIPT = (
    "import hashlib, sys\n"
    "h = hashlib.sha256()\n"
    "with open(sys.argv[1], 'rb') as f:\n"
    "    for block in iter(lambda: f.read(1 << 20), b''):\n"
    "        h.update(block)\n"
    "if h.hexdigest() != sys.argv[2]:\n"
    "    sys.exit(f'{sys.argv[1]}: sha256 {h.hexdigest()} does not match the trained result {sys.argv[2]}')\n"
    "print(f'{sys.argv[1]}: sha256 verified')\n"
)


@dataclass(frozen=True)
class ModelTarget:
    """The model the server should run: version 0 is the spec's seed model, N a trained version."""

    version: int
    source: ModelSource
    sha256: str | None = None
    class_names: tuple[str, ...] = ()  # the names of this model's classes, in class-id order

    @classmethod
    def seed(cls, spec: Spec) -> "ModelTarget":
        return cls(version=0, source=spec.model, class_names=spec.seed_class_names)

    @classmethod
    def trained(cls, spec: Spec, version: int, sha256: str | None = None,
                class_names: tuple[str, ...] | None = None, file: str = MODEL_ONNX) -> "ModelTarget":
        """Trained version N's `file` (the one spec.serving.runtime serves: ModelRecord.served_file) and its
        sha256; `class_names` its dataset's (default: the project's, spec.classNames)."""
        uri = f"pvc://{spec.storage.claim_name}/{version_file(version, file)}"
        return cls(version=version, source=ModelSource.parse(uri, "status.serving.uri"), sha256=sha256,
                   class_names=spec.class_names if class_names is None else class_names)


def names(spec: Spec) -> dict[str, str]:
    """Names of the children of one ContinualModel."""
    return {
        "config": f"{spec.name}-server-config",
        "server": f"{spec.name}-server",
        "claim": spec.storage.claim_name,
    }


def labels(spec: Spec, component: str) -> dict[str, str]:
    """Labels every child carries (never the parent's own labels: GitOps tools would prune children)."""
    return {
        NAME_LABEL: "kontinual",
        MANAGED_BY_LABEL: MANAGED_BY,
        INSTANCE_LABEL: spec.name,
        COMPONENT_LABEL: component,
        MODEL_LABEL: spec.name,
    }


def selector(spec: Spec, component: str) -> dict[str, str]:
    """The immutable selector subset of `labels`."""
    return {INSTANCE_LABEL: spec.name, COMPONENT_LABEL: component}


def owner_reference(spec: Spec) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "name": spec.name,
        "uid": spec.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def metadata(spec: Spec, name: str, component: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": spec.namespace, "labels": labels(spec, component)}
    if spec.uid:  # unknown when rendering a file that never met an API server
        meta["ownerReferences"] = [owner_reference(spec)]
    return meta


def model_path(source: ModelSource) -> str:
    """Where the server finds the model inside its pod."""
    if source.scheme == "pvc":
        return f"{MODELS_MOUNT}/{source.path}"
    if source.scheme == "https":
        return f"{MODEL_CACHE}/model.onnx"
    return source.path  # zoo stub as is, file:// as its absolute path


def server_url(spec: Spec) -> str:
    """In-cluster URL of the upload route (multipart field `request`)."""
    return f"http://{spec.name}-server.{spec.namespace}.svc:{spec.serving.port}/v2/models/{spec.name}/infer/from_files"


def _capture_data(spec: Spec, target: ModelTarget) -> DataLogging | None:
    """spec.dataLogging for this model: pre-annotations only while its classes are the Roboflow project's."""
    data = spec.data_logging
    if data and data.upload_predictions and not same_classes(target.class_names, spec.class_names):
        # Boxes of classes the Roboflow project does not have would be wrong pre-annotations.
        data = replace(data, upload_predictions=False)
    return data


def kserve_config(spec: Spec, target: ModelTarget) -> dict[str, Any]:
    """The kserve runtime's server.yaml (kontinual.serving.kserve_runtime.read_config). Never holds a secret."""
    config: dict[str, Any] = {
        "runtime": spec.serving.runtime,
        "name": spec.name,
        "model": model_path(target.source),
        "batch_size": spec.serving.batch_size,
    }
    if target.class_names:
        config["class_names"] = list(target.class_names)  # the full list: no built-in "coco" here
    if spec.serving.num_cores:
        config["num_cores"] = spec.serving.num_cores
    data = _capture_data(spec, target)
    if data:
        config["capture"] = capture_settings(data, endpoint=spec.name, model_version=str(target.version),
                                             class_names=target.class_names)
    return config


def server_config(spec: Spec, target: ModelTarget | None = None) -> dict[str, Any]:
    """server.yaml for spec.serving.runtime: the DeepSparse 1.8.0 server config, or the kserve runtime's."""
    target = target or ModelTarget.seed(spec)
    if spec.serving.runtime != DEEPSPARSE_RUNTIME:
        return kserve_config(spec, target)
    endpoint: dict[str, Any] = {
        "task": spec.task,
        "name": spec.name,
        "route": f"/{spec.name}",
        "model": model_path(target.source),
        "batch_size": spec.serving.batch_size,
    }
    # The served version's own names: DeepSparse maps every class id through them (an id beyond the
    # list fails the request), so names from another model must never reach it.
    if target.class_names == COCO_NAMES:
        endpoint["kwargs"] = {"class_names": "coco"}  # DeepSparse's built-in COCO names
    elif target.class_names:
        endpoint["kwargs"] = {"class_names": list(target.class_names)}
    config: dict[str, Any] = {}
    if spec.serving.num_cores:
        config["num_cores"] = spec.serving.num_cores
    config["endpoints"] = [endpoint]
    data = _capture_data(spec, target)
    if data:
        loggers, data_logging = render_logging(
            data, endpoint=spec.name, model_version=str(target.version), class_names=target.class_names
        )
        config["loggers"] = loggers
        endpoint["data_logging"] = data_logging
        # The server middleware reports each response's success to the logger: its failed-request count.
        config["system_logging"] = {"enable": True, "request_details": {"enable": True}}
    return config


def config_map(spec: Spec, target: ModelTarget | None = None) -> dict[str, Any]:
    text = yamlio.dump(server_config(spec, target))
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(spec, names(spec)["config"], "server"),
        "data": {CONFIG_FILE: text},
    }


def config_hash(config_map_obj: dict[str, Any]) -> str:
    return hashlib.sha256(config_map_obj["data"][CONFIG_FILE].encode()).hexdigest()[:16]


def container_security() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_USER,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }


def pod_security() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_USER,
        "runAsGroup": RUN_AS_USER,
        "fsGroup": RUN_AS_USER,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _probe(path: str, *, period: int, failures: int, initial: int = 0) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "http"},
        "initialDelaySeconds": initial,
        "periodSeconds": period,
        "timeoutSeconds": 5,
        "failureThreshold": failures,
    }


def fetch_container(name: str, image: str, url: str, dest: str, mount: dict[str, Any]) -> dict[str, Any]:
    """An init container that downloads `url` to `dest` with the image's own Python (no extra tools)."""
    return {
        "name": name,
        "image": image,
        "command": ["python", "-c", "import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], sys.argv[2])",
                    url, dest],
        "volumeMounts": [mount],
        "securityContext": container_security(),
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
    }


def claim_needed(spec: Spec, target: ModelTarget) -> bool:
    """Something mounts the model claim: training writes to it, or the server reads its model from it."""
    source = target.source
    return spec.training is not None or (source.scheme == "pvc" and source.claim == spec.storage.claim_name)


def mounts_claim(spec: Spec, target: ModelTarget) -> bool:
    return target.source.scheme == "pvc" and target.source.claim == spec.storage.claim_name


def with_colocation(spec: Spec, affinity: Mapping[str, Any]) -> dict[str, Any]:
    """`affinity` plus, for a single-node claim, a required pod affinity to the pods that mount it.

    The scheduler lets the first such pod go anywhere (a pod that matches its own term), and
    ignores finished pods, so a completed training Job does not pin the server's next node.
    """
    out = {k: dict(v) if isinstance(v, Mapping) else v for k, v in affinity.items()}
    if not spec.storage.single_node:
        return out
    pod_affinity = dict(out.get("podAffinity") or {})
    terms = list(pod_affinity.get("requiredDuringSchedulingIgnoredDuringExecution") or [])
    terms.append({
        "labelSelector": {"matchLabels": {INSTANCE_LABEL: spec.name, MOUNTS_MODELS_LABEL: "true"}},
        "topologyKey": HOSTNAME_TOPOLOGY,
    })
    pod_affinity["requiredDuringSchedulingIgnoredDuringExecution"] = terms
    out["podAffinity"] = pod_affinity
    return out


def colocation_conflict(spec: Spec) -> str | None:
    """Why training Jobs may not fit on the server's node with a single-node claim, or None."""
    training = spec.training
    if training is None or not spec.storage.single_node:
        return None
    serving = spec.serving
    if dict(training.node_selector) == dict(serving.node_selector) and not training.affinity.get("nodeAffinity"):
        return None
    return (f"spec.storage.pvc.accessModes {list(spec.storage.access_modes)} lets only one node mount the model "
            "claim, so training Jobs must run on the server pods' node, but spec.training's nodeSelector/"
            "nodeAffinity differ from spec.serving's: a Job stays Pending unless that node satisfies both; "
            "use accessModes [ReadWriteMany] (e.g. NFS, CephFS, EFS) to train on other nodes")


def sparsezoo_env(settings: Settings) -> list[dict[str, Any]]:
    """SPARSEZOO_API_URL (read by sparsezoo, in DeepSparse and in the trainer) when the cluster uses a mirror."""
    return [{"name": "SPARSEZOO_API_URL", "value": settings.sparsezoo_api_url}] if settings.sparsezoo_api_url else []


Objects = list[dict[str, Any]]


def _model_volumes(spec: Spec, target: ModelTarget, image: str) -> tuple[Objects, Objects, Objects]:
    """Volumes, server mounts and init containers that put the model where model_path says."""
    source = target.source
    if source.scheme == "pvc":
        volume = {"name": "models", "persistentVolumeClaim": {"claimName": source.claim, "readOnly": True}}
        mount = {"name": "models", "mountPath": MODELS_MOUNT, "readOnly": True}
        init = []
        if target.sha256:
            # A trained model is served only if its bytes are the ones the trainer reported:
            # a mismatch fails this init container, the rollout stalls and the operator rolls back.
            init.append({
                "name": "verify-model",
                "image": image,
                "command": ["python", "-c", VERIFY_SCRIPT, model_path(source), target.sha256],
                "volumeMounts": [mount],
                "securityContext": container_security(),
                "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}},
            })
        return [volume], [mount], init
    if source.scheme == "https":
        fetch = fetch_container("fetch-model", image, source.path, f"{MODEL_CACHE}/model.onnx",
                                {"name": "model-cache", "mountPath": MODEL_CACHE})
        mount = {"name": "model-cache", "mountPath": MODEL_CACHE, "readOnly": True}
        return [{"name": "model-cache", "emptyDir": {}}], [mount], [fetch]
    return [], [], []


@dataclass(frozen=True)
class Runtime:
    """What differs between the serving runtimes in the server container; everything else is shared."""

    image: str
    command: list[str]
    env: list[dict[str, Any]]
    ready_path: str


def runtime(spec: Spec, settings: Settings) -> Runtime:
    """spec.serving.runtime -> the server container's image, command, env and readiness path."""
    serving, config_file = spec.serving, f"{CONFIG_DIR}/{CONFIG_FILE}"
    if serving.runtime == DEEPSPARSE_RUNTIME:
        return Runtime(
            image=serving.image or settings.server_image,
            command=["deepsparse.server", "--config-file", config_file, "--host", "0.0.0.0", "--port", str(serving.port)],
            env=[
                {"name": "NM_DISABLE_ANALYTICS", "value": "1"},
                {"name": "HOME", "value": "/tmp"},  # caches (sparsezoo stubs) go to the writable emptyDir
                *sparsezoo_env(settings),  # DeepSparse resolves zoo: models itself
            ],
            ready_path="/v2/health/ready",
        )
    # kserve's /v2/health/ready is true once it listens; the model's own ready route says what we mean.
    return Runtime(
        image=serving.image or settings.openvino_server_image,
        command=["python", "-m", KSERVE_RUNTIME_MODULE, "--config-file", config_file, "--http_port", str(serving.port)],
        env=[{"name": "HOME", "value": "/tmp"}],
        ready_path=f"/v2/models/{spec.name}/ready",
    )


def deployment(spec: Spec, settings: Settings, target: ModelTarget | None = None,
               config: dict[str, Any] | None = None) -> dict[str, Any]:
    """The server Deployment (spec.serving.runtime's); the pod-template annotations roll it on model or config change."""
    target = target or ModelTarget.seed(spec)
    config = config or config_map(spec, target)
    serving = spec.serving
    chosen = runtime(spec, settings)
    image = chosen.image
    env: list[dict[str, Any]] = list(chosen.env)
    ports = [{"name": "http", "containerPort": serving.port, "protocol": "TCP"}]
    if spec.data_logging:
        ref = spec.data_logging.roboflow.api_key
        env.append({"name": ROBOFLOW_API_KEY_ENV, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}})
        ports.append({"name": "metrics", "containerPort": spec.data_logging.metrics_port, "protocol": "TCP"})
    volumes, mounts, init = _model_volumes(spec, target, image)
    volumes += [
        {"name": "config", "configMap": {"name": names(spec)["config"]}},
        {"name": "tmp", "emptyDir": {}},
    ]
    mounts += [
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    container = {
        "name": "server",
        "image": image,
        "command": chosen.command,
        "ports": ports,
        "env": env,
        "resources": dict(serving.resources) or DEFAULT_SERVER_RESOURCES,
        "readinessProbe": _probe(chosen.ready_path, period=5, failures=3),
        "livenessProbe": _probe("/v2/health/live", period=10, failures=3),
        "startupProbe": _probe("/v2/health/live", period=STARTUP_PERIOD_SECONDS, failures=STARTUP_FAILURES),
        "lifecycle": {"preStop": {"exec": {"command": ["python", "-c", f"import time; time.sleep({DRAIN_SECONDS})"]}}},
        "volumeMounts": mounts,
        "securityContext": container_security(),
    }
    pod_spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "securityContext": pod_security(),
        "containers": [container],
        "volumes": volumes,
    }
    if init:
        pod_spec["initContainers"] = init
    if serving.node_selector:
        pod_spec["nodeSelector"] = dict(serving.node_selector)
    if serving.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in serving.tolerations]
    mounted = mounts_claim(spec, target)
    affinity = with_colocation(spec, serving.affinity) if mounted else dict(serving.affinity)
    if affinity:
        pod_spec["affinity"] = affinity
    if serving.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": n} for n in serving.image_pull_secrets]
    # "false" rather than absent: a merge patch never removes a label it does not mention.
    pod_labels = {**labels(spec, "server"), MOUNTS_MODELS_LABEL: "true" if mounted else "false"}
    deploy_spec: dict[str, Any] = {
        "revisionHistoryLimit": 5,
        "progressDeadlineSeconds": serving.progress_deadline_seconds,
        "selector": {"matchLabels": selector(spec, "server")},
        # maxUnavailable 0: a new pod must be ready before an old one goes, so no request is lost.
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
        "template": {
            "metadata": {
                "labels": pod_labels,
                "annotations": {
                    ANNOTATION_MODEL_VERSION: str(target.version),
                    ANNOTATION_CONFIG_HASH: config_hash(config),
                },
            },
            "spec": pod_spec,
        },
    }
    if serving.autoscaling is None:
        # With autoscaling the HPA owns the replica count: the merge patch then never carries
        # `replicas`, so the HPA's scale survives every re-apply.
        deploy_spec = {"replicas": serving.replicas, **deploy_spec}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(spec, names(spec)["server"], "server"),
        "spec": deploy_spec,
    }


def horizontal_pod_autoscaler(spec: Spec, api_version: str = DEFAULT_AUTOSCALING_API) -> dict[str, Any] | None:
    """The server's HPA (autoscaling/v2beta2 or v2: same shape), or None without spec.serving.autoscaling."""
    scaling = spec.serving.autoscaling
    if scaling is None:
        return None
    metrics: list[dict[str, Any]] = []
    if scaling.target_cpu_utilization is not None:
        metrics.append({"type": "Resource", "resource": {
            "name": "cpu", "target": {"type": "Utilization", "averageUtilization": scaling.target_cpu_utilization}}})
    if scaling.metric is not None:
        metrics.append({"type": "Pods", "pods": {
            "metric": {"name": scaling.metric.name},
            "target": {"type": "AverageValue", "averageValue": scaling.metric.target_average_value}}})
    return {
        "apiVersion": api_version,
        "kind": "HorizontalPodAutoscaler",
        "metadata": metadata(spec, names(spec)["server"], "server"),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": names(spec)["server"]},
            "minReplicas": scaling.min_replicas,
            "maxReplicas": scaling.max_replicas,
            "metrics": metrics,
        },
    }


def service(spec: Spec) -> dict[str, Any]:
    ports = [{"name": "http", "port": spec.serving.port, "targetPort": "http", "protocol": "TCP"}]
    if spec.data_logging:
        ports.append({"name": "metrics", "port": spec.data_logging.metrics_port, "targetPort": "metrics",
                      "protocol": "TCP"})
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(spec, names(spec)["server"], "server"),
        "spec": {"type": "ClusterIP", "selector": selector(spec, "server"), "ports": ports},
    }


def network_policy(spec: Spec) -> dict[str, Any] | None:
    """Ingress to the server pods only from the sources spec.serving.networkPolicy names; None without it.

    Each port gets its own rule, so metrics scrapers need not reach inference and the other way
    round; a port whose source list is empty gets no rule (nobody may connect to it).
    """
    policy = spec.serving.network_policy
    if policy is None:
        return None
    rules = [(policy.inference_from, spec.serving.port)]
    if spec.data_logging:
        rules.append((policy.metrics_from, spec.data_logging.metrics_port))
    ingress = [{"from": [dict(p) for p in sources], "ports": [{"protocol": "TCP", "port": port}]}
               for sources, port in rules if sources]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata(spec, names(spec)["server"], "server"),
        "spec": {"podSelector": {"matchLabels": selector(spec, "server")}, "policyTypes": ["Ingress"],
                 "ingress": ingress},
    }


def model_claim(spec: Spec, target: ModelTarget | None = None) -> dict[str, Any] | None:
    """The model-storage PVC; None when the user names an existing claim or nothing would mount it."""
    if not spec.storage.create or not claim_needed(spec, target or ModelTarget.seed(spec)):
        return None
    claim_spec: dict[str, Any] = {
        "accessModes": list(spec.storage.access_modes),
        "resources": {"requests": {"storage": spec.storage.size}},
    }
    if spec.storage.storage_class:
        claim_spec["storageClassName"] = spec.storage.storage_class
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": metadata(spec, spec.storage.claim_name, "storage"),
        "spec": claim_spec,
    }


def serving_children(spec: Spec, settings: Settings, target: ModelTarget | None = None,
                     autoscaling_api: str = DEFAULT_AUTOSCALING_API) -> list[dict[str, Any]]:
    """Every serving child, in the order they should be applied (storage and config before pods)."""
    target = target or ModelTarget.seed(spec)
    cm = config_map(spec, target)
    claim = model_claim(spec, target)
    hpa = horizontal_pod_autoscaler(spec, autoscaling_api)
    policy = network_policy(spec)  # before the pods, so no new server pod is ever reachable unguarded
    return ([claim] if claim else []) + [cm, service(spec)] + ([policy] if policy else []) + [
        deployment(spec, settings, target, cm)] + ([hpa] if hpa else [])
