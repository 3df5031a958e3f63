"""Pure decisions of the training loop: triggers, versions, the gate, history, rollback marks."""

from __future__ import annotations

import datetime

import pytest

from kontinual import loop
from kontinual.contract import TrainingResult
from kontinual.spec import parse

UTC = datetime.timezone.utc
SHA = "a" * 64


def spec_with(training: dict | None = None, rollout: dict | None = None):
    body = {
        "metadata": {"name": "soccer", "namespace": "vision", "uid": "u1"},
        "spec": {
            "model": {"uri": "zoo:some/stub"},
            "dataLogging": {"roboflow": {"workspace": "acme", "project": "soccer",
                                         "apiKeySecretRef": {"name": "roboflow"}}},
            "training": training or {},
            "rollout": rollout or {},
        },
    }
    return parse(body)


def result(version: int, map50: float | None = 0.5, sha: str | None = SHA, onnx: str | None = None) -> TrainingResult:
    metrics = {} if map50 is None else {"mAP50": map50, "mAP50_95": map50 / 2}
    return TrainingResult(status="Succeeded", version=version, onnx=onnx or f"v{version}/model.onnx",
                          sha256=sha, metrics=metrics)


class TestSchedule:
    spec = spec_with({"trigger": {"schedule": "0 3 * * *"}})

    def test_first_sight_sets_next_run_without_running(self):
        now = datetime.datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
        t = loop.evaluate_triggers(self.spec, {}, now=now, train_request=None, labeled=None)
        assert t.reasons == ()
        assert t.fields["nextScheduledRun"] == "2026-11-28T03:00:00Z"

    def test_due_fires_once_and_moves_on(self):
        now = datetime.datetime(2026, 11, 28, 3, 0, 30, tzinfo=UTC)
        state = {"schedule": "0 3 * * *", "nextScheduledRun": "2026-11-28T03:00:00Z"}
        t = loop.evaluate_triggers(self.spec, state, now=now, train_request=None, labeled=None)
        assert len(t.reasons) == 1 and "schedule" in t.reasons[0]
        assert t.fields["nextScheduledRun"] == "2026-11-29T03:00:00Z"

    def test_many_missed_ticks_fire_once(self):
        # The operator was down for three days: one run on resume, the next one tomorrow.
        now = datetime.datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
        state = {"schedule": "0 3 * * *", "nextScheduledRun": "2026-11-28T03:00:00Z"}
        t = loop.evaluate_triggers(self.spec, state, now=now, train_request=None, labeled=None)
        assert len(t.reasons) == 1
        assert t.fields["nextScheduledRun"] == "2026-12-02T03:00:00Z"
        again = loop.evaluate_triggers(self.spec, {**state, **t.fields}, now=now, train_request=None, labeled=None)
        assert again.reasons == ()

    def test_changed_schedule_recomputes(self):
        now = datetime.datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
        state = {"schedule": "0 4 * * *", "nextScheduledRun": "2026-11-27T04:00:00Z"}
        t = loop.evaluate_triggers(self.spec, state, now=now, train_request=None, labeled=None)
        assert t.reasons == () and t.fields["nextScheduledRun"] == "2026-11-28T03:00:00Z"


class TestLabeledImages:
    spec = spec_with({"trigger": {"minNewLabeledImages": 50}})
    now = datetime.datetime(2026, 11, 27, 12, 0, tzinfo=UTC)

    def test_first_poll_sets_baseline(self):
        t = loop.evaluate_triggers(self.spec, {}, now=self.now, train_request=None, labeled=400)
        assert t.reasons == ()
        assert t.fields["labeledImagesAtLastRun"] == 400 and t.fields["lastLabeledImages"] == 400

    @pytest.mark.parametrize("count,fires", [(449, False), (450, True), (900, True)])
    def test_threshold(self, count, fires):
        t = loop.evaluate_triggers(self.spec, {"labeledImagesAtLastRun": 400}, now=self.now,
                                   train_request=None, labeled=count)
        assert bool(t.reasons) is fires
        assert t.fields["lastLabeledImages"] == count

    def test_no_poll_no_decision(self):
        t = loop.evaluate_triggers(self.spec, {"labeledImagesAtLastRun": 0}, now=self.now,
                                   train_request=None, labeled=None)
        assert t.reasons == () and "lastLabeledImages" not in t.fields


