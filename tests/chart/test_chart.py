"""The Helm chart lints, renders valid Kubernetes objects in both RBAC modes, and honours its values."""

from __future__ import annotations

import json

import pytest

from tests.chart.render import (
    CHART, RELEASE_NAMESPACE, ROOT, HelmFailed, by_kind, container_env, helm, notes, one, render,
    validation_errors,
)


def test_helm_lint_passes_strict() -> None:
    out = helm("lint", "--strict", str(CHART), "--namespace", RELEASE_NAMESPACE).stdout
    assert "1 chart(s) linted, 0 chart(s) failed" in out


def test_helm_lint_passes_in_namespaced_mode() -> None:
    helm("lint", "--strict", str(CHART), "--set", "watchNamespaces={team-a,team-b}")


def test_default_render_is_valid_cluster_wide_install() -> None:
    manifests = render()
    assert validation_errors(manifests) == []
    kinds = sorted(m["kind"] for m in manifests)
    assert kinds == ["ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "Deployment",
                     "NetworkPolicy", "PodDisruptionBudget", "Role", "RoleBinding", "Service",
                     "ServiceAccount"]  # the Service: the operator's metrics; the Role: the leader Lease
    role = one(manifests, "Role")
    assert role["metadata"]["namespace"] == RELEASE_NAMESPACE
    assert {r for rule in role["rules"] for r in rule["resources"]} == {"leases"}
    binding = one(manifests, "ClusterRoleBinding")
    sa = one(manifests, "ServiceAccount")
    assert binding["roleRef"]["name"] == one(manifests, "ClusterRole")["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"],
                                    "namespace": RELEASE_NAMESPACE}]
    assert container_env(one(manifests, "Deployment"))["KONTINUAL_WATCH_NAMESPACES"] == ""


def test_namespaced_render_has_role_per_namespace_and_env() -> None:
    manifests = render({"watchNamespaces": "{team-a,team-b}"})
    assert validation_errors(manifests) == []
    roles = [r for r in by_kind(manifests, "Role") if not r["metadata"]["name"].endswith("-leader-election")]
    bindings = [b for b in by_kind(manifests, "RoleBinding") if not b["metadata"]["name"].endswith("-leader-election")]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    sa_name = one(manifests, "ServiceAccount")["metadata"]["name"]
    for binding in bindings:
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                      "name": roles[0]["metadata"]["name"]}
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa_name, "namespace": RELEASE_NAMESPACE}]
    # Only kopf's cluster-scoped needs stay cluster-wide; no namespaced resource is granted there.
    cluster_role = one(manifests, "ClusterRole")
    assert {res for rule in cluster_role["rules"] for res in rule["resources"]} == {
        "customresourcedefinitions", "namespaces"}
    assert container_env(one(manifests, "Deployment"))["KONTINUAL_WATCH_NAMESPACES"] == "team-a,team-b"


