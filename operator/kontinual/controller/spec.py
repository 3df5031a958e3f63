"""Parse a ContinualModel's spec, once, into frozen typed objects; cross-field rules live here.

The CRD's OpenAPI schema does structural validation (types, enums, minimums, defaults) on the
API server. This module re-applies the defaults (so `kontinual render` works on a file that never
met an API server) and checks what a schema cannot express. Every error names the field path.
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass, field
from typing import Any, Mapping
from urllib.parse import urlsplit

from croniter import croniter

from kontinual.common.capture_settings import DEFAULT_METRICS_PORT
from kontinual.common.classnames import seed_names
from kontinual.common.contract import BUILTIN_RECIPE_SCHEME, BUILTIN_RECIPES, builtin_recipe
from kontinual.common.names import DEEPSPARSE_RUNTIME, RUNTIMES
from kontinual.controller import limits
from kontinual.controller.settings import Settings
from kontinual.controller.specfields import NAME_RE, Reader, SecretKeyRef, SpecError, peers

# NAME_RE, SecretKeyRef and SpecError are part of this module's API too (re-exported).

DEFAULT_PORT = 5543
DNS1035_RE = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
VERSION_RE = re.compile(r"^(latest|[1-9][0-9]*)$")
CRON_RE = re.compile(r"^\s*(\S+\s+){4}\S+\s*$")
CRON_PROBE_START = datetime.datetime(2001, 1, 1, tzinfo=datetime.timezone.utc)  # fixed: parsing stays pure
# The gate's documented default floor: a candidate's mAP below this is never promoted, whatever
# its predecessor scored (a model trained from random weights for a few epochs stays below it).
DEFAULT_MIN_VALUE = 0.1
DEFAULT_GENERATE_TIMEOUT_SECONDS = 900


def no_credentials(uri: str, where: str) -> str:
    """Refuse `scheme://user:password@host/...`: it would be shown in pod specs, status and logs."""
    if "://" in uri:
        try:
            parts = urlsplit(uri)
            has_userinfo = "@" in parts.netloc or parts.username is not None
        except ValueError:
            raise SpecError(f"{where} is not a valid URL, got {uri!r}") from None
        if has_userinfo:
            raise SpecError(f"{where} must not carry credentials (user:password@host); serve the file from a "
                            "location pods can read without them (a pvc:// claim, or an https URL without userinfo)")
    return uri


BASE_WEIGHTS_FORMS = ("zoo:<stub> (a SparseZoo model's transfer checkpoint), a YOLOv5 or Kontinual *.pt "
                      "checkpoint as https://..., pvc://<claim>/<path>.pt or file:///<path>.pt, or a yolov5 "
                      "model config such as yolov5s.yaml (random initialization, only when asked for)")


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from: zoo stub, https URL, a path on a PVC, or a file in the image."""

    uri: str
    scheme: str  # zoo | https | pvc | file
    claim: str = ""  # pvc only
    path: str = ""  # pvc: path inside the claim; file: absolute path; https: the URL

    @classmethod
    def parse(cls, uri: str, where: str) -> "ModelSource":
        no_credentials(uri, where)
        if uri.startswith("zoo:") and len(uri) > 4:
            return cls(uri=uri, scheme="zoo", path=uri)
        if uri.startswith("https://") and len(uri) > 8:
            return cls(uri=uri, scheme="https", path=uri)
        if uri.startswith("pvc://"):
            claim, _, path = uri[len("pvc://"):].partition("/")
            if not NAME_RE.match(claim) or not path:
                raise SpecError(f"{where} must look like pvc://<claim-name>/<path>, got {uri!r}")
            return cls(uri=uri, scheme="pvc", claim=claim, path=path.lstrip("/"))
        if uri.startswith("file:///") and len(uri) > len("file:///"):
            return cls(uri=uri, scheme="file", path=uri[len("file://"):])
        raise SpecError(
            f"{where} must be one of zoo:<stub>, https://..., pvc://<claim>/<path> or file:///<path>, got {uri!r}"
        )


