"""A Roboflow API test double: a threaded HTTP server on 127.0.0.1 speaking the endpoints the SDK and Kontinual use.

Endpoint shapes follow what the `roboflow` 1.7.3 SDK sends (base URL
from env `API_URL`): key check, workspace, project, version, yolov5pytorch export (202 once, then
200 with a zip link), zip download, upload (duplicate detection by content hash), annotate
(409 "already annotated" on a second annotation) and version generation (`POST /{ws}/{proj}/generate`
with the settings JSON, as `Project.generate_version` sends it: 200 `{"message", "version"}`, then the
version answers `generating: true, images: 0` for `generation_polls` status requests before it is
ready, built from the images labeled in the project and resized as `preprocessing.resize` says).
It records everything it receives and has switches for latency, injected error statuses, a bad key,
an outage and bad answers to generation. Test code, not product.
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
import time
import zipfile
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

EXPORT_FORMAT = "yolov5pytorch"
BAD_KEY_MESSAGE = "This API key does not exist (or has been revoked)."


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    query: dict[str, list[str]]  # without api_key
    headers: dict[str, str]
    body: bytes
    api_key: str | None  # the key the client sent (tests assert it is the right one)


@dataclass(frozen=True)
class Upload:
    project: str
    id: str
    name: str
    split: str
    batch: str
    tags: tuple[str, ...]
    image: bytes
    duplicate: bool


@dataclass(frozen=True)
class Annotation:
    project: str
    image_id: str
    name: str
    annotation_file: str
    labelmap: Any
    prediction: bool


@dataclass
class _Project:
    name: str
    created: float = field(default_factory=time.time)
    annotated: int | None = None  # set_annotated; None: count non-prediction annotations
    images_by_hash: dict[str, str] = field(default_factory=dict)  # content sha1 -> image id
    annotated_ids: set[str] = field(default_factory=set)  # any annotation (a second one gets 409)
    labeled_ids: set[str] = field(default_factory=set)  # non-prediction annotations: "annotated" images
    versions: dict[int, "_Version"] = field(default_factory=dict)
    labeled_dir: Path | None = None  # the images people labeled in the project (label_images)
    labeled_images: int = 0


@dataclass
class _Version:
    number: int
    zip_bytes: bytes
    splits: dict[str, int]
    names: list[str]
    created: float = field(default_factory=time.time)
    export_polls: int = 0
    settings: dict[str, Any] = field(default_factory=dict)  # preprocessing and augmentation, when generated
    generating_polls: int = 0  # status requests still to answer "generating"


def _zip_dataset(dataset_dir: Path) -> tuple[bytes, dict[str, int], list[str]]:
    import yaml  # test dependency; imported here so the module imports cheaply

    dataset_dir = Path(dataset_dir)
    if not (dataset_dir / "data.yaml").is_file():
        raise ValueError(f"{dataset_dir} is not a yolov5pytorch dataset: data.yaml is missing")
    names = yaml.safe_load((dataset_dir / "data.yaml").read_text()).get("names") or []
    if isinstance(names, dict):
        names = [names[k] for k in sorted(names)]
    splits = {s: len(list((dataset_dir / s / "images").glob("*"))) for s in ("train", "valid", "test")}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for file in sorted(p for p in dataset_dir.rglob("*") if p.is_file()):
            archive.write(file, file.relative_to(dataset_dir).as_posix())
    return buffer.getvalue(), splits, list(names)


def _image_files(dataset_dir: Path) -> list[Path]:
    return [p for s in ("train", "valid", "test") for p in sorted((dataset_dir / s / "images").glob("*"))]


def _generated_zip(dataset_dir: Path, preprocessing: dict[str, Any]) -> tuple[bytes, dict[str, int], list[str]]:
    """The labeled images as a yolov5pytorch export, each image resized as Roboflow's "Stretch to" does
    (normalized YOLO labels are unchanged by a stretch)."""
    from PIL import Image

    resize = preprocessing.get("resize")
    size = None
    if resize is not None:
        if not isinstance(resize, dict) or not all(isinstance(resize.get(k), int) and resize[k] > 0
                                                   for k in ("width", "height")):
            raise ValueError(f"preprocessing.resize needs positive integer width and height, got {resize!r}")
        size = (resize["width"], resize["height"])
    _, splits, names = _zip_dataset(dataset_dir)
    images = set(_image_files(dataset_dir))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for file in sorted(p for p in dataset_dir.rglob("*") if p.is_file()):
            name = file.relative_to(dataset_dir).as_posix()
            if file in images and size is not None:
                with Image.open(file) as image:
                    out = io.BytesIO()
                    image.convert("RGB").resize(size).save(out, format="JPEG", quality=95)
                archive.writestr(str(Path(name).with_suffix(".jpg")), out.getvalue())
            else:
                archive.write(file, name)
    return buffer.getvalue(), splits, names


def _multipart(content_type: str, body: bytes) -> dict[str, tuple[str | None, bytes]]:
    """Parse a multipart/form-data body into {field: (filename, bytes)}."""
    message = BytesParser(policy=HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body
    )
    fields: dict[str, tuple[str | None, bytes]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if name:
            fields[str(name)] = (part.get_filename(), part.get_payload(decode=True) or b"")
    return fields


class _Server(ThreadingHTTPServer):
    allow_reuse_address = True
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up mid-answer (a server process being stopped) is not an error."""
        import sys

        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)