class TestManual:
    spec = spec_with()
    now = datetime.datetime(2026, 11, 27, 12, 0, tzinfo=UTC)

    def test_new_value_fires_once(self):
        t = loop.evaluate_triggers(self.spec, {}, now=self.now, train_request="2026-11-27", labeled=None)
        assert len(t.reasons) == 1 and t.fields["lastTrainRequest"] == "2026-11-27"
        again = loop.evaluate_triggers(self.spec, t.fields, now=self.now, train_request="2026-11-27", labeled=None)
        assert again.reasons == ()

    def test_no_annotation_no_run(self):
        assert loop.evaluate_triggers(self.spec, {}, now=self.now, train_request=None, labeled=None).reasons == ()


def test_next_version_counts_failed_runs_and_existing_jobs():
    assert loop.next_version([], {}, []) == 1
    assert loop.next_version([{"version": 2}], {"lastRun": {"version": 3}}, []) == 4
    assert loop.next_version([{"version": 2}], {}, [5]) == 6


class TestGate:
    def test_first_trained_model_replaces_seed(self):
        v = loop.judge(spec_with(), result(1, 0.1), 1, None)
        assert v.promoted and v.reason == "FirstTrainedModel"

    @pytest.mark.parametrize("candidate,delta,promoted", [(0.6, 0.0, True), (0.5, 0.0, True),
                                                          (0.49, 0.0, False), (0.55, 0.1, False), (0.61, 0.1, True)])
    def test_against_serving_model(self, candidate, delta, promoted):
        spec = spec_with(rollout={"gate": {"metric": "mAP50", "minDelta": delta}})
        v = loop.judge(spec, result(2, candidate), 2, {"version": 1, "metrics": {"mAP50": 0.5}})
        assert v.promoted is promoted
        assert v.reason == ("GatePassed" if promoted else "GateRejected")

    def test_gate_metric_map50_95(self):
        spec = spec_with(rollout={"gate": {"metric": "mAP50_95"}})
        v = loop.judge(spec, result(2, 0.4), 2, {"metrics": {"mAP50_95": 0.3}})  # candidate 0.2
        assert not v.promoted and "mAP50_95" in v.message

    @pytest.mark.parametrize("bad,reason", [
        (result(2, sha=None), "ChecksumMissing"),
        (result(2, sha="xyz"), "ChecksumMissing"),
        (result(3), "ResultMismatch"),
        (result(2, onnx="v9/model.onnx"), "ResultMismatch"),
        (result(2, map50=None), "MetricMissing"),
    ])
    def test_malformed_results_never_promoted(self, bad, reason):
        v = loop.judge(spec_with(), bad, 2, None)
        assert not v.promoted and v.reason == reason


class TestHistory:
    models = [{"version": v, "promoted": v % 2 == 1} for v in range(1, 8)]

    def test_serving_is_newest_promoted(self):
        assert loop.serving_model(spec_with(), self.models)["version"] == 7

    def test_rolled_back_is_skipped(self):
        models = loop.mark_rolled_back(self.models, 7, "not ready")
        assert loop.serving_model(spec_with(), models)["version"] == 5
        assert models[-1]["rolledBack"] and not models[-1]["promoted"] and models[-1]["reason"] == "RolloutFailed"

    def test_pinned_wins_even_if_not_promoted(self):
        assert loop.serving_model(spec_with(rollout={"pinnedVersion": 2}), self.models)["version"] == 2

    def test_pin_to_unknown_version_falls_back(self):
        assert loop.serving_model(spec_with(rollout={"pinnedVersion": 99}), self.models)["version"] == 7

    def test_no_promoted_means_seed(self):
        assert loop.serving_model(spec_with(), [{"version": 1, "promoted": False}]) is None

    def test_prune_keeps_newest_and_serving(self):
        kept = loop.prune_history(self.models, 3, keep=1)
        assert [m["version"] for m in kept] == [7, 6, 1]
        assert [m["version"] for m in loop.prune_history(self.models, 3, keep=7)] == [7, 6, 5]
