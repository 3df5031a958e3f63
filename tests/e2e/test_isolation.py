"""One tenant's slow Roboflow stalls nobody: on the real control plane, with the chart's RBAC.

Ten ContinualModels (more than kopf's 8 workers) poll a fake Roboflow that drips one byte every
2 s and never finishes an answer; an unrelated ContinualModel's deleted Service must be back
within 5 s, and /healthz must answer (reporting the hanging polls) while they hang.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.request
from typing import Any

from kubernetes.client.rest import ApiException

from tests.e2e.conftest import Operator
from tests.e2e.kube import GROUP, PLURAL, VERSION, Cluster, condition, ensure_namespace, get_model, wait_for
from tests.cluster.plane import free_port
from tests.e2e.kube import SECRET_LABEL
from tests.support.badhttp import Dripping

NAMESPACE = "e2e-isolation"
SLOW = 10
KEY = "rf-isolation-key-5d1f"
DRIP_PORT = free_port()  # chosen before the operator starts, so that its allow-list can name the stand-in
OPERATOR_ENV = {"KONTINUAL_ROBOFLOW_POLL_SECONDS": "1", "KONTINUAL_ROBOFLOW_TIMEOUT_SECONDS": "4",
                "KONTINUAL_ROBOFLOW_API_URLS": f"http://127.0.0.1:{DRIP_PORT}"}


def slow_model(name: str, api_url: str) -> dict[str, Any]:
    roboflow = {"workspace": "acme", "project": "soccer", "apiUrl": api_url,
                "apiKeySecretRef": {"name": "roboflow", "key": "apiKey"}}
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ContinualModel",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {"model": {"uri": "zoo:cv/detection/yolov5-s/pytorch/ultralytics/coco/pruned_quant-aggressive_94"},
                     "training": {"dataset": roboflow, "trigger": {"minNewLabeledImages": 10}}}}


def service(cluster: Cluster, name: str) -> Any:
    try:
        return cluster.core.read_namespaced_service(name, NAMESPACE)
    except ApiException as error:
        if error.status == 404:
            return None
        raise


def health(kontinual: Operator) -> tuple[int, dict[str, Any]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{kontinual.health_port}/healthz", timeout=5) as response:
        return response.status, json.loads(response.read() or b"{}")


def test_a_dripping_roboflow_does_not_delay_an_unrelated_repair(cluster: Cluster, kontinual: Operator) -> None:
    ensure_namespace(cluster, NAMESPACE)
    cluster.core.create_namespaced_secret(NAMESPACE, {"metadata": {"name": "roboflow", "labels": {SECRET_LABEL: "true"}},
                                                      "data": {"apiKey": base64.b64encode(KEY.encode()).decode()}})
    with Dripping(interval=2.0, port=DRIP_PORT) as drip:
        for i in range(SLOW):
            cluster.custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL,
                                                           slow_model(f"slow-{i}", drip.url))
        wait_for("polls hanging on the dripping Roboflow", lambda: drip.open_now >= 4 or None, timeout=60)
        other = slow_model("other", drip.url)
        del other["spec"]["training"]
        cluster.custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, other)
        wait_for("the unrelated ContinualModel's Service", lambda: service(cluster, "other-server"), timeout=30)

        assert drip.open_now >= 1, "the polls must still hang while the repair is measured"
        cluster.core.delete_namespaced_service("other-server", NAMESPACE)
        deleted = time.monotonic()
        wait_for("the deleted Service back within 5 s", lambda: service(cluster, "other-server"), timeout=5)
        took = time.monotonic() - deleted
        print(f"\nService back {took:.2f} s after its deletion, with {drip.open_now} polls hanging")

        status, report = health(kontinual)
        assert status == 200 and "workers" in report, report

        model = wait_for("slow-0's second failed poll", lambda: (lambda m: m if ((m or {}).get("status") or {})
                         .get("training", {}).get("pollFailures", 0) >= 2 else None)(get_model(cluster, NAMESPACE, "slow-0")),
                         timeout=60)
        training = model["status"]["training"]
        assert "no complete answer within 4 s (a total deadline)" in training["pollError"]
        assert KEY not in json.dumps(model)
        assert condition(model, "Reconciled").get("status") == "True"
        for i in range(SLOW):
            cluster.custom.delete_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, f"slow-{i}")
    assert KEY not in kontinual.log_text()