class RoboflowDouble:
    """`with RoboflowDouble() as rf:` serves Roboflow's API at `rf.url` until the block ends."""

    def __init__(self, *, workspace: str = "acme", api_key: str = "rf-test-key-7c1e2a",
                 host: str = "127.0.0.1") -> None:
        if not any(c.islower() for c in api_key):
            raise ValueError("the roboflow SDK treats keys without lowercase letters as dummies")
        self.workspace = workspace
        self.api_key = api_key
        self.host = host  # tests/node binds the node's private IP, which pods reach
        self.latency = 0.0
        self.bad_key = False
        self.requests: list[RecordedRequest] = []
        self.uploads: list[Upload] = []
        self.annotations: list[Annotation] = []
        self.generation_polls = 2  # status requests a generated version answers "generating" to
        self.generate_answer: tuple[int, bytes] | None = None  # (status, raw body) instead of generating
        self.never_finish = False  # generated versions stay "generating" for ever
        self._projects: dict[str, _Project] = {}
        self._failures: list[int] = []
        self._lock = threading.RLock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._port = 0

    # -- lifecycle ---------------------------------------------------------------------------
    def __enter__(self) -> "RoboflowDouble":
        self.up()
        return self

    def __exit__(self, *_: object) -> None:
        self.down()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self._port}"

    def up(self) -> None:
        """Start listening (on the same port again after `down()`)."""
        if self._server is not None:
            return
        handler = type("Handler", (_Handler,), {"double": self})
        self._server = _Server((self.host, self._port), handler)
        self._port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="roboflow-double", daemon=True)
        self._thread.start()

    def down(self) -> None:
        """Stop listening: new connections are refused."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
            if self._thread is not None:
                self._thread.join(timeout=5)

    # -- switches and fixtures ---------------------------------------------------------------
    def fail_with(self, status: int, times: int) -> None:
        """The next `times` requests answer `status` with Roboflow's error JSON."""
        with self._lock:
            self._failures.extend([status] * times)

    def add_version(self, project: str, version: int, dataset_dir: Path) -> None:
        zip_bytes, splits, names = _zip_dataset(Path(dataset_dir))
        with self._lock:
            self._project(project).versions[int(version)] = _Version(int(version), zip_bytes, splits, names)

    def label_images(self, project: str, dataset_dir: Path) -> None:
        """The project's images as people labeled them (a YOLOv5-format folder, splits as assigned):
        what the next generated version is made of; they count as annotated images."""
        dataset_dir = Path(dataset_dir)
        _zip_dataset(dataset_dir)  # the same checks as add_version
        with self._lock:
            record = self._project(project)
            record.labeled_dir, record.labeled_images = dataset_dir, len(_image_files(dataset_dir))

    def generated(self, project: str) -> dict[int, dict[str, Any]]:
        """The versions generated through the API: number -> the settings they were generated with."""
        with self._lock:
            return {n: v.settings for n, v in self._project(project).versions.items() if v.settings}

    def set_annotated(self, project: str, count: int) -> None:
        with self._lock:
            self._project(project).annotated = int(count)

    def uploads_to(self, project: str) -> list[Upload]:
        with self._lock:
            return [u for u in self.uploads if u.project == project]

    # -- state helpers (called with the lock held) --------------------------------------------
    def _project(self, name: str) -> _Project:
        return self._projects.setdefault(name, _Project(name))

    def _project_json(self, project: _Project) -> dict[str, Any]:
        uploaded = len(project.images_by_hash)
        annotated = project.annotated
        if annotated is None:
            annotated = len(project.labeled_ids) + project.labeled_images
        images = max(uploaded, annotated)
        classes: dict[str, int] = {}
        for version in project.versions.values():
            for name in version.names:
                classes.setdefault(name, 0)
        return {
            "id": f"{self.workspace}/{project.name}", "type": "object-detection", "name": project.name,
            "created": project.created, "updated": time.time(), "images": images,
            "unannotated": images - annotated, "annotation": project.name, "public": False,
            "splits": {"train": images}, "colors": {}, "classes": classes,
        }

    def _version_json(self, project: _Project, version: _Version, *, poll: bool = False) -> dict[str, Any]:
        """A version's JSON; `poll`: a status request, which moves a generation on."""
        generating = self.never_finish and bool(version.settings) or version.generating_polls > 0
        if poll and version.generating_polls > 0:
            version.generating_polls -= 1
        return {
            "id": f"{self.workspace}/{project.name}/{version.number}", "name": project.name,
            "version": str(version.number), "created": version.created,
            "images": 0 if generating else sum(version.splits.values()), "splits": version.splits,
            "preprocessing": version.settings.get("preprocessing", {}),
            "augmentation": version.settings.get("augmentation", {}), "exports": [],
            "generating": generating, "progress": 0.5 if generating else 1,
        }

    def _generate(self, project_name: str, body: bytes) -> tuple[int, dict[str, Any]]:
        """POST /{ws}/{proj}/generate: a new version from the labeled images, generated asynchronously."""
        settings = json.loads(body or b"null")
        if not isinstance(settings, dict) or not all(isinstance(settings.get(k), dict)
                                                     for k in ("preprocessing", "augmentation")):
            return 400, _error("Version generation needs a JSON body with preprocessing and augmentation "
                               "objects.", "InvalidSettingsException")
        project = self._projects.get(project_name)
        if project is None:
            return 404, _error(f'Dataset with ID "{project_name}" does not exist or cannot be loaded.')
        if project.labeled_dir is None:
            return 400, _error("This project has no annotated images to generate a version from.")
        zip_bytes, splits, names = _generated_zip(project.labeled_dir, settings["preprocessing"])
        number = max(project.versions, default=0) + 1
        project.versions[number] = _Version(number, zip_bytes, splits, names, settings=settings,
                                            generating_polls=self.generation_polls)
        return 200, {"message": "Version generation started", "version": number}