@dataclass(frozen=True)
class PodsMetric:
    """A per-pod custom metric for the HPA (served by a custom-metrics adapter, e.g. Prometheus Adapter)."""

    name: str
    target_average_value: str


@dataclass(frozen=True)
class Autoscaling:
    """An HPA child scales the server between min and max; the operator then leaves `replicas` alone."""

    min_replicas: int = 1
    max_replicas: int = 4
    target_cpu_utilization: int | None = 80  # percent of the CPU request; None: only the custom metric
    metric: PodsMetric | None = None


@dataclass(frozen=True)
class NetworkPolicy:
    """Who may connect to the server pods (a NetworkPolicy NAME-server); an empty tuple is nobody."""

    inference_from: tuple[Mapping[str, Any], ...]  # NetworkPolicyPeers of the inference port
    metrics_from: tuple[Mapping[str, Any], ...]  # ... of dataLogging.metricsPort


@dataclass(frozen=True)
class Serving:
    replicas: int = 1
    runtime: str = DEEPSPARSE_RUNTIME  # common.names.RUNTIMES
    image: str = ""
    port: int = DEFAULT_PORT
    batch_size: int = 1
    num_cores: int | None = None
    resources: Mapping[str, Any] = field(default_factory=dict)
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] = ()
    affinity: Mapping[str, Any] = field(default_factory=dict)
    image_pull_secrets: tuple[str, ...] = ()
    progress_deadline_seconds: int = 600
    autoscaling: Autoscaling | None = None
    network_policy: NetworkPolicy | None = None  # None: no policy, the cluster's default applies


@dataclass(frozen=True)
class RoboflowRef:
    workspace: str
    project: str
    api_key: SecretKeyRef
    api_url: str
    split: str = "train"
    batch: str = "production"
    tags: tuple[str, ...] = ("production",)


@dataclass(frozen=True)
class DataLogging:
    roboflow: RoboflowRef
    frequency: int = 100
    max_per_minute: int = 60
    upload_predictions: bool = False
    queue_size: int = 100
    metrics_port: int = DEFAULT_METRICS_PORT


@dataclass(frozen=True)
class Trigger:
    schedule: str | None = None
    min_new_labeled_images: int | None = None


@dataclass(frozen=True)
class Recipe:
    """A SparseML recipe: from a ConfigMap key, a URI, or (neither) the trainer's built-in one."""

    config_map: SecretKeyRef | None = None  # same shape: name + key
    uri: str | None = None


@dataclass(frozen=True)
class Generation:
    """Generating a fresh Roboflow dataset version before a run (spec.training.dataset)."""

    enabled: bool = True
    preprocessing: Mapping[str, Any] = field(default_factory=dict)  # Roboflow's, over the default resize
    augmentation: Mapping[str, Any] = field(default_factory=dict)  # Roboflow's; none by default
    timeout_seconds: int = DEFAULT_GENERATE_TIMEOUT_SECONDS


@dataclass(frozen=True)
class Training:
    dataset: RoboflowRef
    dataset_version: str = "latest"
    generation: Generation = Generation()
    trigger: Trigger = Trigger()
    base_weights: str = ""
    recipe: Recipe = Recipe()
    epochs: int = 50
    image_size: int = 640
    batch_size: int = 16
    device: str = "auto"
    image: str = ""
    resources: Mapping[str, Any] = field(default_factory=dict)
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] = ()
    affinity: Mapping[str, Any] = field(default_factory=dict)
    image_pull_secrets: tuple[str, ...] = ()
    active_deadline_seconds: int = 86400
    backoff_limit: int = 1
    ttl_seconds_after_finished: int = 86400


