"""Pure decisions of the training loop: triggers, versions, the gate, history, rollback marks."""

from __future__ import annotations

import datetime

import pytest

from kontinual.controller import decisions
from kontinual.common.contract import TrainingResult
from kontinual.controller.spec import Spec, parse
from kontinual.controller.statusdata import ModelRecord, TrainingStatus, models_from as M

TS = TrainingStatus.from_dict

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
        t = decisions.evaluate_triggers(self.spec, TS({}), now=now, train_request=None, labeled=None)
        assert t.reasons == ()
        assert t.training.next_scheduled_run == "2026-11-28T03:00:00Z"

    def test_due_fires_once_and_moves_on(self):
        now = datetime.datetime(2026, 11, 28, 3, 0, 30, tzinfo=UTC)
        state = {"schedule": "0 3 * * *", "nextScheduledRun": "2026-11-28T03:00:00Z"}
        t = decisions.evaluate_triggers(self.spec, TS(state), now=now, train_request=None, labeled=None)
        assert len(t.reasons) == 1 and "schedule" in t.reasons[0]
        assert t.training.next_scheduled_run == "2026-11-29T03:00:00Z"

    def test_many_missed_ticks_fire_once(self):
        # The operator was down for three days: one run on resume, the next one tomorrow.
        now = datetime.datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
        state = {"schedule": "0 3 * * *", "nextScheduledRun": "2026-11-28T03:00:00Z"}
        t = decisions.evaluate_triggers(self.spec, TS(state), now=now, train_request=None, labeled=None)
        assert len(t.reasons) == 1
        assert t.training.next_scheduled_run == "2026-12-02T03:00:00Z"
        again = decisions.evaluate_triggers(self.spec, t.training, now=now, train_request=None, labeled=None)
        assert again.reasons == ()

    def test_changed_schedule_recomputes(self):
        now = datetime.datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
        state = {"schedule": "0 4 * * *", "nextScheduledRun": "2026-11-27T04:00:00Z"}
        t = decisions.evaluate_triggers(self.spec, TS(state), now=now, train_request=None, labeled=None)
        assert t.reasons == () and t.training.next_scheduled_run == "2026-11-28T03:00:00Z"


class TestLabeledImages:
    spec = spec_with({"trigger": {"minNewLabeledImages": 50}})
    now = datetime.datetime(2026, 11, 27, 12, 0, tzinfo=UTC)

    def test_first_poll_sets_baseline(self):
        t = decisions.evaluate_triggers(self.spec, TS({}), now=self.now, train_request=None, labeled=400)
        assert t.reasons == ()
        assert t.training.labeled_images_at_last_run == 400 and t.training.last_labeled_images == 400

    @pytest.mark.parametrize("count,fires", [(449, False), (450, True), (900, True)])
    def test_threshold(self, count, fires):
        t = decisions.evaluate_triggers(self.spec, TS({"labeledImagesAtLastRun": 400}), now=self.now,
                                   train_request=None, labeled=count)
        assert bool(t.reasons) is fires
        assert t.training.last_labeled_images == count

    def test_no_poll_no_decision(self):
        t = decisions.evaluate_triggers(self.spec, TS({"labeledImagesAtLastRun": 0}), now=self.now,
                                   train_request=None, labeled=None)
        assert t.reasons == () and t.training.last_labeled_images is None


class TestManual:
    spec = spec_with()
    now = datetime.datetime(2026, 11, 27, 12, 0, tzinfo=UTC)

    def test_new_value_fires_once(self):
        t = decisions.evaluate_triggers(self.spec, TS({}), now=self.now, train_request="2026-11-27", labeled=None)
        assert len(t.reasons) == 1 and t.training.last_train_request == "2026-11-27"
        again = decisions.evaluate_triggers(self.spec, t.training, now=self.now, train_request="2026-11-27", labeled=None)
        assert again.reasons == ()

    def test_no_annotation_no_run(self):
        assert decisions.evaluate_triggers(self.spec, TS({}), now=self.now, train_request=None, labeled=None).reasons == ()


