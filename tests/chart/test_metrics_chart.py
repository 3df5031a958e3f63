"""The chart's metrics: the port and env of the operator, its metrics Service, the optional monitors (off by default)."""

from __future__ import annotations

import pytest
import yaml

from kontinual.controller.render import render as render_children
from kontinual.controller.settings import Settings
from tests.chart.render import ROOT, HelmFailed, by_kind, container_env, one, render, validation_errors

MONITORS = ("ServiceMonitor", "PodMonitor")


def ports(deployment: dict) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]}


def test_default_serves_metrics_behind_a_service_without_monitors() -> None:
    manifests = render()
    deployment = one(manifests, "Deployment")
    assert ports(deployment) == {"health": 8080, "metrics": 9102}
    assert container_env(deployment)["KONTINUAL_METRICS_PORT"] == "9102"
    service = one(manifests, "Service")
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 9102, "targetPort": "metrics", "protocol": "TCP"}]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert not [m for m in manifests if m["kind"] in MONITORS]  # off by default: no CRDs of Prometheus needed


def test_port_and_service_annotations_are_values() -> None:
    manifests = render({"metrics.port": "9300"}, "--set-string", "metrics.service.annotations.prometheus\\.io/scrape=true")
    assert validation_errors(manifests) == []
    assert ports(one(manifests, "Deployment"))["metrics"] == 9300
    assert container_env(one(manifests, "Deployment"))["KONTINUAL_METRICS_PORT"] == "9300"
    service = one(manifests, "Service")
    assert service["spec"]["ports"][0]["port"] == 9300
    assert service["metadata"]["annotations"] == {"prometheus.io/scrape": "true"}


def test_metrics_off_means_no_port_no_service_and_port_zero() -> None:
    manifests = render({"metrics.enabled": "false", "metrics.serviceMonitor.enabled": "true"})
    deployment = one(manifests, "Deployment")
    assert "metrics" not in ports(deployment)
    assert container_env(deployment)["KONTINUAL_METRICS_PORT"] == "0"
    assert by_kind(manifests, "Service") == [] and by_kind(manifests, "ServiceMonitor") == []


def test_service_monitor_selects_the_metrics_service() -> None:
    manifests = render({"metrics.serviceMonitor.enabled": "true", "metrics.serviceMonitor.interval": "15s",
                        "metrics.serviceMonitor.labels.release": "prometheus"})
    monitor = one(manifests, "ServiceMonitor")
    service = one(manifests, "Service")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [service["metadata"]["namespace"]]}
    # honorLabels: the per-model `namespace` label is the ContinualModel's, not the operator pod's.
    assert monitor["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "15s",
                                             "honorLabels": True}]
    assert service["spec"]["ports"][0]["name"] == "metrics"


@pytest.mark.parametrize("scope, selector", [
    ({}, {"any": True}),
    ({"watchNamespaces": "{team-a,team-b}"}, {"matchNames": ["team-a", "team-b"]}),
])
def test_pod_monitor_selects_every_server_pod_where_the_operator_watches(scope: dict, selector: dict) -> None:
    monitor = one(render({"metrics.podMonitor.enabled": "true", **scope}), "PodMonitor")
    assert monitor["spec"]["namespaceSelector"] == selector
    # What the operator renders for a ContinualModel: the monitor selects its server pods and their port.
    cr = yaml.safe_load((ROOT / "examples" / "soccer.yaml").read_text())
    children = render_children([cr], Settings())
    (server,) = [c for c in children if c["kind"] == "Deployment"]
    pod = server["spec"]["template"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert "metrics" in {p["name"] for c in pod["spec"]["containers"] for p in c.get("ports", [])}
    # honorLabels: the series' `endpoint` label is the ContinualModel's name, not the port's.
    assert monitor["spec"]["podMetricsEndpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "30s",
                                                       "honorLabels": True}]


@pytest.mark.parametrize("values, complaint", [
    ({"metrics.port": "8080"}, "metrics.port must differ from healthPort"),
    ({"metrics.port": "0"}, "metrics.port"),
    ({"metrics.serviceMonitor.enabled": "yes"}, "enabled"),
    ({"metrics.serviceMonitor.interval": "often"}, "interval"),
    ({"metrics.serviceMonitor.enabled": "true", "metrics.service.enabled": "false"}, "needs metrics.service.enabled"),
    ({"metrics.scrape": "true"}, "scrape"),
])
def test_bad_metrics_values_are_refused_by_name(values: dict, complaint: str) -> None:
    with pytest.raises(HelmFailed, match=complaint):
        render(values)
