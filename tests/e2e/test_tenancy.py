"""A tenant who may only create ContinualModels gains none of the operator's powers (real API server, RBAC enforced).

The tenant is a ServiceAccount whose Role allows nothing but ContinualModels; it acts through
its own token. Another team's Secret, Service and ConfigMap live in the same namespace.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from tests.cluster.plane import kubeconfig_text
from tests.e2e.conftest import Operator, service_account_token
from tests.e2e.kube import (GROUP, PLURAL, SECRET_LABEL, VERSION, Cluster, apply_manifests, condition,
                            ensure_namespace, get_model, wait_for)

NAMESPACE = "e2e-tenancy"
TENANT = "tenant"
PASSWORD = "team-b-database-password-5f3a9c"
OTHER_TEAM = {"team": "b"}


class Listener:
    """The tenant's own TCP listener on 127.0.0.1: records every connection and byte it receives."""

    def __init__(self) -> None:
        self.socket = socket.create_server(("127.0.0.1", 0))
        self.socket.settimeout(0.2)
        self.received: list[bytes] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.socket.getsockname()[1]}"

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.socket.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(2)
                try:
                    self.received.append(conn.recv(65536) or b"<connected>")
                except OSError:
                    self.received.append(b"<connected>")

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.socket.close()


@pytest.fixture(scope="module")
def tenant(cluster: Cluster, operator: Operator, tmp_path_factory: pytest.TempPathFactory) -> client.ApiClient:
    """A client acting as a user whose only right is to manage ContinualModels in NAMESPACE."""
    ensure_namespace(cluster, NAMESPACE)
    apply_manifests(cluster.admin, [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": TENANT, "namespace": NAMESPACE}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": {"name": "continualmodels-only", "namespace": NAMESPACE},
         "rules": [{"apiGroups": [GROUP], "resources": [PLURAL],
                    "verbs": ["create", "get", "list", "watch", "delete"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": "tenant-continualmodels", "namespace": NAMESPACE},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "continualmodels-only"},
         "subjects": [{"kind": "ServiceAccount", "name": TENANT, "namespace": NAMESPACE}]},
    ])
    token = service_account_token(cluster, TENANT, NAMESPACE)
    path = Path(tmp_path_factory.mktemp("tenant")) / "tenant.kubeconfig"
    path.write_text(kubeconfig_text(cluster.server, cluster.ca_file, {"token": token},
                                    f"system:serviceaccount:{NAMESPACE}:{TENANT}"))
    api = config.new_client_from_config(config_file=str(path))
    # The premise: on its own, the tenant can neither read Secrets nor touch Services.
    for forbidden in (lambda: client.CoreV1Api(api).read_namespaced_secret("team-b-db", NAMESPACE),
                      lambda: client.CoreV1Api(api).list_namespaced_service(NAMESPACE)):
        with pytest.raises(ApiException) as denied:
            forbidden()
        assert denied.value.status == 403
    return api


@pytest.fixture(scope="module")
def other_team(cluster: Cluster, tenant: client.ApiClient) -> dict[str, Any]:
    """Team B's objects, made by an admin: a password Secret (not marked for Kontinual), a Service, a ConfigMap."""
    core = cluster.core
    secret = core.create_namespaced_secret(NAMESPACE, {"metadata": {"name": "team-b-db", "labels": OTHER_TEAM},
                                                       "stringData": {"apiKey": PASSWORD}})
    service = core.create_namespaced_service(NAMESPACE, {
        "metadata": {"name": "web-server", "labels": OTHER_TEAM},
        "spec": {"selector": {"app": "team-b-web"}, "ports": [{"name": "web", "port": 80, "targetPort": 8080}]}})
    config_map = core.create_namespaced_config_map(NAMESPACE, {
        "metadata": {"name": "web-server-config", "labels": OTHER_TEAM}, "data": {"server.yaml": "team b's config"}})
    return {"secret": secret, "service": service, "config_map": config_map}


def create_as_tenant(tenant: client.ApiClient, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ContinualModel",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {"model": {"uri": "zoo:cv/detection/yolov5-s/pytorch/ultralytics/coco/base-none"}, **spec}}
    return client.CustomObjectsApi(tenant).create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, body)


def reconciled(cluster: Cluster, name: str, reason: str) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        model = get_model(cluster, NAMESPACE, name)
        return model if condition(model, "Reconciled").get("reason") == reason else None
    return wait_for(f"{name}: Reconciled reason {reason}", probe, diagnose=lambda: yaml.safe_dump(
        (get_model(cluster, NAMESPACE, name) or {}).get("status")))


def children_of(cluster: Cluster, name: str) -> list[str]:
    """Every object the operator could have built for `name` (by its deterministic names)."""
    found = [f"Deployment {d.metadata.name}" for d in cluster.apps.list_namespaced_deployment(NAMESPACE).items
             if d.metadata.name.startswith(f"{name}-")]
    found += [f"ConfigMap {c.metadata.name}" for c in cluster.core.list_namespaced_config_map(NAMESPACE).items
              if c.metadata.name.startswith(f"{name}-")]
    found += [f"Job {j.metadata.name}" for j in cluster.batch.list_namespaced_job(NAMESPACE).items
              if j.metadata.name.startswith(f"{name}-")]
    return found


def roboflow(api_url: str | None = None) -> dict[str, Any]:
    ref = {"workspace": "acme", "project": "soccer", "apiKeySecretRef": {"name": "team-b-db", "key": "apiKey"}}
    return {**ref, "apiUrl": api_url} if api_url else ref


@pytest.fixture
def listener() -> Iterator[Listener]:
    handle = Listener()
    yield handle
    handle.close()


def test_a_tenant_cannot_send_another_teams_secret_to_its_listener(
        cluster: Cluster, kontinual: Operator, tenant: client.ApiClient, other_team: dict[str, Any],
        listener: Listener) -> None:
    create_as_tenant(tenant, "steal", {
        "dataLogging": {"roboflow": roboflow(listener.url)},
        "training": {"dataset": roboflow(listener.url), "trigger": {"minNewLabeledImages": 1}}})
    model = reconciled(cluster, "steal", "InvalidSpec")
    message = condition(model, "Reconciled")["message"]
    assert "spec.dataLogging.roboflow.apiUrl" in message and listener.url in message
    assert "https://api.roboflow.com" in message, "the message names what is allowed"
    events = wait_for("an InvalidSpec Event on steal", lambda: [
        e for e in cluster.core.list_namespaced_event(NAMESPACE).items
        if e.involved_object.name == "steal" and e.reason == "InvalidSpec"])
    assert events[0].type == "Warning"
    time.sleep(10)  # the reported exfiltration took under 10 s: give it that long to happen
    assert listener.received == [], "the tenant's listener received a connection from the operator"
    assert children_of(cluster, "steal") == [], "children that would carry the key were built"
    assert PASSWORD not in kontinual.log_text()


def test_a_tenant_cannot_make_pods_or_the_operator_use_an_unmarked_secret(
        cluster: Cluster, kontinual: Operator, tenant: client.ApiClient, other_team: dict[str, Any]) -> None:
    # The allowed Roboflow API, but team B's Secret, which nobody marked for Kontinual.
    create_as_tenant(tenant, "borrow", {"dataLogging": {"roboflow": roboflow()},
                                        "training": {"dataset": roboflow(), "trigger": {"minNewLabeledImages": 1}}})
    model = reconciled(cluster, "borrow", "InvalidSpec")
    message = condition(model, "Reconciled")["message"]
    assert f"Secret {NAMESPACE}/team-b-db is not marked for use by ContinualModels" in message
    assert f"{SECRET_LABEL}=true" in message
    assert children_of(cluster, "borrow") == [], "a pod template referencing team B's Secret was built"
    assert "pollError" not in ((model.get("status") or {}).get("training") or {}), "the operator polled with it"
    secret = cluster.core.read_namespaced_secret("team-b-db", NAMESPACE)
    assert secret.metadata.resource_version == other_team["secret"].metadata.resource_version


def test_a_tenant_cannot_take_over_or_delete_another_teams_objects(
        cluster: Cluster, kontinual: Operator, tenant: client.ApiClient, other_team: dict[str, Any]) -> None:
    created = create_as_tenant(tenant, "web", {})
    model = reconciled(cluster, "web", "ChildConflict")
    message = condition(model, "Reconciled")["message"]
    assert f"Service {NAMESPACE}/web-server exists and is not controlled by this ContinualModel" in message
    assert f"ConfigMap {NAMESPACE}/web-server-config exists" in message
    assert condition(model, "Ready")["status"] == "False"
    warnings = wait_for("ChildConflict Warnings on web", lambda: [
        e for e in cluster.core.list_namespaced_event(NAMESPACE).items
        if e.involved_object.name == "web" and e.reason == "ChildConflict"])
    assert all(e.type == "Warning" for e in warnings)

    def untouched() -> None:
        service = cluster.core.read_namespaced_service("web-server", NAMESPACE)
        config_map = cluster.core.read_namespaced_config_map("web-server-config", NAMESPACE)
        assert service.metadata.resource_version == other_team["service"].metadata.resource_version
        assert service.spec.selector == {"app": "team-b-web"} and not service.metadata.owner_references
        assert config_map.metadata.resource_version == other_team["config_map"].metadata.resource_version
        assert config_map.data == {"server.yaml": "team b's config"} and not config_map.metadata.owner_references
    untouched()
    # The child nobody else had was still built, and is the model's own.
    deployment = cluster.apps.read_namespaced_deployment("web-server", NAMESPACE)
    assert deployment.metadata.owner_references[0].uid == created["metadata"]["uid"]

    client.CustomObjectsApi(tenant).delete_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, "web")

    def collected() -> bool:
        try:
            cluster.apps.read_namespaced_deployment("web-server", NAMESPACE)
        except ApiException as error:
            return error.status == 404
        return False
    wait_for("the garbage collector to delete web's own Deployment", collected, timeout=120)
    untouched()