def test_next_version_counts_failed_runs_and_existing_jobs():
    assert decisions.next_version([], TS({}), []) == 1
    assert decisions.next_version(M([{"version": 2}]), TS({"lastRun": {"version": 3}}), []) == 4
    assert decisions.next_version(M([{"version": 2}]), TS({}), [5]) == 6


def test_a_version_is_never_reused_after_its_run_and_job_vanished():
    # v7 was started (highestVersion), then its Job, its record and the models before it were all gone.
    assert decisions.next_version([], TS({"highestVersion": 7, "lastRun": {"version": 3}}), []) == 8


RUN = decisions.RunJob(name="m-train-3", uid="uid-3", version=3)


def test_a_finished_job_is_recorded_once_by_uid_failed_ones_included():
    training = TS({"lastRun": {"version": 4, "finishedAt": "2026-12-01T00:00:00Z", "result": "Failed"},
                   "recordedJobs": ["uid-1"], "highestVersion": 4})
    assert not decisions.is_recorded(training, [], RUN)  # v3 failed, then v4: v3's Job was never recorded
    training = decisions.recorded(training, RUN.uid)
    assert decisions.is_recorded(training, [], RUN)
    # A Job of the same name recreated by someone (another uid) is a different run.
    assert not decisions.is_recorded(training, [], decisions.RunJob("m-train-3", "uid-other", 3))


def test_recorded_uids_are_bounded_and_older_versions_count_as_recorded():
    training = TS({"recordedJobs": []})
    for n in range(1, 31):
        training = decisions.recorded(training, f"uid-{n}")
    assert training.recorded_jobs is not None and len(training.recorded_jobs) == decisions.RECORDED_JOBS_KEPT
    assert training.recorded_jobs[-1] == "uid-30"
    training = training.replace(highest_version=30)
    assert decisions.is_recorded(training, [], decisions.RunJob("m-train-5", "uid-5", 5))  # dropped, but old
    assert not decisions.is_recorded(training, [], decisions.RunJob("m-train-31", "uid-31", 31))


def test_a_status_that_predates_recorded_jobs_never_re_records_older_runs():
    training = TS({"lastRun": {"version": 4, "job": "m-train-4"}})  # v4 running, v1..v3 recorded by the old operator
    assert decisions.is_recorded(training, [], RUN)
    assert not decisions.is_recorded(training, [], decisions.RunJob("m-train-4", "uid-4", 4))


def test_a_job_above_every_known_version_is_adopted_with_its_request():
    job = decisions.RunJob(name="m-train-2", uid="uid-2", version=2, created="2026-12-01T10:00:00Z",
                           trigger="annotation kontinual.io/train-request=go", train_request="go")
    training = TS({"runs": 1, "highestVersion": 1, "pending": "schedule", "lastLabeledImages": 40,
                   "lastRun": {"job": "m-train-1", "version": 1, "finishedAt": "2026-12-01T09:00:00Z"}})
    adopted = decisions.adopted(training, M([{"version": 1}]), job)
    assert adopted.to_dict() == {"highestVersion": 2, "runs": 2, "lastTrainRequest": "go", "lastLabeledImages": 40,
                                 "labeledImagesAtLastRun": 40,
                                 "lastRun": {"job": "m-train-2", "version": 2, "startedAt": "2026-12-01T10:00:00Z",
                                             "trigger": "annotation kontinual.io/train-request=go"}}
    assert decisions.adopted(adopted, [], job) == adopted  # adopted once
    assert decisions.unfinished_run(adopted) == ("m-train-2", 2)
    assert decisions.unfinished_run(training) is None


def exam(version: int, map50: float | None, baseline: dict | None = None, *, split_images: int = 45,
         dataset: str = "7") -> TrainingResult:
    """A result with its baseline: the serving model on the same split of dataset `dataset`."""
    metrics = {} if map50 is None else {"mAP50": map50, "mAP50_95": map50 / 2}
    return TrainingResult(status="Succeeded", version=version, onnx=f"v{version}/model.onnx", sha256=SHA,
                          metrics=metrics, datasetVersion=dataset, baseline=baseline or {},
                          evaluatedOn={"split": "test", "images": split_images, "datasetVersion": dataset})


