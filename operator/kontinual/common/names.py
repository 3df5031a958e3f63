"""Names shared by the controller, the server and the trainer: the API's identity, labels, env vars, paths."""

from __future__ import annotations

# API identity of the custom resource, shared by the operator, the CLI and the tests.
GROUP = "kontinual.io"
VERSION = "v1alpha1"
KIND = "ContinualModel"
PLURAL = "continualmodels"

# Labels and annotations on the children. MODEL_LABEL names the owning ContinualModel.
NAME_LABEL = "app.kubernetes.io/name"
INSTANCE_LABEL = "app.kubernetes.io/instance"  # the ContinualModel's name
COMPONENT_LABEL = "app.kubernetes.io/component"  # server, storage, training
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "kontinual"
MODEL_LABEL = f"{GROUP}/model"
VERSION_LABEL = f"{GROUP}/version"  # a training Job's model version
MOUNTS_MODELS_LABEL = f"{GROUP}/mounts-models"
SECRET_LABEL = f"{GROUP}/allow-continualmodels"  # a Secret that ContinualModels may name
ANNOTATION_MODEL_VERSION = f"{GROUP}/model-version"
ANNOTATION_CONFIG_HASH = f"{GROUP}/config-hash"
TRAIN_REQUEST_ANNOTATION = f"{GROUP}/train-request"  # on the CR (the user's) and on the Job that serves it
TRIGGER_ANNOTATION = f"{GROUP}/trigger"  # on a training Job: what started it
FINALIZER = f"{GROUP}/finalizer"

# The env var the server and trainer pods read the Roboflow API key from (set from a Secret).
ROBOFLOW_API_KEY_ENV = "ROBOFLOW_API_KEY"
# spec.serving.runtime: DeepSparse Server, or kserve's ModelServer (kontinual.serving.kserve_runtime) with an engine.
DEEPSPARSE_RUNTIME = "deepsparse"
KSERVE_ENGINES = ("openvino", "onnxruntime")
RUNTIMES = (DEEPSPARSE_RUNTIME, *KSERVE_ENGINES)
# The interface a server pod's capture metrics listen on (default 0.0.0.0, the pod; tests use 127.0.0.1).
METRICS_HOST_ENV = "KONTINUAL_METRICS_HOST"
# Where the trainer writes its result JSON last; the kubelet turns it into the termination message.
TERMINATION_LOG = "/dev/termination-log"
