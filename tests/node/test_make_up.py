"""`make up`'s steps on the real node: hack/install.sh and hack/uninstall.sh as they are, kind aside.

hack/up.sh creates a kind cluster, builds the three images and `kind load`s them, then runs
hack/install.sh. Here the node's Docker already holds the tier's images (tests/node/images.py),
so the test runs hack/install.sh verbatim with their tags, adding only a SparseZoo mirror flag
(examples/minimal.yaml serves a zoo: stub; no test may reach past this machine, so the SparseZoo
double on the node IP answers it). It then checks what a user of `make up` would: the script
said Ready, the operator pod is Ready, the example ContinualModel is Ready, an image sent through
the Service gets a YOLO answer, and the printed port-forward and curl commands work; last,
hack/uninstall.sh (`make down` short of deleting the cluster) leaves nothing of it behind.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.e2e.kube import GROUP, PLURAL, VERSION
from tests.node.conftest import CRD_FILE, TIMINGS
from tests.node.node import NODE_IP
from tests.node.workload import ROOT, RealNode, infer, jpeg
from tests.support.sparsezoo_double import SparseZooDouble
from tests.support.tools import helm_binary, kubectl_binary
from tests.support.zoo_models import coco_stand_in

EXAMPLE = yaml.safe_load((ROOT / "examples/minimal.yaml").read_text())
MODEL = EXAMPLE["metadata"]["name"]
MODEL_NAMESPACE = "default"  # the example names none: kubectl applies it in the context's namespace
OPERATOR_NAMESPACE = "kontinual-system"
CRD = "continualmodels.kontinual.io"


def script_env(node: RealNode, images: dict[str, str]) -> dict[str, str]:
    """What a user's shell holds after `make up` built and loaded the images: their tags, the cluster."""
    tags = {name: ref.rsplit(":", 1)[1] for name, ref in images.items()}
    assert all(ref == f"kontinual/{name}:{tags[name]}" for name, ref in images.items()), images
    return {**os.environ, "KUBECONFIG": node.node.kubeconfig, "HELM": str(helm_binary()),
            "KUBECTL": str(kubectl_binary()), "KONTINUAL_OPERATOR_TAG": tags["operator"],
            "KONTINUAL_SERVER_TAG": tags["server"], "KONTINUAL_TRAINER_TAG": tags["trainer"],
            "KONTINUAL_SERVER_OPENVINO_TAG": tags["server-openvino"],
            "KONTINUAL_WAIT": "10m"}


def run_script(script: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(ROOT / "hack" / script), *args], capture_output=True, text=True,
                          env=env, timeout=900)


@pytest.fixture(scope="module")
def zoo(node: RealNode, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SparseZooDouble]:
    """The example's stub in the SparseZoo double on the node IP: an 80-class stand-in seeing "sports ball"."""
    with SparseZooDouble(host=NODE_IP) as double:
        double.add_model(EXAMPLE["spec"]["model"]["uri"], coco_stand_in(tmp_path_factory.mktemp("zoo"), 128))
        yield double


@pytest.fixture(scope="module")
def installed(node: RealNode, images: dict[str, str], zoo: SparseZooDouble) -> Iterator[str]:
    """hack/install.sh's output. Afterwards the node is as the tier found it: uninstalled, the CRD back."""
    env = script_env(node, images)
    started = time.monotonic()
    proc = run_script("install.sh", env, "--set", f"sparsezoo.apiUrl={zoo.url}")
    TIMINGS["hack/install.sh (helm install, example Ready)"] = time.monotonic() - started
    try:
        assert proc.returncode == 0, f"hack/install.sh failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        yield proc.stdout
    finally:
        if crd_exists(node) or namespace_exists(node, OPERATOR_NAMESPACE):
            run_script("uninstall.sh", env)  # the uninstall test failed or did not run: best effort
        kubectl = [str(kubectl_binary()), "--kubeconfig", node.node.kubeconfig]
        subprocess.run([*kubectl, "apply", "--server-side", "-f", str(CRD_FILE)], check=True, capture_output=True)
        subprocess.run([*kubectl, "wait", "--for=condition=Established", "--timeout=60s", f"crd/{CRD}"],
                       check=True, capture_output=True)


def crd_exists(node: RealNode) -> bool:
    try:
        client.ApiextensionsV1Api(node.admin).read_custom_resource_definition(CRD)
        return True
    except ApiException as error:
        if error.status == 404:
            return False
        raise


def namespace_exists(node: RealNode, name: str) -> bool:
    return any(n.metadata.name == name for n in node.core.list_namespace().items)


def model_conditions(node: RealNode) -> dict[str, dict[str, Any]]:
    model = node.custom.get_namespaced_custom_object(GROUP, VERSION, MODEL_NAMESPACE, PLURAL, MODEL)
    return {c["type"]: c for c in model.get("status", {}).get("conditions", [])}


def assert_yolo_answer(answer: dict[str, Any] | str) -> None:
    """DeepSparse's YOLO schema for one image: boxes [[x1, y1, x2, y2], ...], scores and labels, per image."""
    assert isinstance(answer, dict), answer
    boxes, scores, labels = answer["boxes"], answer["scores"], answer["labels"]
    assert len(boxes) == len(scores) == len(labels) == 1, answer  # one image sent
    assert boxes[0] and len(boxes[0]) == len(scores[0]) == len(labels[0]), answer
    assert all(len(box) == 4 and all(isinstance(v, (int, float)) for v in box) for box in boxes[0]), answer
    assert all(0.0 <= s <= 1.0 for s in scores[0]), answer
    assert set(labels[0]) == {"sports ball"}, labels  # COCO names: what the stand-in sees everywhere


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_install_says_the_example_is_ready_and_how_to_reach_it(installed: str) -> None:
    assert f"Kontinual is up: ContinualModel '{MODEL}' is Ready." in installed
    assert f"kubectl port-forward service/{MODEL}-server 5543:5543 &" in installed
    assert "hack/uninstall.sh" in installed


