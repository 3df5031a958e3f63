"""The Apache-licensed serving runtime: kserve's ModelServer (Open Inference Protocol v2) with OpenVINO or
onnxruntime, answering DeepSparse Server's `from_files` route with DeepSparse's YOLO response.

Run as `python -m kontinual.serving.kserve_runtime --config-file server.yaml --http_port 5543`, the config
being what `kontinual.controller.builders.server_config` renders. Routes: kserve's own (`/v2/health/live`,
`/v2/health/ready`, `/v2/models/NAME`, `/v2/models/NAME/ready`, `/v2/models/NAME/infer` with OIP v2
tensors: the engine's raw output), plus `POST /v2/models/NAME/infer/from_files` (multipart field `request`,
once per image), registered on kserve's module-level FastAPI app before `ModelServer.start` adds its routers.
One uvicorn worker (kserve pickles models into worker processes, which a compiled engine does not survive):
scale with replicas. Data capture uses the same core as the DeepSparse logger (kontinual.serving.capture).

Server metrics (with dataLogging, on its metricsPort): the same `kontinual.serving.metrics.Counters` as the
DeepSparse logger, counted the way DeepSparse Server's system logging counts them, so one dashboard reads both:
`ok` and the latency histogram once per finished inference (from_files: pre-process, engine, post-process, not
the upload's decoding; OIP v2 tensors: the engine), `failed` once per HTTP response but a 200 (the
`FailedRequests` middleware, as DeepSparse's `request_details`), so health probes are neither.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy
import yaml
from fastapi import File, HTTPException, UploadFile
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer, model_server
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kontinual.common.capture_settings import CaptureSettings
from kontinual.common.names import METRICS_HOST_ENV
from kontinual.serving import engines, yolo
from kontinual.serving.capture import RequestCapture, client_for
from kontinual.serving.metrics import Counters

_LOG = logging.getLogger("kontinual.serving")


def _capture(entry: dict[str, Any]) -> RequestCapture:
    """The capture core from the same settings the DeepSparse logger entry carries (no secret: the key is env)."""
    settings = CaptureSettings.from_mapping({k: v for k, v in entry.items() if k != "path"}, where="capture")
    return RequestCapture(settings, client_for(settings), os.environ.get(METRICS_HOST_ENV, "0.0.0.0"), settings.metrics_port)


class YoloModel(Model):
    """One YOLOv5 ONNX behind an engine, with DeepSparse's pre/post-processing."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(str(config["name"]))
        self.config = config
        self.class_names: list[str] | None = list(config.get("class_names") or []) or None
        self.capture: RequestCapture | None = None
        self._runner: engines.Engine | None = None  # not `engine`: kserve.Model uses that name

    def load(self) -> bool:
        runner = engines.load(self.config["runtime"], str(self.config["model"]), self.config.get("num_cores"))
        shape = runner.input_shape
        if len(shape) != 4 or shape[2] is None or shape[3] is None:
            raise ValueError(f"{self.config['model']}: expected an image input [B, 3, H, W] with static H and W, "
                             f"got {shape}")
        self.size = (int(shape[2]), int(shape[3]))
        self.batch = int(shape[0] or self.config.get("batch_size") or 1)
        self._runner = runner
        if self.config.get("capture"):
            self.capture = _capture(dict(self.config["capture"]))
        self.ready = True
        _LOG.info("serving %s with %s (%s, input %s)", self.name, self.config["runtime"], self.config["model"], shape)
        return self.ready

    def detect(self, images: Sequence[numpy.ndarray]) -> list[yolo.Detections]:
        """Images (HxWx3 RGB uint8) -> detections, in batches of the model's batch size (the last one padded)."""
        assert self._runner is not None
        runner, results = self._runner, []
        for start in range(0, len(images), self.batch):
            chunk = list(images[start:start + self.batch])
            batch = [yolo.preprocess(image, self.size, runner.uint8_input) for image in chunk]
            batch += [batch[-1]] * (self.batch - len(batch))
            output = runner.run(numpy.stack(batch))
            shapes = [(int(image.shape[0]), int(image.shape[1])) for image in chunk]
            results += yolo.postprocess(output[:len(chunk)], shapes, self.size)
        return results

    def answer(self, images: Sequence[numpy.ndarray]) -> dict[str, Any]:
        """The from_files answer, and (1 of `frequency` requests) the images and boxes handed to data capture."""
        started = time.perf_counter()
        detections = self.detect(images)
        body = yolo.response(detections, self.class_names)
        if self.capture is not None:
            self.capture.counters.served(time.perf_counter() - started)
            for i in self.capture.sample(images):
                self.capture.submit(images[i], body["boxes"][i], body["labels"][i])
        return body

    async def predict(self, payload: InferRequest, headers: dict[str, str] | None = None,
                      response_headers: dict[str, str] | None = None) -> InferResponse:
        """OIP v2 tensors: the first input is the model's image batch, the answer the engine's raw output."""
        assert self._runner is not None
        batch = payload.inputs[0].as_numpy()
        started = time.perf_counter()
        output = await run_in_threadpool(self._runner.run, batch)
        if self.capture is not None:
            self.capture.counters.served(time.perf_counter() - started)
        result = InferOutput(name="output", shape=list(output.shape), datatype="FP32")
        result.set_data_from_numpy(numpy.asarray(output, dtype=numpy.float32), binary_data=False)
        return InferResponse(response_id=payload.id or "", model_name=self.name, infer_outputs=[result])

    def stop(self) -> None:
        """kserve calls this when the server shuts down (SIGTERM): drain the capture queue for a bounded time."""
        if self.capture is not None:
            self.capture.close()


