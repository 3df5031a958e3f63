"""The training Job builder: what `kontinual train` is asked to do, and that the trainer can do it."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from kontinual.controller import jobs
from kontinual.controller.builders import ModelTarget, model_path
from kontinual.controller.settings import Settings
from kontinual.controller.spec import Spec, parse
from kontinual.controller.statusdata import ModelRecord

SETTINGS = Settings(trainer_image="registry.example/kontinual/trainer:1.2.3", roboflow_api_urls=("https://rf.example",))
ZOO = "zoo:cv/detection/yolov5-s/pytorch/ultralytics/coco/pruned_quant-aggressive_94"
ROBOFLOW = {"workspace": "acme", "project": "soccer-players", "apiKeySecretRef": {"name": "roboflow", "key": "apiKey"},
            "apiUrl": "https://rf.example"}


def make_spec(training: dict[str, Any] | None = None, **spec: Any) -> Spec:
    body = {"apiVersion": "kontinual.io/v1alpha1", "kind": "ContinualModel",
            "metadata": {"name": "soccer", "namespace": "vision", "uid": "uid-1"},
            "spec": {"model": {"uri": ZOO}, "dataLogging": {"roboflow": ROBOFLOW},
                     "training": copy.deepcopy(training or {}), **spec}}
    return parse(body, SETTINGS)


def job(spec: Spec, version: int = 1, base: int | None = None) -> dict[str, Any]:
    return jobs.training_job(spec, SETTINGS, version=version, base_weights=base)


def trainer(manifest: dict[str, Any]) -> dict[str, Any]:
    (container,) = manifest["spec"]["template"]["spec"]["containers"]
    return container


def arg(container: dict[str, Any], flag: str) -> str:
    args = container["args"]
    return args[args.index(flag) + 1]


def mounts(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """mountPath -> the volume behind it."""
    volumes = {v["name"]: v for v in manifest["spec"]["template"]["spec"]["volumes"]}
    return {m["mountPath"]: volumes[m["name"]] for m in trainer(manifest)["volumeMounts"]}


def trainer_args(manifest: dict[str, Any]) -> Any:
    """The Job's command line as the trainer itself parses it (raises if it would refuse it)."""
    from kontinual.trainer import cli  # light: argparse, no torch

    container = trainer(manifest)
    assert container["command"] == ["kontinual", "train"]
    return cli._parse(container["args"])  # noqa: SLF001 - the trainer's own parser and checks


def test_job_name_labels_and_image() -> None:
    manifest = job(make_spec(), version=4)
    assert manifest["metadata"]["name"] == "soccer-train-4"
    labels = manifest["metadata"]["labels"]
    assert labels["app.kubernetes.io/component"] == "training" and labels["kontinual.io/version"] == "4"
    assert manifest["spec"]["template"]["metadata"]["labels"] == {**labels, "kontinual.io/mounts-models": "true"}
    assert trainer(manifest)["image"] == SETTINGS.trainer_image
    custom = job(make_spec({"image": "mirror.example/trainer:dev"}))
    assert trainer(custom)["image"] == "mirror.example/trainer:dev"


def test_the_trainer_accepts_the_jobs_command_line() -> None:
    spec = make_spec({"epochs": 7, "imageSize": 320, "batchSize": 4, "device": "cpu", "dataset": {"version": 5}})
    args = trainer_args(job(spec, version=3, base=2))
    assert (args.version, args.epochs, args.image_size, args.batch_size, args.device) == (3, 7, 320, 4, "cpu")
    assert (args.roboflow_workspace, args.roboflow_project, args.dataset_version) == ("acme", "soccer-players", "5")
    assert str(args.result_file) == "/dev/termination-log"


def test_the_run_writes_where_the_server_will_read_it() -> None:
    spec = make_spec()
    manifest = job(spec, version=3)
    args = trainer_args(manifest)
    claim_root = mounts(manifest)[str(args.output_dir)]
    assert claim_root["persistentVolumeClaim"]["claimName"] == spec.storage.claim_name
    assert not claim_root["persistentVolumeClaim"].get("readOnly")
    # The trainer writes <output-dir>/v3/model.onnx; the server of version 3 reads it from the same claim.
    served = ModelTarget.trained(spec, 3)
    assert served.source.claim == spec.storage.claim_name
    assert model_path(served.source) == f"{args.output_dir}/v3/model.onnx"