def _error(message: str, type_: str = "GraphMethodException") -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "hint": "See https://docs.roboflow.com/api-reference"}}


class _Handler(BaseHTTPRequestHandler):
    double: RoboflowDouble
    protocol_version = "HTTP/1.0"  # one request per connection: down() leaves nothing half-open

    def log_message(self, *_: Any) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def _send(self, status: int, payload: Any = None, *, raw: bytes | None = None,
              content_type: str = "application/json") -> None:
        body = raw if raw is not None else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _handle(self, method: str) -> None:
        rf = self.double
        parts = urlsplit(self.path)
        query = parse_qs(parts.query, keep_blank_values=True)
        key = (query.pop("api_key", [None]) or [None])[0]
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = {k: v for k, v in self.headers.items()}
        with rf._lock:
            rf.requests.append(RecordedRequest(method, parts.path, query, headers, body, key))
            failure = rf._failures.pop(0) if rf._failures else None
        if rf.latency:
            time.sleep(rf.latency)
        if failure is not None:
            return self._send(failure, _error(f"Injected failure: HTTP {failure}", "ServerError"))
        segments = [s for s in parts.path.split("/") if s]
        if segments[:1] == ["download"]:  # signed export link: no key, like Roboflow's storage URLs
            return self._download(segments[1:])
        if rf.bad_key or key != rf.api_key:
            return self._send(401, _error(BAD_KEY_MESSAGE, "OAuthException"))
        try:
            self._route(method, segments, query, body)
        except (ValueError, KeyError) as exc:
            self._send(400, _error(f"Bad request: {exc}"))

    def _route(self, method: str, seg: list[str], query: dict[str, list[str]], body: bytes) -> None:
        rf = self.double
        if method == "POST" and not seg:
            return self._send(200, {"workspace": rf.workspace})
        if method == "POST" and len(seg) == 3 and seg[0] == "dataset" and seg[2] == "upload":
            return self._upload(seg[1], query, body)
        if method == "POST" and len(seg) == 4 and seg[0] == "dataset" and seg[2] == "annotate":
            return self._annotate(seg[1], seg[3], query, body)
        if method == "POST" and len(seg) == 3 and seg[0] == rf.workspace and seg[2] == "generate":
            if rf.generate_answer is not None:
                status, raw = rf.generate_answer
                return self._send(status, raw=raw)
            with rf._lock:
                return self._send(*rf._generate(seg[1], body))
        if method != "GET" or not seg or seg[0] != rf.workspace:
            return self._send(404, _error(f"Unsupported {method} request for /{'/'.join(seg)}."))
        with rf._lock:
            if len(seg) == 1:
                projects = [rf._project_json(p) for p in rf._projects.values()]
                return self._send(200, {"workspace": {"name": rf.workspace, "url": rf.workspace,
                                                      "projects": projects, "members": []}})
            project = rf._projects.get(seg[1])
            if project is None:
                return self._send(404, _error(f'Dataset with ID "{seg[1]}" does not exist or cannot be loaded.'))
            workspace = {"name": rf.workspace, "url": rf.workspace}
            versions = [rf._version_json(project, v) for _, v in sorted(project.versions.items())]
            if len(seg) == 2:
                return self._send(200, {"workspace": workspace, "project": rf._project_json(project),
                                        "versions": versions})
            version = project.versions.get(int(seg[2])) if seg[2].isdigit() else None
            if version is None:
                return self._send(404, _error(f"Version {seg[2]} of {seg[1]} does not exist."))
            if len(seg) == 3:
                return self._send(200, {"workspace": workspace, "project": rf._project_json(project),
                                        "version": rf._version_json(project, version, poll=True)})
            if len(seg) == 4 and seg[3] == EXPORT_FORMAT:
                if rf._version_json(project, version)["generating"]:
                    return self._send(400, _error(f"Version {version.number} is still generating."))
                version.export_polls += 1
                if version.export_polls == 1:
                    return self._send(202, {"ready": False, "progress": 0.5})
                link = f"{rf.url}/download/{project.name}/{version.number}/{EXPORT_FORMAT}.zip"
                return self._send(200, {"export": {"link": link, "format": EXPORT_FORMAT}})
        return self._send(404, _error(f"Unsupported export format or path /{'/'.join(seg)}."))

    def _download(self, seg: list[str]) -> None:
        rf = self.double
        with rf._lock:
            project = rf._projects.get(seg[0]) if seg else None
            version = project.versions.get(int(seg[1])) if project and len(seg) > 1 and seg[1].isdigit() else None
            data = version.zip_bytes if version else None
        if data is None:
            return self._send(404, _error("No such export."))
        self._send(200, raw=data, content_type="application/zip")

    def _upload(self, project_name: str, query: dict[str, list[str]], body: bytes) -> None:
        rf = self.double
        fields = _multipart(self.headers.get("Content-Type", ""), body)
        if "file" not in fields:
            return self._send(400, _error("Image upload needs a multipart 'file' field."))
        image = fields["file"][1]
        name = fields.get("name", (None, b""))[1].decode() or (fields["file"][0] or "image.jpg")
        split = fields.get("split", (None, b"train"))[1].decode()
        digest = hashlib.sha1(image).hexdigest()
        with rf._lock:
            project = rf._project(project_name)
            duplicate = digest in project.images_by_hash
            image_id = project.images_by_hash.setdefault(digest, digest[:20])
            rf.uploads.append(Upload(project_name, image_id, name, split, (query.get("batch") or [""])[0],
                                     tuple(query.get("tag", [])), image, duplicate))
        if duplicate:
            return self._send(200, {"duplicate": True, "id": image_id})
        self._send(200, {"success": True, "id": image_id})

    def _annotate(self, project_name: str, image_id: str, query: dict[str, list[str]], body: bytes) -> None:
        rf = self.double
        payload = json.loads(body or b"{}")
        prediction = (query.get("prediction") or ["false"])[0] == "true"
        overwrite = (query.get("overwrite") or ["false"])[0] == "true"
        with rf._lock:
            project = rf._projects.get(project_name)
            if project is None or image_id not in project.images_by_hash.values():
                return self._send(404, _error(f"Image {image_id} not found in {project_name}."))
            if image_id in project.annotated_ids and not overwrite:
                return self._send(409, _error("Image already annotated.", "AnnotationException"))
            project.annotated_ids.add(image_id)
            if not prediction:
                project.labeled_ids.add(image_id)
            rf.annotations.append(Annotation(project_name, image_id, (query.get("name") or [""])[0],
                                             payload.get("annotationFile", ""), payload.get("labelmap"),
                                             prediction))
        self._send(200, {"success": True})
