"""The dataset: download a Roboflow version with the roboflow SDK, and validate a YOLOv5-format folder."""

from __future__ import annotations

import functools
import io
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TypeVar

import yaml

from kontinual.common.names import ROBOFLOW_API_KEY_ENV
from kontinual.trainer.errors import (DATASET_DOWNLOAD_FAILED, DATASET_EMPTY,
                                       DATASET_GENERATION_FAILED, DATASET_INVALID, INVALID_ARGUMENTS,
                                       TrainingError, scrub)

_LOG = logging.getLogger(__name__)
SPLITS = ("train", "valid", "test")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
DOWNLOAD_ATTEMPTS = 3
DOWNLOAD_DEADLINE = 1800.0  # seconds for the whole download, all attempts (--download-timeout)
T = TypeVar("T")
MAX_PROBLEMS_SHOWN = 8


@dataclass
class Dataset:
    """A validated YOLOv5-format dataset folder."""

    root: Path
    names: list[str]
    images: dict[str, int]  # images per split
    labeled: dict[str, int]  # images with at least one box, per split
    version: str | None = None  # Roboflow dataset version, when downloaded
    warnings: list[str] = field(default_factory=list)

    def split_images(self, split: str) -> Path:
        return self.root / split / "images"

    @property
    def eval_split(self) -> str:
        return "test" if self.labeled.get("test") else "valid"


class _LogLines(io.TextIOBase):
    """stdout of the roboflow SDK (carriage-return progress) as plain, key-free log lines."""

    def write(self, text: str) -> int:
        for line in text.replace("\r", "\n").splitlines():
            if line.strip():
                _LOG.info("roboflow: %s", scrub(line.strip()))
        return len(text)


class _Overdue(Exception):
    """The SDK call did not return within the download's deadline."""


def _within(seconds: float, call: Callable[[], T]) -> T:
    """`call()`, or _Overdue after `seconds`: the roboflow SDK has no timeouts and polls an export forever.

    The call runs in a daemon thread that is abandoned when late; the trainer is a one-shot
    process, so the thread ends when the process does (it writes only into its own folder).
    """
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = call()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name="roboflow-download", daemon=True)
    thread.start()
    thread.join(max(0.0, seconds))
    if thread.is_alive():
        raise _Overdue()
    if "error" in box:
        raise box["error"]
    return box["value"]


def download(workspace: str, project: str, version: str, parent: Path,
             deadline: float = DOWNLOAD_DEADLINE) -> tuple[Path, str]:
    """Download `workspace/project` version N (or the latest) in YOLOv5 format into a fresh folder.

    Every attempt together (version list, export, polling it, the zip) ends within `deadline` s.
    """
    key = os.environ.get(ROBOFLOW_API_KEY_ENV, "")
    if not key:
        raise TrainingError(INVALID_ARGUMENTS, f"downloading from Roboflow needs the API key in the "
                            f"environment variable {ROBOFLOW_API_KEY_ENV} (or pass --dataset-dir)")
    last_error = ""
    ends = time.monotonic() + deadline
    logs = _LogLines()
    for attempt in range(1, DOWNLOAD_ATTEMPTS + 1):
        target = parent / f"dataset-{attempt}"  # the SDK skips a folder that exists: always a new one
        saved = sys.stdout
        sys.stdout = logs  # the SDK prints progress (and URLs): scrubbed log lines instead
        try:
            result = _within(ends - time.monotonic(), functools.partial(_download_once, key, workspace, project, version, target))
            sys.stdout = saved
            return result
        except TrainingError:
            sys.stdout = saved
            raise
        except _Overdue:
            # The late thread may still print: stdout stays scrubbed for the rest of this process.
            raise TrainingError(DATASET_DOWNLOAD_FAILED, f"could not download {workspace}/{project} version "
                                f"{version} from Roboflow within {deadline:g} s (--download-timeout)"
                                + (f"; earlier attempts: {last_error}" if last_error else "")) from None
        except Exception as exc:  # noqa: BLE001 - the SDK raises anything from HTTP errors to KeyError
            sys.stdout = saved
            last_error = scrub(f"{type(exc).__name__}: {exc}", key)[:500]
            _LOG.warning("Roboflow download attempt %d/%d failed: %s", attempt, DOWNLOAD_ATTEMPTS, last_error)
            if attempt < DOWNLOAD_ATTEMPTS:
                time.sleep(min(2 * attempt, max(0.0, ends - time.monotonic())))
    raise TrainingError(DATASET_DOWNLOAD_FAILED, f"could not download {workspace}/{project} version "
                        f"{version} from Roboflow after {DOWNLOAD_ATTEMPTS} attempts: {last_error}")