@dataclass(frozen=True)
class Storage:
    claim_name: str  # resolved: the user's claim or NAME-models
    create: bool  # True when the operator owns the claim
    size: str = "10Gi"
    storage_class: str | None = None
    access_modes: tuple[str, ...] = ("ReadWriteOnce",)

    @property
    def single_node(self) -> bool:
        """A claim only pods on one node can mount read-write at once (no ReadWriteMany)."""
        return "ReadWriteMany" not in self.access_modes


@dataclass(frozen=True)
class Gate:
    metric: str = "mAP50"
    min_delta: float = 0.0  # over the serving model's value on the candidate's own test split
    min_value: float = DEFAULT_MIN_VALUE  # absolute floor of the candidate's value


@dataclass(frozen=True)
class Rollout:
    gate: Gate = Gate()
    history_limit: int = 5
    pinned_version: int | None = None


@dataclass(frozen=True)
class Spec:
    """A parsed ContinualModel: identity plus every section of its spec, defaults applied."""

    name: str
    namespace: str
    uid: str
    generation: int
    task: str
    model: ModelSource
    serving: Serving
    storage: Storage
    rollout: Rollout
    class_names: tuple[str, ...] = ()  # spec.classNames: the Roboflow project's classes
    model_class_names: tuple[str, ...] = ()  # spec.model.classNames: the seed's classes
    data_logging: DataLogging | None = None
    training: Training | None = None

    @property
    def seed_class_names(self) -> tuple[str, ...]:
        """The seed model's class names (see kontinual.common.classnames.seed_names)."""
        return seed_names(self.model.uri, self.model_class_names, self.class_names)


def _pull_secrets(r: Reader) -> tuple[str, ...]:
    pull = r.objects("imagePullSecrets")
    if not all(isinstance(p.get("name"), str) and p.get("name") for p in pull):
        raise SpecError(f"{r.path}.imagePullSecrets entries must be {{name: <secret name>}}, got {list(pull)!r}")
    return tuple(str(p["name"]) for p in pull)


def _autoscaling(r: Reader, resources: Mapping[str, Any]) -> Autoscaling:
    low = r.req_int("minReplicas", 1, minimum=1)
    high = r.req_int("maxReplicas", max(low, 4), minimum=1)
    if high < low:
        raise SpecError(f"{r.path}.maxReplicas must be >= minReplicas ({low}), got {high}")
    metric = None
    if r.present("metric"):
        m = r.sub("metric")
        target = m.data.get("targetAverageValue")
        if isinstance(target, bool) or not isinstance(target, (str, int)) or str(target) in ("", "0"):
            raise SpecError(f"{m.path}.targetAverageValue must be a positive quantity (e.g. 10 or 500m), got {target!r}")
        metric = PodsMetric(name=m.text("name", required=True), target_average_value=str(target))
    cpu = r.integer("targetCPUUtilizationPercentage", None if metric else 80, minimum=1)
    if cpu is None and metric is None:
        raise SpecError(f"{r.path} needs targetCPUUtilizationPercentage or metric (something to scale on)")
    if cpu is not None and resources and "cpu" not in (resources.get("requests") or {}):
        # The HPA computes utilization against the request: without one it never scales.
        raise SpecError(f"{r.path}.targetCPUUtilizationPercentage needs spec.serving.resources.requests.cpu "
                        "(utilization is a percentage of the CPU request)")
    return Autoscaling(min_replicas=low, max_replicas=high, target_cpu_utilization=cpu, metric=metric)


def _serving(r: Reader) -> Serving:
    resources = r.mapping("resources")
    return Serving(
        replicas=r.req_int("replicas", 1, minimum=0),
        runtime=r.enum("runtime", DEEPSPARSE_RUNTIME, RUNTIMES),
        image=r.text("image"),
        port=r.req_int("port", DEFAULT_PORT, minimum=1, maximum=65535),
        batch_size=r.req_int("batchSize", 1, minimum=1),
        num_cores=r.integer("numCores", None, minimum=1),
        resources=resources,
        node_selector=r.string_map("nodeSelector"),
        tolerations=r.objects("tolerations"),
        affinity=r.mapping("affinity"),
        image_pull_secrets=_pull_secrets(r),
        progress_deadline_seconds=r.req_int("progressDeadlineSeconds", 600, minimum=30),
        autoscaling=_autoscaling(r.sub("autoscaling"), resources) if r.present("autoscaling") else None,
        network_policy=_network_policy(r.sub("networkPolicy")) if r.present("networkPolicy") else None,
    )


