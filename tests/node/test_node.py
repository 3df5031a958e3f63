"""The node itself: real pods, a Job, a Service through kube-proxy, in-cluster API access, the guards."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client.rest import ApiException

from tests.e2e.kube import wait_for
from tests.node import host
from tests.node.node import POD_BRIDGE
from tests.node.workload import RealNode

NAMESPACE = "node-basics"
WEB = ("import http.server, socketserver\n"
       "class H(http.server.BaseHTTPRequestHandler):\n"
       "    def do_GET(self):\n"
       "        body = ('hello from ' + __import__('socket').gethostname()).encode()\n"
       "        self.send_response(200); self.send_header('Content-Length', str(len(body)))\n"
       "        self.end_headers(); self.wfile.write(body)\n"
       "http.server.ThreadingHTTPServer(('0.0.0.0', 8080), H).serve_forever()\n")


@pytest.fixture(scope="module")
def namespace(node: RealNode) -> str:
    node.core.create_namespace({"metadata": {"name": NAMESPACE}})
    wait_for("the default ServiceAccount's token", lambda: node.core.read_namespaced_service_account(
        "default", NAMESPACE).secrets)
    return NAMESPACE


def pod_phase(node: RealNode, name: str) -> str:
    return node.core.read_namespaced_pod(name, NAMESPACE).status.phase


def pod_log(node: RealNode, name: str) -> str:
    """The pod's log through apiserver -> kubelet (raw bytes: the client would repr() them)."""
    return node.core.read_namespaced_pod_log(name, NAMESPACE, _preload_content=False).data.decode()


def container(name: str, image: str, command: list[str], **extra: Any) -> dict[str, Any]:
    return {"name": name, "image": image, "imagePullPolicy": "Never", "command": command, **extra}


def test_pod_behind_a_service_answers_on_its_cluster_ip(node: RealNode, namespace: str, base_image: str) -> None:
    labels = {"app": "web"}
    node.core.create_namespaced_pod(namespace, {
        "metadata": {"name": "web", "labels": labels},
        "spec": {"containers": [container("web", base_image, ["python3", "-c", WEB], ports=[
            {"name": "http", "containerPort": 8080}], readinessProbe={
            "httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1})]}})
    node.core.create_namespaced_service(namespace, {
        "metadata": {"name": "web"},
        "spec": {"selector": labels, "ports": [{"port": 80, "targetPort": "http"}]}})
    started = time.monotonic()
    wait_for("pod web Ready", lambda: any(c.type == "Ready" and c.status == "True" for c in
                                          node.core.read_namespaced_pod("web", namespace).status.conditions or []),
             timeout=120, diagnose=lambda: str(node.core.read_namespaced_pod("web", namespace).status))
    ready_s = time.monotonic() - started
    pod = node.core.read_namespaced_pod("web", namespace)
    assert pod.status.pod_ip.startswith("10.244.0."), pod.status.pod_ip
    cluster_ip = node.core.read_namespaced_service("web", namespace).spec.cluster_ip

    def answer() -> str | None:
        try:
            with urllib.request.urlopen(f"http://{cluster_ip}/", timeout=2) as response:
                return response.read().decode()
        except OSError:
            return None
    assert wait_for(f"an answer on {cluster_ip}:80", answer, timeout=30) == "hello from web"
    print(f"pod Ready {ready_s:.1f} s after create; served through ClusterIP {cluster_ip}")


def test_job_runs_to_completion_and_its_log_is_readable(node: RealNode, namespace: str, base_image: str) -> None:
    node.batch.create_namespaced_job(namespace, {
        "metadata": {"name": "hello"},
        "spec": {"backoffLimit": 0, "template": {"spec": {"restartPolicy": "Never", "containers": [
            container("hello", base_image, ["python3", "-c", "import sys; print('job ran on', sys.version[:6]);"
                                                              "open('/dev/termination-log','w').write('{\"ok\":1}')"])]}}}})
    wait_for("Job hello to succeed", lambda: node.batch.read_namespaced_job("hello", namespace).status.succeeded,
             timeout=120, diagnose=lambda: str(node.batch.read_namespaced_job("hello", namespace).status))
    pod = node.core.list_namespaced_pod(namespace, label_selector="job-name=hello").items[0]
    terminated = pod.status.container_statuses[0].state.terminated
    assert terminated.exit_code == 0
    assert json.loads(terminated.message) == {"ok": 1}  # the kubelet read the termination message
    log = pod_log(node, pod.metadata.name)
    assert log.startswith("job ran on 3.11"), log


def test_pod_reaches_the_api_server_in_cluster_with_its_token(node: RealNode, namespace: str,
                                                              base_image: str) -> None:
    script = ("import json, os, ssl, urllib.request\n"
              "sa = '/var/run/secrets/kubernetes.io/serviceaccount'\n"
              "ctx = ssl.create_default_context(cafile=sa + '/ca.crt')\n"
              "url = 'https://%s:%s/version' % (os.environ['KUBERNETES_SERVICE_HOST'], os.environ['KUBERNETES_SERVICE_PORT'])\n"
              "req = urllib.request.Request(url, headers={'Authorization': 'Bearer ' + open(sa + '/token').read()})\n"
              "print(json.load(urllib.request.urlopen(req, context=ctx, timeout=10))['gitVersion'])\n")
    node.core.create_namespaced_pod(namespace, {
        "metadata": {"name": "in-cluster"},
        "spec": {"restartPolicy": "Never", "containers": [container("c", base_image, ["python3", "-c", script])]}})
    wait_for("pod in-cluster to finish", lambda: pod_phase(node, "in-cluster") in ("Succeeded", "Failed"),
             timeout=120)
    log = pod_log(node, "in-cluster")
    assert pod_phase(node, "in-cluster") == "Succeeded", log
    assert log.strip().startswith("v1.20."), log  # /version: the control plane's own release


def test_nothing_leaves_the_machine(node: RealNode, namespace: str, base_image: str) -> None:
    """A pod's packet for an outside address is dropped here (counted by the FORWARD guard), and the
    kubelet never tried the cloud metadata address."""
    before = host.guard_packets("FORWARD", POD_BRIDGE, table="mangle")
    script = ("import socket\n"
              "s = socket.socket(); s.settimeout(3)\n"
              "try:\n    s.connect(('203.0.113.7', 80)); print('CONNECTED')\n"
              "except OSError as e:\n    print('refused:', type(e).__name__)\n")
    node.core.create_namespaced_pod(namespace, {
        "metadata": {"name": "outbound"},
        "spec": {"restartPolicy": "Never", "containers": [container("c", base_image, ["python3", "-c", script])]}})
    wait_for("pod outbound to finish", lambda: pod_phase(node, "outbound") == "Succeeded", timeout=120)
    log = pod_log(node, "outbound")
    assert log.startswith("refused:"), log
    # Dropped by the FORWARD guard, or never forwarded at all where the host forwards nothing.
    forwarding = Path("/proc/sys/net/ipv4/ip_forward").read_text().strip() == "1"
    assert host.guard_packets("FORWARD", POD_BRIDGE, table="mangle") > before or not forwarding
    assert host.guard_packets("OUTPUT", host.METADATA_CIDR) == 0


def test_no_pod_is_left_pending(node: RealNode, namespace: str) -> None:
    try:
        pods = node.core.list_namespaced_pod(namespace).items
    except ApiException as error:  # pragma: no cover - diagnostic
        raise AssertionError(error) from error
    assert not [p.metadata.name for p in pods if p.status.phase == "Pending"]