def test_first_run_follows_the_served_stub_and_later_runs_continue() -> None:
    """Empty baseWeights with a zoo: seed: the stub's transfer checkpoint and its transfer recipe."""
    first = trainer_args(job(make_spec(), base=None))
    assert first.base_weights == f"{ZOO}?recipe_type=transfer_learn"
    assert first.recipe == f"{ZOO}?recipe_type=transfer_learn"
    # Random init only when asked for; an explicit checkpoint wins over the seed.
    assert trainer_args(job(make_spec({"baseWeights": "yolov5n.yaml"}))).base_weights == "yolov5n.yaml"
    manifest = job(make_spec(), version=5, base=4)
    later = trainer_args(manifest)
    assert later.base_weights == "/models/v4/model.pt"
    assert later.recipe == f"{ZOO}?recipe_type=transfer_learn"  # the lineage keeps its transfer recipe
    assert "/models" in mounts(manifest)


def test_a_set_recipe_wins_over_the_seeds_transfer_recipe() -> None:
    args = trainer_args(job(make_spec({"recipe": {"uri": "https://recipes.example.com/r.yaml"}})))
    assert args.base_weights == f"{ZOO}?recipe_type=transfer_learn" and args.recipe.startswith("/inputs/")
    other = "zoo:cv/detection/yolov5-n/pytorch/ultralytics/coco/pruned_quant-aggressive_80?recipe_type=transfer"
    args = trainer_args(job(make_spec({"baseWeights": other})))
    assert args.base_weights == other
    assert args.recipe == other.replace("recipe_type=transfer", "recipe_type=transfer_learn")


@pytest.mark.parametrize("seed", ["https://models.example.com/yolov5s.onnx", "pvc://seeds/yolov5s/model.onnx",
                                  "file:///opt/models/model.onnx"])
def test_a_seed_that_is_not_a_stub_needs_base_weights(seed: str) -> None:
    from kontinual.controller.spec import SpecError

    with pytest.raises(SpecError) as caught:
        make_spec({}, model={"uri": seed})
    message = str(caught.value)
    assert "spec.training.baseWeights is required" in message
    assert all(form in message for form in ("zoo:<stub>", "https://", "pvc://", "file://", "yolov5s.yaml"))
    spec = make_spec({"baseWeights": "pvc://seeds/yolov5s/yolov5s.pt"}, model={"uri": seed})
    args = trainer_args(job(spec))
    assert args.base_weights == "/inputs/weights-claim/yolov5s/yolov5s.pt"
    from kontinual.trainer.recipes import DEFAULT_RECIPE

    assert args.recipe == DEFAULT_RECIPE  # no stub to take a transfer recipe from: the built-in one


def test_sparsezoo_mirror_reaches_trainer_and_server() -> None:
    from kontinual.controller.builders import deployment

    mirror = Settings(trainer_image="t", sparsezoo_api_url="http://sparsezoo.mirror.internal:8080")
    spec = make_spec()
    trainer_env = {e["name"]: e.get("value") for e in trainer(jobs.training_job(spec, mirror, version=1,
                                                                              base_weights=None))["env"]}
    (server,) = deployment(spec, mirror)["spec"]["template"]["spec"]["containers"]
    server_env = {e["name"]: e.get("value") for e in server["env"]}
    assert trainer_env["SPARSEZOO_API_URL"] == server_env["SPARSEZOO_API_URL"] == mirror.sparsezoo_api_url
    assert "SPARSEZOO_API_URL" not in {e["name"] for e in trainer(job(spec))["env"]}  # unset: sparsezoo's default


def test_base_weights_on_the_model_claim_are_read_through_its_mount() -> None:
    manifest = job(make_spec({"baseWeights": "pvc://soccer-models/seed/yolov5n.pt"}))
    path = trainer_args(manifest).base_weights
    assert path == "/models/seed/yolov5n.pt"


@pytest.mark.parametrize("weights", ["https://models.example.com/yolov5n.pt", "pvc://other-claim/seed/yolov5n.pt"])
def test_every_base_weights_form_the_crd_allows_reaches_the_trainer_as_a_file(weights: str) -> None:
    """The CRD accepts https:// and pvc://<any claim>/ .pt files; the trainer opens a local path."""
    manifest = job(make_spec({"baseWeights": weights}))
    path = trainer_args(manifest).base_weights
    assert path.endswith((".yaml", ".yml")) or any(path.startswith(m + "/") for m in mounts(manifest)), (
        f"--base-weights {path!r} is neither a model config nor under a mounted volume")


def test_recipe_from_a_config_map_is_mounted_and_passed() -> None:
    manifest = job(make_spec({"recipe": {"configMapRef": {"name": "soccer-recipe", "key": "my.yaml"}}}))
    recipe = trainer_args(manifest).recipe
    directory, _, filename = recipe.rpartition("/")
    volume = mounts(manifest)[directory]
    assert volume["configMap"]["name"] == "soccer-recipe"
    assert volume["configMap"]["items"] == [{"key": "my.yaml", "path": filename}]