def _network_policy(r: Reader) -> NetworkPolicy:
    return NetworkPolicy(inference_from=peers(r, "from"), metrics_from=peers(r, "metricsFrom"))


def _roboflow(r: Reader, settings: Settings, fallback: RoboflowRef | None = None) -> RoboflowRef:
    """Roboflow coordinates; each missing one falls back to `fallback` (dataLogging's) if given."""

    def pick(key: str) -> str:
        value = r.text(key)
        if not value and fallback is not None:
            value = getattr(fallback, {"apiUrl": "api_url"}.get(key, key))
        if not value:
            hint = " (or set spec.dataLogging.roboflow)" if r.path.startswith("spec.training") else ""
            raise SpecError(f"{r.path}.{key} is required{hint}")
        return value

    if r.has("apiKeySecretRef"):
        key = r.secret_ref("apiKeySecretRef", "apiKey")
    elif fallback is not None:
        key = fallback.api_key
    else:
        hint = " (or set spec.dataLogging.roboflow)" if r.path.startswith("spec.training") else ""
        raise SpecError(f"{r.path}.apiKeySecretRef is required: the Secret holding the Roboflow API key{hint}")
    api_url = r.text("apiUrl") or (fallback.api_url if fallback else settings.roboflow_api_url)
    if not api_url.startswith(("https://", "http://")):
        raise SpecError(f"{r.path}.apiUrl must be an http(s) URL, got {api_url!r}")
    no_credentials(api_url, f"{r.path}.apiUrl")
    allowed = settings.allowed_roboflow_urls
    if api_url.rstrip("/") not in allowed:
        # The API key is sent to this URL (by the operator's poll, the server and the trainer):
        # only the operator's administrator decides where it may go.
        raise SpecError(f"{r.path}.apiUrl {api_url!r} is not an allowed Roboflow API URL; this operator allows "
                        f"{', '.join(allowed)} (its administrator sets KONTINUAL_ROBOFLOW_API_URLS, chart value "
                        "roboflow.allowedApiUrls)")
    return RoboflowRef(
        workspace=pick("workspace"),
        project=pick("project"),
        api_key=key,
        api_url=api_url.rstrip("/"),
        split=r.enum("split", "train", ("train", "valid", "test")),
        batch=r.text("batch", "production"),
        tags=r.strings("tags", ("production",)),
    )


def _data_logging(r: Reader, settings: Settings) -> DataLogging:
    return DataLogging(
        roboflow=_roboflow(r.sub("roboflow"), settings),
        frequency=r.req_int("frequency", 100, minimum=1),
        max_per_minute=r.req_int("maxPerMinute", 60, minimum=1),
        upload_predictions=r.flag("uploadPredictions", False),
        queue_size=r.req_int("queueSize", 100, minimum=1),
        metrics_port=r.req_int("metricsPort", DEFAULT_METRICS_PORT, minimum=1, maximum=65535),
    )


def _fires(schedule: str) -> bool:
    """Whether a valid cron expression names a real date (croniter raises on `0 0 31 2 *`)."""
    try:
        croniter(schedule, CRON_PROBE_START).get_next(datetime.datetime)
    except (ValueError, KeyError, OverflowError):  # CroniterBadDateError is a ValueError
        return False
    return True


def _recipe_uri(uri: str) -> str:
    name = builtin_recipe(uri)
    if name is not None and name not in BUILTIN_RECIPES:
        raise SpecError(f"spec.training.recipe.uri {uri!r}: no such built-in recipe; expected one of "
                        f"{', '.join(BUILTIN_RECIPE_SCHEME + known for known in BUILTIN_RECIPES)}")
    return no_credentials(uri, "spec.training.recipe.uri")


