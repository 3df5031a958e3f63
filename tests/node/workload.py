"""What the real-node tests and benchmarks do on the node: install the chart, run one ContinualModel, load it.

Shared by tests/node/test_the_loop.py and benchmarks/rollout_on_node.py, so the benchmark measures
exactly the loop the tests check.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client
from PIL import Image

from tests.e2e.kube import GROUP, PLURAL, SECRET_LABEL, VERSION, AdminApis
from tests.support.models import build_yolo_onnx
from tests.support.tools import helm_binary

ROOT = Path(__file__).resolve().parents[2]
NAMESPACE = "vision"
OPERATOR_NAMESPACE = "kontinual-system"
NAME = "loop"
CLAIM = f"{NAME}-models"
PROJECT = "soccer-players"
API_KEY = "node-roboflow-key-do-not-leak-4711"
IMAGE_SIZE = 64


@dataclass(frozen=True)
class RealNode(AdminApis):
    """A running node as tests see it: its state (tests.node.node.Node) and an admin client."""

    node: Any
    admin: client.ApiClient
    state_dir: Path

    @property
    def logs(self) -> Path:
        return self.state_dir / "logs"


def make_models_volume(node: RealNode) -> Path:
    """A real PersistentVolume (hostPath on the node) for the model claim, holding the seed model."""
    path = node.state_dir / "volumes" / CLAIM
    (path / "seed").mkdir(parents=True)
    build_yolo_onnx(path / "seed" / "model.onnx", nc=2, image_size=IMAGE_SIZE, confident_class=0)
    os.chmod(path, 0o777)  # the trainer (uid 10001) writes v<N>/ here; hostPath has no fsGroup
    node.core.create_persistent_volume({
        "metadata": {"name": f"{NAMESPACE}-{CLAIM}"},
        "spec": {"capacity": {"storage": "10Gi"}, "accessModes": ["ReadWriteOnce"],
                 "persistentVolumeReclaimPolicy": "Retain", "hostPath": {"path": str(path), "type": "Directory"},
                 "claimRef": {"namespace": NAMESPACE, "name": CLAIM}}})
    return path


def install_chart(node: RealNode, images: dict[str, str], roboflow_url: str) -> dict[str, str]:
    """`helm install` of helm/kontinual with the images built here (pull policy Never: no registry)."""
    values = {}
    for key, image in (("image", "operator"), ("serverImage", "server"), ("trainerImage", "trainer"),
                       ("serverOpenvinoImage", "server-openvino")):
        repository, tag = images[image].rsplit(":", 1)
        values[f"{key}.repository"], values[f"{key}.tag"] = repository, tag
    proc = subprocess.run([
        str(helm_binary()), "install", "kontinual", str(ROOT / "helm/kontinual"), "--kubeconfig", node.node.kubeconfig,
        "--namespace", OPERATOR_NAMESPACE, "--create-namespace", "--skip-crds",
        *[arg for key, value in values.items() for arg in ("--set", f"{key}={value}")],
        "--set", "image.pullPolicy=Never", "--set", f"roboflow.apiUrl={roboflow_url}",
        "--set", "logging.level=INFO", "--wait", "--timeout", "5m"], capture_output=True, text=True, timeout=400)
    if proc.returncode != 0:
        raise AssertionError(f"helm install failed: {proc.stderr}\n{operator_log(node)}")
    return values


def create_model(node: RealNode) -> None:
    node.core.create_namespace({"metadata": {"name": NAMESPACE}})
    # Labelled by its owner for ContinualModels' use: the operator reads no other Secret.
    node.core.create_namespaced_secret(NAMESPACE, {"metadata": {"name": "roboflow", "labels": {SECRET_LABEL: "true"}},
                                                   "stringData": {"apiKey": API_KEY}})
    node.custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, continual_model())


def model_now(node: RealNode) -> dict[str, Any]:
    return node.custom.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, NAME)


def status_text(node: RealNode) -> str:
    return yaml.safe_dump(model_now(node).get("status"), sort_keys=False)


def condition(node: RealNode, kind: str) -> dict[str, Any]:
    return next((c for c in model_now(node).get("status", {}).get("conditions", []) if c["type"] == kind), {})


def operator_log(node: RealNode) -> str:
    try:
        pods = node.core.list_namespaced_pod(OPERATOR_NAMESPACE).items
        return "\n".join(node.core.read_namespaced_pod_log(p.metadata.name, OPERATOR_NAMESPACE, tail_lines=80)
                         for p in pods)
    except Exception as error:  # noqa: BLE001 - diagnostics only
        return f"(no operator log: {error})"


def continual_model() -> dict[str, Any]:
    small = {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "3Gi"}}
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "ContinualModel",
        "metadata": {"name": NAME, "namespace": NAMESPACE},
        "spec": {
            "model": {"uri": f"pvc://{CLAIM}/seed/model.onnx"},
            "classNames": ["ball", "player"],
            "serving": {"resources": small},
            "storage": {"pvc": {"size": "10Gi"}},
            "dataLogging": {"frequency": 1, "uploadPredictions": True, "roboflow": {
                "workspace": "acme", "project": PROJECT, "apiKeySecretRef": {"name": "roboflow"}}},
            # The double serves the dataset versions the test adds; it cannot generate new ones.
            "training": {"dataset": {"version": "1"}, "epochs": 1, "imageSize": IMAGE_SIZE, "batchSize": 4,
                         "backoffLimit": 0,
                         "baseWeights": "yolov5n.yaml", "device": "cpu",
                         "resources": {"requests": {"cpu": "100m", "memory": "512Mi"}, "limits": {"memory": "6Gi"}}},
            "rollout": {"gate": {"metric": "mAP50", "minDelta": 0.0, "minValue": 0.0}},  # 1 epoch: any mAP
        },
    }


def service_url(node: RealNode) -> str:
    service = node.core.read_namespaced_service(f"{NAME}-server", NAMESPACE)
    return f"http://{service.spec.cluster_ip}:{service.spec.ports[0].port}/v2/models/{NAME}/infer/from_files"


def jpeg(seed: int = 0) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), (120 + seed % 100, 60, 30)).save(buffer, format="JPEG")
    return buffer.getvalue()


def infer(url: str, image: bytes, timeout: float = 30) -> tuple[int, dict[str, Any] | str]:
    boundary = "kontinual-node-test"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"request\"; filename=\"img.jpg\"\r\n"
            "Content-Type: image/jpeg\r\n\r\n").encode() + image + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")
    except OSError as error:
        return 0, f"{type(error).__name__}: {error}"


def answer_key(answer: dict[str, Any] | str) -> str:
    """What identifies the model that answered: its labels and boxes, rounded."""
    if not isinstance(answer, dict):
        return f"error: {answer}"
    boxes = [[round(v, 1) for v in box] for box in answer.get("boxes", [[]])[0]]
    return json.dumps({"labels": answer.get("labels"), "boxes": boxes}, sort_keys=True)


@dataclass
class Load:
    """Requests through the Service, one after another, until stopped; every outcome recorded."""

    url: str
    image: bytes
    results: list[tuple[float, int, str, float]] = field(default_factory=list)  # (t, status, key, latency)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            began = time.monotonic()
            status, answer = infer(self.url, self.image, timeout=20)
            self.results.append((began, status, answer_key(answer), time.monotonic() - began))
            time.sleep(0.1)

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=30)


def request_training(node: RealNode, value: str) -> None:
    node.custom.patch_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, NAME, {
        "metadata": {"annotations": {f"{GROUP}/train-request": value}}})


def serving_version(node: RealNode) -> int | None:
    return (model_now(node).get("status", {}).get("serving") or {}).get("version")


def rollout_done(node: RealNode, version: int) -> bool:
    deployment = node.apps.read_namespaced_deployment(f"{NAME}-server", NAMESPACE)
    pods = node.core.list_namespaced_pod(NAMESPACE, label_selector="app.kubernetes.io/component=server").items
    annotations = {(p.metadata.annotations or {}).get("kontinual.io/model-version") for p in pods}
    return (deployment.status.updated_replicas == deployment.status.replicas == deployment.status.ready_replicas
            and annotations == {str(version)} and serving_version(node) == version)