def test_no_recipe_and_no_stub_means_the_trainers_built_in_one() -> None:
    from kontinual.trainer.recipes import DEFAULT_RECIPE

    spec = make_spec({"baseWeights": "https://models.example.com/yolov5s.pt"},
                     model={"uri": "https://models.example.com/yolov5s.onnx"})
    assert trainer_args(job(spec)).recipe == DEFAULT_RECIPE


@pytest.mark.parametrize("uri", ["https://recipes.example.com/recipe.yaml", "file:///opt/recipes/recipe.yaml",
                                 "pvc://soccer-models/recipes/recipe.yaml"])
def test_every_recipe_uri_form_reaches_the_trainer_as_a_file(uri: str) -> None:
    """The CRD accepts recipe.uri as https://, file://, pvc://; the trainer reads a local file or a built-in name."""
    from kontinual.trainer.recipes import builtin_recipes

    manifest = job(make_spec({"recipe": {"uri": uri}}))
    recipe = trainer_args(manifest).recipe
    in_image = uri.startswith("file://") and recipe == uri[len("file://"):]
    assert recipe in builtin_recipes() or in_image or any(recipe.startswith(m + "/") for m in mounts(manifest)), (
        f"--recipe {recipe!r} is neither a built-in recipe, a file in the image, nor under a mounted volume")


def test_a_builtin_recipe_reaches_the_trainer_by_name_and_the_names_are_the_trainers() -> None:
    from kontinual.common.contract import BUILTIN_RECIPES
    from kontinual.trainer.recipes import DEFAULT_RECIPE, builtin_recipes

    assert sorted(BUILTIN_RECIPES) == builtin_recipes() and DEFAULT_RECIPE == "prune-quantize"
    manifest = job(make_spec({"recipe": {"uri": "builtin:prune-quantize-aggressive"}}))
    assert trainer_args(manifest).recipe == "prune-quantize-aggressive"


def test_roboflow_key_and_api_url_reach_the_trainer() -> None:
    env = {e["name"]: e for e in trainer(job(make_spec()))["env"]}
    # the documented variable `kontinual train` reads the key from
    assert env["ROBOFLOW_API_KEY"] == {"name": "ROBOFLOW_API_KEY",
                                       "valueFrom": {"secretKeyRef": {"name": "roboflow", "key": "apiKey"}}}
    assert env["API_URL"]["value"] == "https://rf.example"  # the roboflow SDK's base URL variable


