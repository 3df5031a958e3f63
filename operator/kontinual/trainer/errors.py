"""Failure reasons of a training run: one exception type carrying a stable CamelCase reason.

Reasons (stable, the operator and users match on them):
  InvalidArguments     a flag or environment variable is missing or malformed
  DatasetDownloadFailed  Roboflow could not be reached, refused the key, or the download broke
  DatasetGenerationFailed  Roboflow refused to generate a new dataset version, or did not finish in time
  DatasetInvalid       the dataset's layout, data.yaml, an image or a label line is wrong
  DatasetEmpty         the training split has no labeled images
  RecipeInvalid        the SparseML recipe cannot be fetched (zoo:, http), read or applied
  BaseWeightsInvalid   --base-weights cannot be fetched (zoo:, http) or read as a checkpoint or config
  TrainingFailed       training itself failed (e.g. the loss became NaN, out of memory)
  ExportFailed         ONNX export failed, or the ONNX does not load in onnxruntime or compile in DeepSparse
  EvaluationFailed     running the exported ONNX on the evaluation split failed
  ArtifactsFailed      the version folder could not be written (claim full, read-only, exists already)
"""

from __future__ import annotations

import os

from kontinual.common.names import ROBOFLOW_API_KEY_ENV
from kontinual.common.roboflow import redact

INVALID_ARGUMENTS = "InvalidArguments"
DATASET_DOWNLOAD_FAILED = "DatasetDownloadFailed"
DATASET_GENERATION_FAILED = "DatasetGenerationFailed"
DATASET_INVALID = "DatasetInvalid"
DATASET_EMPTY = "DatasetEmpty"
RECIPE_INVALID = "RecipeInvalid"
BASE_WEIGHTS_INVALID = "BaseWeightsInvalid"
TRAINING_FAILED = "TrainingFailed"
EXPORT_FAILED = "ExportFailed"
EVALUATION_FAILED = "EvaluationFailed"
ARTIFACTS_FAILED = "ArtifactsFailed"

REASONS = (
    INVALID_ARGUMENTS, DATASET_DOWNLOAD_FAILED, DATASET_GENERATION_FAILED, DATASET_INVALID, DATASET_EMPTY, RECIPE_INVALID,
    BASE_WEIGHTS_INVALID, TRAINING_FAILED, EXPORT_FAILED, EVALUATION_FAILED, ARTIFACTS_FAILED,
)



class TrainingError(Exception):
    """A failure with a stable reason and a message a person can act on."""

    def __init__(self, reason: str, message: str) -> None:
        assert reason in REASONS, reason
        super().__init__(message)
        self.reason = reason
        self.message = message


def scrub(text: str, secret: str | None = None) -> str:
    """`text` with the Roboflow API key (from the argument or the environment) and any
    `api_key=` query value replaced by *** (the shared client's redaction)."""
    return redact(text, secret if secret is not None else os.environ.get(ROBOFLOW_API_KEY_ENV, ""))