def _download_once(key: str, workspace: str, project: str, version: str, target: Path) -> tuple[Path, str]:
    import roboflow

    rf_project = roboflow.Roboflow(api_key=key).workspace(workspace).project(project)
    if version == "latest":
        numbers = sorted(int(v.version) for v in rf_project.versions())
        if not numbers:
            raise TrainingError(DATASET_EMPTY, f"Roboflow project {workspace}/{project} has no dataset "
                                "versions yet: generate one in Roboflow, then train")
        version = str(numbers[-1])
    _LOG.info("downloading %s/%s version %s (yolov5pytorch) from %s", workspace, project, version,
              roboflow.config.API_URL)
    rf_project.version(int(version)).download("yolov5", location=str(target), overwrite=True)
    return target, version


def _refusal(exc: Exception) -> str:
    """What a failed generate_version call means: the SDK raises Roboflow's error object, its own
    RuntimeError for an answer that is not JSON, and KeyError/ValueError for a 200 without the fields."""
    if isinstance(exc, RuntimeError) and exc.args and isinstance(exc.args[0], dict):
        error = exc.args[0]
        return f"Roboflow answered: {error.get('message') or error}"
    if isinstance(exc, (KeyError, ValueError, TypeError)):
        return (f"its answer to POST /<workspace>/<project>/generate lacks what the API returns "
                f"({type(exc).__name__}: {exc}); expected {{\"message\": ..., \"version\": N}}")
    return f"{type(exc).__name__}: {exc}"


def generate(workspace: str, project: str, settings: dict, *, timeout: float,
             labeled_at_last_run: int | None, poll_seconds: float = 5.0) -> str | None:
    """Ask Roboflow for a fresh dataset version and wait (at most `timeout` s) until it is generated.

    Skipped (None) when the project has no more annotated images than `labeled_at_last_run`. The
    roboflow SDK's generate_version posts the request and returns the new number; generation is
    asynchronous, and the SDK's own wait has no bound, so the version is polled here, as the SDK
    does (GET .../<N>?nocache=true until `generating` is false and it has images).
    """
    key = os.environ.get(ROBOFLOW_API_KEY_ENV, "")
    if not key:
        raise TrainingError(INVALID_ARGUMENTS, f"generating a Roboflow version needs the API key in {ROBOFLOW_API_KEY_ENV}")
    import roboflow
    from roboflow.adapters import rfapi

    deadline = time.monotonic() + timeout  # every SDK call below too: the SDK has no timeouts

    def request() -> int | None:
        rf_project = roboflow.Roboflow(api_key=key).workspace(workspace).project(project)
        annotated = int(rf_project.images) - int(rf_project.unannotated)
        if labeled_at_last_run is not None and annotated <= labeled_at_last_run:
            _LOG.info("%s/%s has %d annotated images, %d at the last run: no new version generated",
                      workspace, project, annotated, labeled_at_last_run)
            return None
        _LOG.info("generating a new version of %s/%s from %d annotated images (%s)", workspace, project,
                  annotated, settings)
        return int(rf_project.generate_version(settings))

    saved, sys.stdout = sys.stdout, _LogLines()  # the SDK prints: scrubbed log lines instead
    try:
        number = _within(deadline - time.monotonic(), request)
    except _Overdue:  # the late thread may still print: stdout stays scrubbed
        raise TrainingError(DATASET_GENERATION_FAILED, f"Roboflow did not answer the request to generate a "
                            f"version of {workspace}/{project} within {timeout:.0f}s; raise "
                            "spec.training.dataset.generateTimeoutSeconds or retry") from None
    except TrainingError:
        sys.stdout = saved
        raise
    except Exception as exc:  # noqa: BLE001 - the SDK raises RuntimeError, HTTP errors, KeyError
        sys.stdout = saved
        raise TrainingError(DATASET_GENERATION_FAILED, scrub(f"Roboflow did not generate a new version of "
                            f"{workspace}/{project}: {_refusal(exc)}", key)[:800]) from exc
    sys.stdout = saved
    if number is None:
        return None
    progress, last_error = 0.0, ""
    while True:
        try:
            info = _within(max(0.0, deadline - time.monotonic()), lambda: rfapi.get_version(
                key, workspace, project, str(number), nocache=True)).get("version", {})
            progress = float(info.get("progress") or 0.0)
            if not info.get("generating") and int(info.get("images") or 0) > 0:
                _LOG.info("Roboflow generated %s/%s version %d (%s images)", workspace, project, number,
                          info.get("images"))
                return str(number)
        except _Overdue:
            last_error = "no answer to the status request"
        except Exception as exc:  # noqa: BLE001 - a poll that fails is retried until the deadline
            last_error = scrub(f"{type(exc).__name__}: {exc}", key)[:300]
        if time.monotonic() >= deadline:
            raise TrainingError(DATASET_GENERATION_FAILED, f"Roboflow did not finish generating {workspace}/"
                                f"{project} version {number} within {timeout:.0f}s (progress {progress:.0%})"
                                + (f"; last error: {last_error}" if last_error else "")
                                + "; raise spec.training.dataset.generateTimeoutSeconds or retry")
        _LOG.info("Roboflow is generating version %d: %.0f%%", number, progress * 100)
        time.sleep(min(poll_seconds, max(0.0, deadline - time.monotonic())))