def test_job_limits_and_result_reporting() -> None:
    manifest = job(make_spec({"activeDeadlineSeconds": 3600, "backoffLimit": 0}))
    assert (manifest["spec"]["activeDeadlineSeconds"], manifest["spec"]["backoffLimit"]) == (3600, 0)
    assert manifest["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    container = trainer(manifest)
    assert container["terminationMessagePath"] == "/dev/termination-log"
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"


def test_resources_and_scheduling_from_the_spec_or_defaults() -> None:
    gpu = {"limits": {"nvidia.com/gpu": 1, "memory": "16Gi"}, "requests": {"cpu": "4", "memory": "8Gi"}}
    tolerations = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    manifest = job(make_spec({"resources": gpu, "nodeSelector": {"gpu": "true"}, "tolerations": tolerations}))
    assert trainer(manifest)["resources"] == gpu
    pod = manifest["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"gpu": "true"} and pod["tolerations"] == tolerations
    assert trainer(job(make_spec()))["resources"] == jobs.DEFAULT_TRAINER_RESOURCES


def test_shared_memory_and_tmp_are_writable_for_torch() -> None:
    manifest = job(make_spec())
    volumes = mounts(manifest)
    assert volumes["/dev/shm"]["emptyDir"].get("medium") == "Memory"
    assert "emptyDir" in volumes["/tmp"]


def test_training_job_needs_training() -> None:
    body = {"metadata": {"name": "demo"}, "spec": {"model": {"uri": ZOO}}}
    with pytest.raises(ValueError):
        jobs.training_job(parse(body, SETTINGS), SETTINGS, version=1, base_weights=None)


def test_job_is_deterministic() -> None:
    assert job(make_spec(), version=2, base=1) == job(make_spec(), version=2, base=1)


# --- champion vs challenger, fresh dataset versions ---------------------------------------------

def test_first_run_compares_with_the_seed_and_later_runs_with_the_serving_version() -> None:
    spec = make_spec(classNames=["ball", "player"])
    first = trainer_args(job(spec))
    assert (first.baseline_model, first.baseline_version, first.baseline_class_names) == (ZOO, 0, "coco")
    serving = ModelRecord(version=3, promoted=True, class_names=("ball", "player"))
    manifest = jobs.training_job(spec, SETTINGS, version=4, base_weights=3, baseline=jobs.Baseline.of(spec, serving))
    later = trainer_args(manifest)
    assert (later.baseline_model, later.baseline_version) == ("/models/v3/model.onnx", 3)
    assert later.baseline_class_names == '["ball","player"]'


def test_seed_on_another_claim_or_https_reaches_the_trainer_as_a_file() -> None:
    weights = {"baseWeights": "https://models.example/yolov5s.pt"}  # a seed that is not a stub needs them
    spec = make_spec(weights, model={"uri": "pvc://store/yolo/seed.onnx", "classNames": ["ball"]})
    manifest = job(spec)
    assert arg(trainer(manifest), "--baseline-model") == "/inputs/baseline-claim/yolo/seed.onnx"
    assert mounts(manifest)["/inputs/baseline-claim"]["persistentVolumeClaim"]["claimName"] == "store"
    assert arg(trainer(manifest), "--baseline-class-names") == '["ball"]'
    https = job(make_spec(weights, model={"uri": "https://models.example/seed.onnx"}))
    fetch = {c["name"]: c for c in https["spec"]["template"]["spec"]["initContainers"]}["fetch-baseline"]
    assert fetch["command"][-2:] == ["https://models.example/seed.onnx", "/inputs/baseline.onnx"]
    assert "--baseline-class-names" not in trainer(https)["args"]  # no names known: the trainer checks nc


def test_latest_dataset_is_generated_first_with_the_resize_and_no_augmentation() -> None:
    args = trainer_args(jobs.training_job(make_spec({"imageSize": 320}), SETTINGS, version=2, base_weights=None,
                                          labeled_at_last_run=140))
    import json

    assert json.loads(args.generate_version) == {
        "preprocessing": {"auto-orient": True, "resize": {"width": 320, "height": 320, "format": "Stretch to"}},
        "augmentation": {}}
    assert (args.generate_timeout, args.labeled_at_last_run) == (900, 140)


def test_generation_takes_the_spec_settings_and_can_be_turned_off() -> None:
    import json

    spec = make_spec({"dataset": {"preprocessing": {"grayscale": True}, "augmentation": {"flip": {"horizontal": True}},
                                  "generateTimeoutSeconds": 60}})
    args = trainer_args(job(spec))
    settings = json.loads(args.generate_version)
    assert settings["preprocessing"]["grayscale"] is True and "resize" in settings["preprocessing"]
    assert settings["augmentation"] == {"flip": {"horizontal": True}} and args.generate_timeout == 60
    assert args.labeled_at_last_run is None
    for off in ({"dataset": {"generate": False}}, {"dataset": {"version": "7"}}):
        assert "--generate-version" not in trainer(job(make_spec(off)))["args"]


def test_the_job_carries_what_it_serves() -> None:
    manifest = jobs.training_job(make_spec(), SETTINGS, version=2, base_weights=None,
                                 annotations={"kontinual.io/train-request": "go"})
    assert manifest["metadata"]["annotations"] == {"kontinual.io/train-request": "go"}
    assert "annotations" not in job(make_spec())["metadata"]


def test_the_result_reader_prints_the_claims_result_read_only() -> None:
    spec = make_spec({"image": "mirror.example/trainer:dev", "nodeSelector": {"pool": "train"},
                      "imagePullSecrets": [{"name": "pull"}]})
    reader = jobs.result_reader_job(spec, SETTINGS, 3)
    assert reader["metadata"]["name"] == "soccer-result-3"
    assert reader["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    labels = reader["metadata"]["labels"]
    assert labels["kontinual.io/model"] == "soccer" and "kontinual.io/version" not in labels  # not a training run
    pod = reader["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "mirror.example/trainer:dev"
    assert container["command"] == ["cp", "/models/v3/result.json", "/dev/termination-log"]
    assert container["terminationMessagePolicy"] == "File"  # a failed copy never reads as a result
    assert container["volumeMounts"] == [{"name": "models", "mountPath": "/models", "readOnly": True}]
    assert pod["volumes"] == [{"name": "models", "persistentVolumeClaim": {"claimName": "soccer-models",
                                                                           "readOnly": True}}]
    assert pod["securityContext"] == trainer_pod(job(spec))["securityContext"]
    assert container["securityContext"] == trainer(job(spec))["securityContext"]
    assert pod["automountServiceAccountToken"] is False and pod["restartPolicy"] == "Never"
    assert (pod["nodeSelector"], pod["imagePullSecrets"]) == ({"pool": "train"}, [{"name": "pull"}])
    assert "env" not in container  # no Secret, no token: it only reads one file
    assert reader["spec"]["backoffLimit"] == 0 and reader["spec"]["ttlSecondsAfterFinished"] > 0
    assert reader["spec"]["template"]["metadata"]["labels"]["kontinual.io/mounts-models"] == "true"


def trainer_pod(manifest: dict[str, Any]) -> dict[str, Any]:
    return manifest["spec"]["template"]["spec"]
