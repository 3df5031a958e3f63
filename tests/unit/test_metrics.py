"""The operator's Prometheus metrics: what moves them, their labels, forgetting a deleted model, the port."""

from __future__ import annotations

import socket
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from kontinual.controller.metrics import OperatorMetrics, serve
from kontinual.controller.settings import Settings


def sample(metrics: OperatorMetrics, metric: str, /, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(metric, labels or None)


def test_a_reconcile_counts_its_result_and_duration() -> None:
    metrics = OperatorMetrics(process=False)
    metrics.reconciled("vision", "soccer", seconds=0.2, invalid=False, error=False)
    metrics.reconciled("vision", "soccer", seconds=0.3, invalid=False, error=True)
    metrics.reconciled("vision", "bad", seconds=0.01, invalid=True, error=False)
    assert sample(metrics, "kontinual_operator_reconciles_total", result="ok") == 1
    assert sample(metrics, "kontinual_operator_reconciles_total", result="error") == 1
    assert sample(metrics, "kontinual_operator_reconciles_total", result="invalid_spec") == 1
    assert sample(metrics, "kontinual_operator_reconcile_duration_seconds_count") == 3
    assert sample(metrics, "kontinual_operator_reconcile_duration_seconds_sum") == pytest.approx(0.51)
    assert sample(metrics, "kontinual_operator_reconcile_errors_total",
                  namespace="vision", name="soccer", kind="api_error") == 1
    assert sample(metrics, "kontinual_operator_reconcile_errors_total",
                  namespace="vision", name="bad", kind="invalid_spec") == 1
    assert sample(metrics, "kontinual_operator_reconcile_errors_total",
                  namespace="vision", name="soccer", kind="invalid_spec") is None


def test_event_reasons_feed_the_training_and_rollout_counters() -> None:
    metrics = OperatorMetrics(process=False)
    metrics.events("vision", "soccer", ["TrainingStarted", "TrainingSucceeded", "ModelPromoted", "ChildConflict"])
    metrics.events("vision", "soccer", ["TrainingStarted", "TrainingFailed"])
    metrics.events("vision", "soccer", ["TrainingSucceeded", "ModelRejected", "RolledBack"])
    model = {"namespace": "vision", "name": "soccer"}
    assert sample(metrics, "kontinual_operator_training_runs_started_total", **model) == 2
    assert sample(metrics, "kontinual_operator_training_runs_total", **model, result="succeeded") == 2
    assert sample(metrics, "kontinual_operator_training_runs_total", **model, result="failed") == 1
    assert sample(metrics, "kontinual_operator_gate_decisions_total", **model, result="promoted") == 1
    assert sample(metrics, "kontinual_operator_gate_decisions_total", **model, result="rejected") == 1
    assert sample(metrics, "kontinual_operator_promotions_total", **model) == 1
    assert sample(metrics, "kontinual_operator_rollbacks_total", **model) == 1


def test_model_state_follows_status_and_polls_are_timed() -> None:
    metrics = OperatorMetrics(process=False)
    metrics.model_state("vision", "soccer", {"serving": {"version": 3},
                                             "conditions": [{"type": "Ready", "status": "True"}]})
    assert sample(metrics, "kontinual_operator_serving_model_version", namespace="vision", name="soccer") == 3
    assert sample(metrics, "kontinual_operator_model_ready", namespace="vision", name="soccer") == 1
    metrics.model_state("vision", "soccer", {"conditions": [{"type": "Ready", "status": "False"}]})
    assert sample(metrics, "kontinual_operator_model_ready", namespace="vision", name="soccer") == 0
    metrics.polled("vision", "soccer", seconds=0.4, failed=False)
    metrics.polled("vision", "soccer", seconds=20.0, failed=True)
    assert sample(metrics, "kontinual_operator_roboflow_polls_total", namespace="vision", name="soccer",
                  result="failed") == 1
    assert sample(metrics, "kontinual_operator_roboflow_poll_duration_seconds_count") == 2
    assert sample(metrics, "kontinual_operator_roboflow_poll_duration_seconds_bucket", le="0.5") == 1


def test_a_deleted_model_leaves_no_series_behind() -> None:
    metrics = OperatorMetrics(process=False)
    for name in ("soccer", "other"):
        metrics.reconciled("vision", name, seconds=0.1, invalid=False, error=True)
        metrics.events("vision", name, ["TrainingStarted", "TrainingSucceeded", "ModelPromoted"])
        metrics.model_state("vision", name, {"serving": {"version": 1}, "conditions": []})
        metrics.polled("vision", name, seconds=0.1, failed=False)
    metrics.forget("vision", "soccer")
    names = set()
    for family in text_string_to_metric_families(_scrape_text(metrics)):
        for s in family.samples:
            names.add(s.labels.get("name"))
    assert "soccer" not in names and "other" in names
    assert sample(metrics, "kontinual_operator_reconciles_total", result="error") == 2  # global totals stay


def test_a_reconcile_or_poll_that_ends_after_the_deletion_does_not_bring_the_series_back() -> None:
    metrics = OperatorMetrics(process=False)
    metrics.model_state("vision", "soccer", {"serving": {"version": 1}, "conditions": []}, uid="uid-1")
    metrics.forget("vision", "soccer", "uid-1")
    # Started before the deletion, finished after it:
    metrics.reconciled("vision", "soccer", seconds=0.1, invalid=False, error=True, uid="uid-1")
    metrics.events("vision", "soccer", ["TrainingStarted"], uid="uid-1")
    metrics.model_state("vision", "soccer", {"serving": {"version": 1}, "conditions": []}, uid="uid-1")
    metrics.polled("vision", "soccer", seconds=0.1, failed=False, uid="uid-1")
    assert sample(metrics, "kontinual_operator_serving_model_version", namespace="vision", name="soccer") is None
    assert sample(metrics, "kontinual_operator_training_runs_started_total", namespace="vision", name="soccer") is None
    # A new model of the same name (a new uid) is counted again.
    metrics.model_state("vision", "soccer", {"serving": {"version": 0}, "conditions": []}, uid="uid-2")
    assert sample(metrics, "kontinual_operator_serving_model_version", namespace="vision", name="soccer") == 0


def _scrape_text(metrics: OperatorMetrics) -> str:
    from prometheus_client import generate_latest

    return generate_latest(metrics.registry).decode()


def test_labels_are_bounded_to_models_and_fixed_values() -> None:
    metrics = OperatorMetrics(process=False)
    metrics.reconciled("vision", "soccer", seconds=0.1, invalid=True, error=False)
    metrics.events("vision", "soccer", ["TrainingStarted", "TrainingFailed", "ModelRejected", "RolledBack"])
    metrics.polled("vision", "soccer", seconds=0.1, failed=True)
    allowed = {"namespace", "name", "result", "kind", "le"}
    for family in text_string_to_metric_families(_scrape_text(metrics)):
        for s in family.samples:
            assert set(s.labels) <= allowed, (s.name, s.labels)


def test_serve_exposes_the_registry_and_survives_a_taken_port() -> None:
    metrics = OperatorMetrics(process=False)
    metrics.reconciled("vision", "soccer", seconds=0.1, invalid=False, error=False)
    port = serve("127.0.0.1", 0, metrics)
    assert port
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        body = response.read().decode()
    assert 'kontinual_operator_reconciles_total{result="ok"} 1.0' in body
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert serve("127.0.0.1", taken.getsockname()[1], metrics) is None  # logged, not raised


def test_metrics_port_setting() -> None:
    assert Settings().metrics_port == 9102
    assert Settings.from_env({"KONTINUAL_METRICS_PORT": "0"}).metrics_port == 0
    assert Settings.from_env({"KONTINUAL_METRICS_PORT": "9200"}).metrics_port == 9200
    with pytest.raises(ValueError, match="KONTINUAL_METRICS_PORT.*70000"):
        Settings.from_env({"KONTINUAL_METRICS_PORT": "70000"})
    with pytest.raises(ValueError, match=r"KONTINUAL_METRICS_PORT \(8080\) must differ from the health port"):
        Settings.from_env({"KONTINUAL_METRICS_PORT": "8080"})