def test_operator_deployment_is_hardened_and_probed() -> None:
    deployment = one(render(), "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 2  # one leader, one standby (leader election)
    assert spec["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    assert container["args"] == ["operator"]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    probe = container["livenessProbe"]["httpGet"]
    assert probe["path"] == "/healthz" and ports[probe["port"]] == 8080
    assert container_env(deployment)["KONTINUAL_HEALTH_PORT"] == "8080"
    # The selector must match the pod template (else the API server rejects the Deployment).
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()


def test_two_replicas_elect_a_leader_and_keep_one_through_a_drain() -> None:
    manifests = render()
    deployment = one(manifests, "Deployment")
    env = {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["KONTINUAL_LEADER_ELECTION"]["value"] == "true"
    assert env["KONTINUAL_LEASE_NAME"]["value"] == deployment["metadata"]["name"]
    assert env["KONTINUAL_LEASE_SECONDS"]["value"] == "15"
    assert env["KONTINUAL_LEASE_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env["KONTINUAL_POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    pdb = one(manifests, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    # Kubernetes 1.20 serves PodDisruptionBudget only as policy/v1beta1.
    old = render(None, "--kube-version", "1.20.2")
    assert one(old, "PodDisruptionBudget")["apiVersion"] == "policy/v1beta1"
    assert pdb["apiVersion"] == "policy/v1"


def test_without_leader_election_one_replica_is_recreated() -> None:
    manifests = render({"leaderElection.enabled": "false", "replicaCount": "1"})
    spec = one(manifests, "Deployment")["spec"]
    assert (spec["replicas"], spec["strategy"]) == (1, {"type": "Recreate"})
    assert container_env(one(manifests, "Deployment"))["KONTINUAL_LEADER_ELECTION"] == "false"
    assert by_kind(manifests, "PodDisruptionBudget") == [] and by_kind(manifests, "Role") == []
    with pytest.raises(HelmFailed) as failure:
        render({"leaderElection.enabled": "false", "replicaCount": "2"})
    assert "replicaCount is 2 but leaderElection.enabled is false" in str(failure.value)


def test_values_reach_the_operator_environment() -> None:
    deployment = one(render({
        "image.tag": "1.2.3", "serverImage.repository": "registry.local/srv", "trainerImage.tag": "cuda-1.2.3",
        "roboflow.apiUrl": "http://roboflow.internal:8000", "roboflow.pollSeconds": "30",
        "sparsezoo.apiUrl": "http://sparsezoo.mirror.internal:8080",
        "resyncSeconds": "15", "logging.level": "DEBUG", "logging.format": "json", "healthPort": "9090",
    }), "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "kontinual/operator:1.2.3"
    env = container_env(deployment)
    assert env["KONTINUAL_SERVER_IMAGE"] == "registry.local/srv:0.1.0"
    assert env["KONTINUAL_TRAINER_IMAGE"] == "kontinual/trainer:cuda-1.2.3"
    assert env["KONTINUAL_ROBOFLOW_API_URL"] == "http://roboflow.internal:8000"
    assert env["KONTINUAL_ROBOFLOW_API_URLS"] == ""  # by default only roboflow.apiUrl is allowed
    assert env["KONTINUAL_ROBOFLOW_POLL_SECONDS"] == "30"
    assert env["KONTINUAL_SPARSEZOO_API_URL"] == "http://sparsezoo.mirror.internal:8080"
    assert env["KONTINUAL_RESYNC_SECONDS"] == "15"
    assert env["KONTINUAL_LOG_LEVEL"] == "DEBUG"
    assert env["KONTINUAL_LOG_FORMAT"] == "json"
    assert env["KONTINUAL_HEALTH_PORT"] == "9090"
    assert container["ports"][0]["containerPort"] == 9090


def test_rendered_environment_parses_into_operator_settings() -> None:
    """What the chart sets is what kontinual.controller.settings accepts (no typo'd variable, no bad value)."""
    from kontinual.controller.settings import Settings

    env = container_env(one(render({"watchNamespaces": "{team-a}", "logging.format": "json"}), "Deployment"))
    settings = Settings.from_env(env)
    assert settings.watch_namespaces == ("team-a",)
    assert settings.log_format == "json"
    assert settings.server_image == "kontinual/server:0.1.0"
    assert settings.openvino_server_image == "kontinual/server-openvino:0.1.0"
    assert settings.roboflow_poll_seconds == 300
    known = {f"KONTINUAL_{name.upper()}" for name in Settings.__dataclass_fields__}
    assert set(env) <= known, f"chart sets variables the operator does not read: {set(env) - known}"


def test_image_tags_default_to_app_version() -> None:
    app_version = helm("show", "chart", str(CHART)).stdout.split("appVersion:")[1].split()[0].strip('"')
    import kontinual

    assert app_version == kontinual.__version__, "Chart.yaml appVersion must be the package version"
    env = container_env(one(render(), "Deployment"))
    assert env["KONTINUAL_SERVER_IMAGE"] == f"kontinual/server:{app_version}"
    assert env["KONTINUAL_TRAINER_IMAGE"] == f"kontinual/trainer:{app_version}"


@pytest.mark.parametrize(("key", "value", "complaint"), [
    ("resyncSeconds", "abc", "resyncSeconds"),
    ("logging.format", "xml", "logging.format"),
    ("watchNamespaces", "team-a", "watchNamespaces"),
    ("watchNamespaces", "{Not_A_Namespace}", "watchNamespaces"),
    ("roboflow.pollSeconds", "0", "roboflow.pollSeconds"),
    ("image.pullPolicy", "Sometimes", "image.pullPolicy"),
    ("replicaCount", "0", "replicaCount"),
])
def test_schema_rejects_bad_values(key: str, value: str, complaint: str) -> None:
    with pytest.raises(HelmFailed) as failure:
        render({key: value})
    assert "don't meet the specifications of the schema" in str(failure.value)
    assert complaint in str(failure.value)


def test_schema_is_valid_json_and_describes_every_top_level_value() -> None:
    import yaml

    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert set(values) <= set(schema["properties"])


def test_every_value_has_a_comment() -> None:
    """Each top-level value, and each key of the small settings sections, has a comment above it."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    sections = ("image:", "serverImage:", "trainerImage:", "roboflow:", "logging:", "serviceAccount:", "rbac:",
                "networkPolicy:")
    section = ""
    for index, line in enumerate(lines):
        if not line.strip() or line.lstrip().startswith(("#", "-")):
            continue
        indent = len(line) - len(line.lstrip())
        if indent == 0:
            section = line.split()[0]
        if indent == 0 or (indent == 2 and section in sections):
            assert lines[index - 1].lstrip().startswith("#"), f"values.yaml:{index + 1} has no comment: {line}"


def test_chart_crd_is_identical_to_top_level_crd() -> None:
    top = sorted(p.name for p in (ROOT / "crds").glob("*.yaml"))
    chart = sorted(p.name for p in (CHART / "crds").glob("*.yaml"))
    assert top and chart == top, "helm/kontinual/crds/ must hold exactly the files of crds/"
    for name in top:
        assert (CHART / "crds" / name).read_bytes() == (ROOT / "crds" / name).read_bytes(), (
            f"helm/kontinual/crds/{name} differs from crds/{name}: cp crds/{name} helm/kontinual/crds/")


def test_notes_tell_the_next_command() -> None:
    text = notes()
    assert f"kubectl --namespace {RELEASE_NAMESPACE} rollout status deployment/kontinual" in text
    assert "kubectl apply -f examples/minimal.yaml" in text
    assert "kubectl wait --for=condition=Ready cmodel/demo" in text
    assert "never upgrades" in text
    assert "every namespace" in text
    assert "team-a, team-b" in notes({"watchNamespaces": "{team-a,team-b}"})


def test_rbac_create_false_renders_no_rbac() -> None:
    manifests = render({"rbac.create": "false", "serviceAccount.create": "false", "serviceAccount.name": "mine"})
    assert not [m for m in manifests if m["kind"] in ("ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding",
                                                       "ServiceAccount")]
    assert one(manifests, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "mine"


def test_the_roboflow_allow_list_reaches_the_operator_and_the_operator_reads_it() -> None:
    from kontinual.controller.settings import Settings

    deployment = one(render({"roboflow.allowedApiUrls": "{https://rf.internal,http://10.0.0.5:8080}"}), "Deployment")
    env = container_env(deployment)
    assert env["KONTINUAL_ROBOFLOW_API_URLS"] == "https://rf.internal,http://10.0.0.5:8080"
    assert Settings.from_env(env).allowed_roboflow_urls == (
        "https://api.roboflow.com", "https://rf.internal", "http://10.0.0.5:8080")


# Settings the chart does not expose as a value, and why (anything else must be reachable from values).
NOT_A_CHART_VALUE = {
    # In a pod the kubelet probes the pod IP, so the health endpoint must listen on all interfaces.
    "KONTINUAL_HEALTH_HOST": "0.0.0.0 is the only value that works in a pod",
}
# Settings the chart derives from the release or the pod itself (the downward API), not from a value.
DERIVED = {
    "KONTINUAL_LEASE_NAME": "the release's full name",
    "KONTINUAL_LEASE_NAMESPACE": "the pod's namespace (the release namespace)",
    "KONTINUAL_POD_NAME": "the pod's name",
}
# A value for every operator setting, none of them its default, and the setting each should become.
EVERY_SETTING = {
    "watchNamespaces": ("{team-a}", "watch_namespaces", ("team-a",)),
    "serverImage.repository": ("registry.local/srv", "server_image", "registry.local/srv:0.1.0"),
    "trainerImage.tag": ("cuda", "trainer_image", "kontinual/trainer:cuda"),
    "serverOpenvinoImage.tag": ("ov", "openvino_server_image", "kontinual/server-openvino:ov"),
    "roboflow.apiUrl": ("https://rf.internal", "roboflow_api_url", "https://rf.internal"),
    "roboflow.allowedApiUrls": ("{https://rf2.internal}", "roboflow_api_urls", ("https://rf2.internal",)),
    "roboflow.pollSeconds": ("31", "roboflow_poll_seconds", 31),
    "roboflow.timeoutSeconds": ("7", "roboflow_timeout_seconds", 7),
    "roboflow.pollWorkers": ("9", "poll_workers", 9),
    "sparsezoo.apiUrl": ("https://zoo.internal", "sparsezoo_api_url", "https://zoo.internal"),
    "resyncSeconds": ("17", "resync_seconds", 17),
    "healthPort": ("9091", "health_port", 9091),
    "stuckSeconds": ("45", "stuck_seconds", 45),
    "metrics.port": ("9199", "metrics_port", 9199),
    "logging.level": ("WARNING", "log_level", "WARNING"),
    "logging.format": ("json", "log_format", "json"),
    "leaderElection.enabled": ("true", "leader_election", True),
    "leaderElection.leaseSeconds": ("20", "lease_seconds", 20),
}


def test_every_operator_setting_is_reachable_from_chart_values() -> None:
    """Each Settings field is set by a chart value, and that value arrives as the setting (tuning needs no extraEnv)."""
    from dataclasses import fields

    from kontinual.controller.settings import Settings

    env = container_env(one(render({k: v for k, (v, _, _) in EVERY_SETTING.items()}), "Deployment"))
    settings, default = Settings.from_env(env), Settings()
    every = {f.name for f in fields(Settings)}
    exposed = {name for _, name, _ in EVERY_SETTING.values()}
    unexposed = {n for n in every - exposed if f"KONTINUAL_{n.upper()}" not in {**NOT_A_CHART_VALUE, **DERIVED}}
    assert unexposed == set(), f"operator settings without a chart value: {sorted(unexposed)}"
    for key, (_, name, wanted) in EVERY_SETTING.items():
        assert wanted != getattr(default, name), f"{key}: pick a non-default value so the test can fail"
        assert getattr(settings, name) == wanted, f"chart value {key} does not reach Settings.{name}"
    for name in NOT_A_CHART_VALUE:
        assert name not in env
    for name in DERIVED:
        assert name in env, f"the chart does not set {name} ({DERIVED[name]})"


@pytest.mark.parametrize(("key", "value"), [
    ("roboflow.timeoutSeconds", "0"), ("roboflow.timeoutSeconds", "601"),
    ("roboflow.pollWorkers", "65"), ("stuckSeconds", "5"), ("leaderElection.leaseSeconds", "4"),
])
def test_schema_bounds_the_tuning_values_as_the_operator_does(key: str, value: str) -> None:
    """A value the operator would refuse at start (a crash loop) is refused by helm instead."""
    with pytest.raises(HelmFailed) as failure:
        render({key: value})
    assert key.rpartition(".")[2] in str(failure.value)


def _selects(policy: dict[str, object], deployment: dict[str, object]) -> bool:
    wanted = policy["spec"]["podSelector"]["matchLabels"]  # type: ignore[index]
    labels = deployment["spec"]["template"]["metadata"]["labels"]  # type: ignore[index]
    return bool(wanted) and wanted.items() <= labels.items()


def test_operator_network_policy_admits_only_metrics_scrapes_by_default() -> None:
    """On by default: the metrics port takes scrapes, nothing else any connection but the node's (kubelet probes)."""
    manifests = render()
    assert validation_errors(manifests) == []
    policy = one(manifests, "NetworkPolicy")
    assert policy["metadata"]["namespace"] == RELEASE_NAMESPACE
    assert _selects(policy, one(manifests, "Deployment"))
    assert policy["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "operator"
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    assert policy["spec"]["ingress"] == [
        {"from": [{"namespaceSelector": {}}], "ports": [{"protocol": "TCP", "port": 9102}]}]
    # No metrics endpoint, no metrics rule: then nothing but the node may connect.
    assert one(render({"metrics.enabled": "false"}), "NetworkPolicy")["spec"]["ingress"] == []


def test_operator_network_policy_opens_each_port_only_to_its_named_sources() -> None:
    monitoring = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    probe = {"ipBlock": {"cidr": "10.1.0.0/16"}}
    manifests = render(None, "--set-json", f"networkPolicy.metricsFrom=[{json.dumps(monitoring)}]",
                       "--set-json", f"networkPolicy.healthFrom=[{json.dumps(probe)}]",
                       "--set", "healthPort=9090", "--set", "metrics.port=9300")
    assert validation_errors(manifests) == []
    policy = one(manifests, "NetworkPolicy")
    assert policy["spec"]["ingress"] == [{"from": [probe], "ports": [{"protocol": "TCP", "port": 9090}]},
                                         {"from": [monitoring], "ports": [{"protocol": "TCP", "port": 9300}]}]
    assert _selects(policy, one(manifests, "Deployment"))
    closed = render(None, "--set-json", "networkPolicy.metricsFrom=[]")
    assert one(closed, "NetworkPolicy")["spec"]["ingress"] == []


def test_operator_network_policy_can_be_switched_off() -> None:
    assert by_kind(render({"networkPolicy.enabled": "false"}), "NetworkPolicy") == []
    with pytest.raises(HelmFailed) as failure:
        render(None, "--set-json", 'networkPolicy.healthFrom=[{"podSelectr": {}}]')
    assert "networkPolicy.healthFrom" in str(failure.value)