def test_the_operator_pods_are_ready_with_the_loaded_image_and_one_leads(node: RealNode, installed: str,
                                                                        images: dict[str, str]) -> None:
    pods = node.core.list_namespaced_pod(OPERATOR_NAMESPACE).items
    assert len(pods) == 2  # the chart's replicaCount: a leader and a standby
    for pod in pods:
        assert pod.spec.containers[0].image == images["operator"]
        assert pod.spec.containers[0].image_pull_policy == "Never"
        ready = {c.type: c.status for c in pod.status.conditions}["Ready"]
        assert ready == "True" and all(s.ready for s in pod.status.container_statuses)
    lease = client.CoordinationV1Api(node.admin).read_namespaced_lease("kontinual", OPERATOR_NAMESPACE)
    assert str(lease.spec.holder_identity).rpartition("_")[0] in {p.metadata.name for p in pods}


def test_the_example_is_ready_and_served_from_the_zoo_stub(node: RealNode, installed: str,
                                                           zoo: SparseZooDouble, images: dict[str, str]) -> None:
    conditions = model_conditions(node)
    assert conditions["Ready"]["status"] == "True", conditions
    (pod,) = node.core.list_namespaced_pod(MODEL_NAMESPACE, label_selector=f"kontinual.io/model={MODEL}").items
    assert pod.spec.containers[0].image == images["server"]
    assert all(s.ready for s in pod.status.container_statuses)
    assert any(path.endswith("/deployment/model.onnx") for path in zoo.downloads()), zoo.requests


def test_an_image_sent_through_the_service_gets_a_yolo_answer(node: RealNode, installed: str) -> None:
    service = node.core.read_namespaced_service(f"{MODEL}-server", MODEL_NAMESPACE)
    url = f"http://{service.spec.cluster_ip}:{service.spec.ports[0].port}/v2/models/{MODEL}/infer/from_files"
    status, answer = infer(url, jpeg(3))
    assert status == 200, answer
    assert_yolo_answer(answer)


def test_the_printed_port_forward_and_curl_commands_answer(node: RealNode, installed: str, tmp_path: Path) -> None:
    forward = re.search(r"^  (kubectl .*port-forward .*) &$", installed, re.M)
    curl = re.search(r"^  (curl .*)$", installed, re.M)
    assert forward and curl, installed
    port = free_port()  # 5543 may be taken on this machine: only the local port differs from the printed line
    forward_args = forward.group(1).replace(" 5543:5543", f" {port}:5543").split()
    curl_args = curl.group(1).replace("127.0.0.1:5543", f"127.0.0.1:{port}").split()
    (tmp_path / "img.jpg").write_bytes(jpeg(5))
    env = {**os.environ, "KUBECONFIG": node.node.kubeconfig}
    proxy = subprocess.Popen([str(kubectl_binary()), *forward_args[1:]], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        assert proxy.stdout is not None
        line = proxy.stdout.readline()
        assert "Forwarding from 127.0.0.1" in line, line + (proxy.stdout.read() if proxy.poll() is not None else "")
        answer = subprocess.run([*curl_args, "-sS", "--fail-with-body", "--max-time", "30"], cwd=tmp_path,
                                capture_output=True, text=True, timeout=60)
        assert answer.returncode == 0, answer.stderr + answer.stdout
        assert_yolo_answer(json.loads(answer.stdout))
    finally:
        proxy.terminate()
        proxy.wait(timeout=10)


def test_uninstall_leaves_nothing_of_make_up_behind(node: RealNode, images: dict[str, str], installed: str) -> None:
    started = time.monotonic()
    proc = run_script("uninstall.sh", script_env(node, images))
    TIMINGS["hack/uninstall.sh"] = time.monotonic() - started
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    assert "Kontinual is uninstalled" in proc.stdout
    selector = f"kontinual.io/model={MODEL}"
    assert not node.core.list_namespaced_pod(MODEL_NAMESPACE, label_selector=selector).items
    assert not node.apps.list_namespaced_deployment(MODEL_NAMESPACE, label_selector=selector).items
    assert not node.core.list_namespaced_service(MODEL_NAMESPACE, label_selector=selector).items
    assert not node.core.list_namespaced_config_map(MODEL_NAMESPACE, label_selector=selector).items
    assert not namespace_exists(node, OPERATOR_NAMESPACE)
    assert not crd_exists(node)
    releases = subprocess.run([str(helm_binary()), "list", "--all-namespaces", "--all", "-q", "--kubeconfig",
                               node.node.kubeconfig], capture_output=True, text=True, check=True).stdout
    assert releases.strip() == "", releases
    rbac = client.RbacAuthorizationV1Api(node.admin)
    left = [r.metadata.name for r in [*rbac.list_cluster_role().items, *rbac.list_cluster_role_binding().items]
            if r.metadata.name.startswith("kontinual")]
    assert not left, f"the chart's cluster-wide RBAC outlived the release: {left}"