class FailedRequests:
    """ASGI middleware: every HTTP response but a 200 (or none, the request having raised) is a failed request.

    DeepSparse Server's `SystemLoggingMiddleware` counts the same way (`successful_request_count` 0 for anything
    but a 200); kserve's own error handlers (404 unknown model, 400/422 bad input, 500) all answer through here.
    """

    def __init__(self, app: ASGIApp, counters: Counters) -> None:
        self.app = app
        self.counters = counters

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status: list[int] = []

        async def watch(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(int(message["status"]))
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            if status != [200]:
                self.counters.failed_request()


REQUEST_FILES = File(...)  # FastAPI's marker for a required multipart field (a missing one is its 422)


@model_server.app.post("/v2/models/{model_name}/infer/from_files")
async def from_files(model_name: str, request: list[UploadFile] = REQUEST_FILES) -> dict[str, Any]:
    """DeepSparse Server's upload route: field `request` once per image; its YOLOOutput body."""
    model = SERVER.registered_models.get_model(model_name) if SERVER else None
    if not isinstance(model, YoloModel):
        raise HTTPException(404, f"no model named {model_name!r}")
    if not model.ready:
        raise HTTPException(503, f"model {model_name!r} is not ready")
    images = []
    for upload in request:
        data = await upload.read()
        try:
            images.append(await run_in_threadpool(yolo.decode, data))
        except Exception as exc:  # PIL raises several types for undecodable bytes
            raise HTTPException(400, f"file {upload.filename!r} of field 'request' is not an image PIL can read: "
                                     f"{exc}") from None
    return await run_in_threadpool(model.answer, images)


SERVER: ModelServer | None = None


def read_config(path: str) -> dict[str, Any]:
    config = yaml.safe_load(Path(path).read_text())
    missing = [key for key in ("runtime", "name", "model") if not (isinstance(config, dict) and config.get(key))]
    if missing:
        raise SystemExit(f"{path}: missing {', '.join(missing)} (expected the config kontinual renders)")
    if config["runtime"] not in engines.ENGINES:
        raise SystemExit(f"{path}: runtime must be one of {', '.join(engines.ENGINES)}, got {config['runtime']!r}")
    return config


def main(argv: list[str] | None = None) -> None:
    global SERVER
    parser = argparse.ArgumentParser(parents=[model_server.parser], description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", required=True, help="the server config kontinual renders (server.yaml)")
    args, _ = parser.parse_known_args(argv)
    if not logging.getLogger("kontinual").handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        logging.getLogger("kontinual").addHandler(handler)
        logging.getLogger("kontinual").setLevel(logging.INFO)
    model = YoloModel(read_config(args.config_file))
    model.load()
    if model.capture is not None:  # before start: Starlette builds its middleware stack on the first request
        model_server.app.add_middleware(FailedRequests, counters=model.capture.counters)
    SERVER = ModelServer(http_port=args.http_port, workers=1, enable_grpc=False)
    SERVER.start([model])


if __name__ == "__main__":
    main(sys.argv[1:])