def evaluated(version: int, map50: float) -> dict:
    return {"version": version, "metrics": {"mAP50": map50, "mAP50_95": map50 / 2}}


COCO_SEED = {"version": 0, "reason": "ClassesDiffer",
             "error": "the seed model predicts 80 classes (person, ...), the dataset has ['ball', 'player']"}


class TestGate:
    """The truth table: candidate vs the serving model on the same split, and the floor."""

    @pytest.mark.parametrize("candidate,baseline,delta,promoted", [
        (0.6, 0.5, 0.0, True), (0.5, 0.5, 0.0, True), (0.49, 0.5, 0.0, False),
        (0.55, 0.5, 0.1, False), (0.61, 0.5, 0.1, True), (0.45, 0.5, -0.1, True)])
    def test_better_or_worse_on_the_same_split(self, candidate, baseline, delta, promoted):
        spec = spec_with(rollout={"gate": {"metric": "mAP50", "minDelta": delta}})
        v = decisions.judge(spec, exam(2, candidate, evaluated(1, baseline)), 2, serving_version=1)
        assert (v.promoted, v.reason) == (promoted, "GatePassed" if promoted else "GateRejected")
        assert f"mAP50 {candidate:.4f} vs {baseline:.4f} of v1 on dataset 7 test, 45 images" in v.message

    def test_baseline_numbers_not_the_old_record_decide(self):
        # v1 scored 0.8 on its own (easier) split long ago; on today's harder split it scores 0.3.
        # The candidate's 0.4 is worse than 0.8 but better than v1 on the same exam: promoted.
        v = decisions.judge(spec_with(), exam(2, 0.4, evaluated(1, 0.3)), 2, serving_version=1)
        assert v.promoted and "0.4000 vs 0.3000 of v1" in v.message
        # And an easier split cannot smuggle a worse model in: 0.9 vs v1's 0.95 on it.
        assert not decisions.judge(spec_with(), exam(2, 0.9, evaluated(1, 0.95)), 2, serving_version=1).promoted

    def test_below_the_floor_is_never_promoted_even_if_better(self):
        spec = spec_with(rollout={"gate": {"minValue": 0.3}})
        v = decisions.judge(spec, exam(2, 0.25, evaluated(1, 0.1)), 2, serving_version=1)
        assert (v.promoted, v.reason) == (False, "BelowFloor") and "minValue 0.3" in v.message

    def test_default_floor_is_documented(self):
        assert spec_with().rollout.gate.min_value == 0.1
        assert not decisions.judge(spec_with(), exam(1, 0.05, COCO_SEED), 1, serving_version=0).promoted

    @pytest.mark.parametrize("candidate,promoted", [(0.09, False), (0.1, True), (0.5, True)])
    def test_seed_of_other_classes_leaves_the_floor_as_the_gate(self, candidate, promoted):
        v = decisions.judge(spec_with(), exam(1, candidate, COCO_SEED), 1, serving_version=0)
        assert (v.promoted, v.reason) == (promoted, "FloorPassed" if promoted else "BelowFloor")
        if promoted:
            assert "the floor is the gate" in v.message and "80 classes" in v.message

    def test_seed_without_any_baseline_is_judged_by_the_floor_only(self):
        assert not decisions.judge(spec_with(), exam(1, 0.05), 1, serving_version=0).promoted
        v = decisions.judge(spec_with(), exam(1, 0.3), 1, serving_version=0)
        assert v.promoted and v.reason == "FloorPassed" and "no baseline" in v.message

    def test_seed_of_the_same_classes_is_a_real_champion(self):
        v = decisions.judge(spec_with(), exam(1, 0.3, evaluated(0, 0.6)), 1, serving_version=0)
        assert (v.promoted, v.reason) == (False, "GateRejected") and "of the seed model (v0)" in v.message

    @pytest.mark.parametrize("baseline", [None, {"version": 1, "reason": "ModelMissing", "error": "no file"}])
    def test_trained_champion_that_was_not_evaluated_blocks_promotion(self, baseline):
        v = decisions.judge(spec_with(), exam(2, 0.9, baseline), 2, serving_version=1)
        assert (v.promoted, v.reason) == (False, "BaselineUnavailable")

    def test_trained_champion_of_other_classes_leaves_the_floor(self):
        other = {"version": 1, "reason": "ClassesDiffer", "error": "v1 predicts ['ball'], the dataset has 2"}
        assert decisions.judge(spec_with(), exam(2, 0.5, other), 2, serving_version=1).reason == "FloorPassed"

    def test_pinned_version_is_the_champion(self):
        spec = spec_with(rollout={"pinnedVersion": 1})
        models = M([{"version": 1, "promoted": True}, {"version": 2, "promoted": True}])
        serving = decisions.serving_version(spec, models)
        assert serving == 1
        assert decisions.judge(spec, exam(3, 0.5, evaluated(1, 0.4)), 3, serving).promoted
        assert not decisions.judge(spec, exam(3, 0.5, evaluated(1, 0.6)), 3, serving).promoted

    def test_baseline_of_a_model_that_no_longer_serves_is_not_trusted(self):
        v = decisions.judge(spec_with(), exam(3, 0.9, evaluated(1, 0.1)), 3, serving_version=2)
        assert (v.promoted, v.reason) == (False, "BaselineChanged")

    def test_gate_metric_map50_95(self):
        spec = spec_with(rollout={"gate": {"metric": "mAP50_95", "minValue": 0.05}})
        v = decisions.judge(spec, exam(2, 0.4, evaluated(1, 0.6)), 2, serving_version=1)  # 0.2 vs 0.3
        assert not v.promoted and "mAP50_95 0.2000 vs 0.3000" in v.message

    @pytest.mark.parametrize("bad,reason", [
        (result(2, sha=None), "ChecksumMissing"),
        (result(2, sha="xyz"), "ChecksumMissing"),
        (result(3), "ResultMismatch"),
        (result(2, onnx="v9/model.onnx"), "ResultMismatch"),
        (result(2, map50=None), "MetricMissing"),
    ])
    def test_malformed_results_never_promoted(self, bad, reason):
        v = decisions.judge(spec_with(), bad, 2, 0)
        assert not v.promoted and v.reason == reason

    def test_record_carries_both_numbers_and_the_class_names(self):
        r = exam(2, 0.41, evaluated(1, 0.39))
        r = TrainingResult(**{**r.__dict__, "classNames": ["ball", "player"], "datasetGenerated": True})
        verdict = decisions.judge(spec_with(), r, 2, 1)
        record = decisions.model_record(r, "soccer-train-2", "2026-12-02T08:00:00Z", verdict, 2).to_dict()
        assert record["baseline"] == evaluated(1, 0.39) and record["classNames"] == ["ball", "player"]
        assert record["evaluatedOn"] == {"split": "test", "images": 45, "datasetVersion": "7"}
        assert record["datasetGenerated"] is True and record["promoted"]