def _training(r: Reader, settings: Settings, logging: DataLogging | None) -> Training:
    trigger = r.sub("trigger")
    schedule = trigger.text("schedule") or None
    if schedule is not None and not (CRON_RE.match(schedule) and croniter.is_valid(schedule)):
        raise SpecError(f"spec.training.trigger.schedule must be a 5-field cron expression (UTC), got {schedule!r}")
    if schedule is not None and not _fires(schedule):
        raise SpecError(f"spec.training.trigger.schedule {schedule!r} never fires (no such date, e.g. February 31): "
                        "give a schedule that names a real day")
    recipe = r.sub("recipe")
    if recipe.has("configMapRef") and recipe.has("uri"):
        raise SpecError("spec.training.recipe: set configMapRef or uri, not both")
    dataset = r.sub("dataset")
    version = str(dataset.data.get("version", "latest"))
    if not VERSION_RE.match(version):
        raise SpecError(f"spec.training.dataset.version must be 'latest' or a version number, got {version!r}")
    generation = Generation(
        enabled=dataset.flag("generate", True),
        preprocessing=dataset.mapping("preprocessing"),
        augmentation=dataset.mapping("augmentation"),
        timeout_seconds=dataset.req_int("generateTimeoutSeconds", DEFAULT_GENERATE_TIMEOUT_SECONDS, minimum=30),
    )
    image_size = r.req_int("imageSize", 640, minimum=32)
    if image_size % 32:
        raise SpecError(f"spec.training.imageSize must be a multiple of 32 (YOLOv5 strides), got {image_size}")
    return Training(
        dataset=_roboflow(dataset, settings, logging.roboflow if logging else None),
        dataset_version=version,
        generation=generation,
        trigger=Trigger(schedule=schedule, min_new_labeled_images=trigger.integer("minNewLabeledImages", None, minimum=1)),
        base_weights=no_credentials(r.text("baseWeights"), "spec.training.baseWeights"),
        recipe=Recipe(
            config_map=recipe.secret_ref("configMapRef", "recipe.yaml") if recipe.has("configMapRef") else None,
            uri=_recipe_uri(recipe.text("uri")) or None,
        ),
        epochs=r.req_int("epochs", 50, minimum=1),
        image_size=image_size,
        batch_size=r.req_int("batchSize", 16, minimum=1),
        device=r.enum("device", "auto", ("auto", "cpu", "cuda")),
        image=r.text("image"),
        resources=r.mapping("resources"),
        node_selector=r.string_map("nodeSelector"),
        tolerations=r.objects("tolerations"),
        affinity=r.mapping("affinity"),
        image_pull_secrets=_pull_secrets(r),
        active_deadline_seconds=r.req_int("activeDeadlineSeconds", 86400, minimum=60),
        backoff_limit=r.req_int("backoffLimit", 1, minimum=0),
        ttl_seconds_after_finished=r.req_int("ttlSecondsAfterFinished", 86400, minimum=0),
    )


def _storage(r: Reader, name: str) -> Storage:
    pvc = r.sub("pvc")
    claim = pvc.name("claimName")
    modes = pvc.strings("accessModes", ("ReadWriteOnce",))
    return Storage(
        claim_name=claim or f"{name}-models",
        create=not claim,
        size=pvc.text("size", "10Gi"),
        storage_class=pvc.text("storageClassName") or None,
        access_modes=modes,
    )


def _rollout(r: Reader) -> Rollout:
    gate = r.sub("gate")
    return Rollout(
        gate=Gate(metric=gate.enum("metric", "mAP50", ("mAP50", "mAP50_95")), min_delta=gate.number("minDelta", 0.0),
                  min_value=_fraction(gate, "minValue", DEFAULT_MIN_VALUE)),
        history_limit=r.req_int("historyLimit", 5, minimum=1, maximum=50),
        pinned_version=r.integer("pinnedVersion", None, minimum=1),
    )