def _names(data: dict, where: Path) -> list[str]:
    names = data.get("names")
    if isinstance(names, dict):
        names = [names[k] for k in sorted(names)]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        raise TrainingError(DATASET_INVALID, f"{where}: `names` must be a non-empty list of class names, "
                            f"got {names!r}")
    if len(set(names)) != len(names):
        raise TrainingError(DATASET_INVALID, f"{where}: class names repeat: {names}")
    nc = data.get("nc", len(names))
    if nc != len(names):
        raise TrainingError(DATASET_INVALID, f"{where}: nc is {nc} but names lists {len(names)} classes")
    return list(names)


def _check_label_file(path: Path, nc: int, root: Path, problems: list[str]) -> int:
    """Number of boxes in a label file; problems (file and line named) appended."""
    boxes = 0
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        where = f"{path.relative_to(root)} line {number}"
        try:
            cls, coords = int(fields[0]), [float(v) for v in fields[1:]]
        except ValueError:
            problems.append(f"{where}: not numbers: {line[:60]!r}")
            continue
        if len(coords) < 4 or (len(coords) > 4 and len(coords) % 2):
            problems.append(f"{where}: expected 'class x y w h' (or a polygon), got {len(fields)} fields")
        elif not 0 <= cls < nc:
            problems.append(f"{where}: class {cls} out of range 0..{nc - 1}")
        elif any(not -0.01 <= v <= 1.01 for v in coords):
            problems.append(f"{where}: coordinates must be normalized to 0..1, got {line[:60]!r}")
        elif len(coords) == 4 and (coords[2] <= 0 or coords[3] <= 0):
            problems.append(f"{where}: box width and height must be > 0")
        else:
            boxes += 1
    return boxes


def _check_image(path: Path, root: Path, problems: list[str]) -> None:
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.verify()
    except Exception as exc:  # noqa: BLE001 - PIL raises many kinds
        problems.append(f"{path.relative_to(root)}: not a readable image ({type(exc).__name__})")


def validate(root: Path) -> Dataset:
    """Check a YOLOv5-format folder (data.yaml + {train,valid,test}/{images,labels}); errors name files."""
    data_yaml = root / "data.yaml"
    if not data_yaml.is_file():
        raise TrainingError(DATASET_INVALID, f"{data_yaml} is missing: expected a YOLOv5-format dataset "
                            "(data.yaml and train|valid|test/{images,labels})")
    try:
        data = yaml.safe_load(data_yaml.read_text())
    except yaml.YAMLError as exc:
        raise TrainingError(DATASET_INVALID, f"{data_yaml} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise TrainingError(DATASET_INVALID, f"{data_yaml} must be a mapping with names and nc")
    names = _names(data, data_yaml)
    if not (root / "train" / "images").is_dir():
        raise TrainingError(DATASET_INVALID, f"{root}/train/images is missing: a dataset needs a train split")
    problems: list[str] = []
    images: dict[str, int] = {}
    labeled: dict[str, int] = {}
    for split in SPLITS:
        folder = root / split / "images"
        files = sorted(p for p in folder.glob("*") if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []
        images[split], labeled[split] = len(files), 0
        for image in files:
            _check_image(image, root, problems)
            label = root / split / "labels" / f"{image.stem}.txt"
            if label.is_file() and _check_label_file(label, len(names), root, problems):
                labeled[split] += 1
    if problems:
        shown = "; ".join(problems[:MAX_PROBLEMS_SHOWN])
        more = f" (and {len(problems) - MAX_PROBLEMS_SHOWN} more)" if len(problems) > MAX_PROBLEMS_SHOWN else ""
        raise TrainingError(DATASET_INVALID, f"{len(problems)} problem(s) in the dataset: {shown}{more}")
    if not labeled["train"]:
        raise TrainingError(DATASET_EMPTY, f"the train split has no labeled images ({images['train']} "
                            "images, none with a box): label images in Roboflow and generate a new version")
    if not labeled["test"] and not labeled["valid"]:
        raise TrainingError(DATASET_EMPTY, "neither the test nor the valid split has labeled images: "
                            "the model cannot be evaluated; add a valid or test split")
    _LOG.info("dataset %s: classes %s; images train %d, valid %d, test %d (labeled %d/%d/%d)", root, names,
              images["train"], images["valid"], images["test"], labeled["train"], labeled["valid"], labeled["test"])
    return Dataset(root=root, names=names, images=images, labeled=labeled)