class TestHistory:
    models = M([{"version": v, "promoted": v % 2 == 1} for v in range(1, 8)])

    @staticmethod
    def serving(spec: Spec, models: list[ModelRecord]) -> int | None:
        model = decisions.serving_model(spec, models)
        return model.version if model else None

    def test_serving_is_newest_promoted(self):
        assert self.serving(spec_with(), self.models) == 7

    def test_rolled_back_is_skipped(self):
        models = decisions.mark_rolled_back(self.models, 7, "not ready")
        assert self.serving(spec_with(), models) == 5
        assert models[-1].rolled_back and not models[-1].promoted and models[-1].reason == "RolloutFailed"

    def test_pinned_wins_even_if_not_promoted(self):
        assert self.serving(spec_with(rollout={"pinnedVersion": 2}), self.models) == 2

    def test_pin_to_unknown_version_falls_back(self):
        assert self.serving(spec_with(rollout={"pinnedVersion": 99}), self.models) == 7

    def test_no_promoted_means_seed(self):
        assert decisions.serving_model(spec_with(), M([{"version": 1, "promoted": False}])) is None

    def test_prune_keeps_newest_and_serving(self):
        kept = decisions.prune_history(self.models, 3, keep=1)
        assert [m.version for m in kept] == [7, 6, 1]
        assert [m.version for m in decisions.prune_history(self.models, 3, keep=7)] == [7, 6, 5]