def _unique(r: Reader, key: str) -> tuple[str, ...]:
    names = r.strings(key)
    if len(set(names)) != len(names):
        raise SpecError(f"{r.path}.{key} must not repeat a name, got {list(names)!r}")
    return names


def _fraction(r: Reader, key: str, default: float) -> float:
    value = r.number(key, default)
    if not 0.0 <= value <= 1.0:
        raise SpecError(f"{r.path}.{key} must be between 0 and 1 (an mAP), got {value}")
    return value


def parse(body: Mapping[str, Any], settings: Settings | None = None) -> Spec:
    """The whole ContinualModel object (metadata + spec) -> Spec, or SpecError naming the field."""
    settings = settings or Settings()
    meta = Reader(body.get("metadata"), "metadata")
    name = meta.text("name", required=True)
    if not DNS1035_RE.match(name) or len(name) > 45:
        # NAME-server is a Service name (DNS-1035: starts with a letter); NAME-train-N must stay
        # under the 63-character label limit.
        raise SpecError(f"metadata.name must start with a letter, hold only lowercase letters, digits and '-', "
                        f"and be at most 45 characters, got {name!r}")
    namespace = meta.text("namespace", "default")
    if not NAME_RE.match(namespace) or len(namespace) > 63:
        raise SpecError(f"metadata.namespace must be a DNS-1123 label, got {namespace!r}")
    generation = meta.req_int("generation", 0, minimum=0)
    limits.check(body.get("spec"))  # before anything reads it: an oversized list is refused, not parsed
    r = Reader(body.get("spec"), "spec")
    task = r.enum("task", "yolo", ("yolo",))
    model_reader = r.sub("model")
    model = ModelSource.parse(model_reader.text("uri", required=True), "spec.model.uri")
    model_class_names = _unique(model_reader, "classNames")
    logging = _data_logging(r.sub("dataLogging"), settings) if r.present("dataLogging") else None
    class_names = _unique(r, "classNames")
    if logging and logging.upload_predictions and not class_names:
        raise SpecError("spec.classNames (the Roboflow project's class names) is required when "
                        "spec.dataLogging.uploadPredictions is true: predictions are uploaded as "
                        "pre-annotations only while the served model's classes are the project's")
    training = _training(r.sub("training"), settings, logging) if r.present("training") else None
    if training is not None and not training.base_weights and model.scheme != "zoo":
        # The default start is the served stub's transfer checkpoint; an ONNX file cannot be trained on.
        raise SpecError(f"spec.training.baseWeights is required when spec.model.uri is not a zoo: stub (got "
                        f"{model.scheme}: an ONNX model cannot be trained on); set it to {BASE_WEIGHTS_FORMS}")
    storage = _storage(r.sub("storage"), name)
    serving = _serving(r.sub("serving"))
    if serving.runtime != DEEPSPARSE_RUNTIME and model.scheme == "zoo":
        raise SpecError(f"spec.model.uri {model.uri!r} is a SparseZoo stub, which only DeepSparse resolves; "
                        f"spec.serving.runtime {serving.runtime} serves an ONNX file: use https://..., "
                        "pvc://<claim>/<path> or file:///<path>, or runtime deepsparse")
    if logging and logging.metrics_port == serving.port:
        raise SpecError(f"spec.dataLogging.metricsPort must differ from spec.serving.port (both are {serving.port}): "
                        "the server pod listens for inference and for metrics on separate ports")
    return Spec(
        name=name,
        namespace=namespace,
        uid=meta.text("uid"),
        generation=generation,
        task=task,
        model=model,
        serving=serving,
        storage=storage,
        rollout=_rollout(r.sub("rollout")),
        class_names=class_names,
        model_class_names=model_class_names,
        data_logging=logging,
        training=training,
    )
