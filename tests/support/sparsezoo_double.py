"""A SparseZoo API test double: a threaded HTTP server on 127.0.0.1 speaking what `sparsezoo` 1.8.0 sends.

Read from sparsezoo 1.8.0's client (base URL from env SPARSEZOO_API_URL, read at import):
- `POST {base}/v2/graphql` with `{"query": "{ models (domain: \"cv\",task: \"detection\",...) { modelId
  modelOnnxSizeCompressedBytes files(version: 2) { displayName downloadUrl fileSize fileType modelId }
  benchmarkResults { ... } trainingResults { ... } repoName repoNamespace } }"}` (sparsezoo/api/graphql.py,
  model/utils.py load_files_from_stub). The answer is `{"data": {"models": [...]}}` with camelCase keys;
  no match is an empty list, which sparsezoo reports as "No matching models found with stub".
- file downloads (sparsezoo/utils/download.py): `HEAD url` for Content-Length (and Accept-Ranges, which
  this double does not offer, so one plain `GET url` follows).
A model is a folder the test built: `model.onnx` (fileType onnx), `deployment/*` (deployment),
`training/*` (training), `recipe/recipe_*.md` (recipe), `model.md` (card). Test code, not product.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

# The arguments sparsezoo derives from a v1 stub (DEPRECATED_STUB_ARGS_MAPPER: sub_domain -> task,
# dataset -> sourceDataset); the server filters its models by them.
_STUB_RE = re.compile(
    r"^(zoo:)?(?P<domain>[^/]+)/(?P<task>[^/]+)/(?P<architecture>[^/-]+)(-(?P<subArchitecture>[^/]+))?"
    r"/(?P<framework>[^/]+)/(?P<repo>[^/]+)/(?P<sourceDataset>[^/-]+)(-[^/]+)?/(?P<sparseTag>[^/?]+)$")
_ARG_RE = re.compile(r'(\w+):\s*"([^"]*)"')
_FILE_TYPES = {"deployment": "deployment", "training": "training", "recipe": "recipe"}


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    query: str  # GraphQL query text for /v2/graphql, else the URL query


@dataclass
class _Model:
    stub: str
    model_id: str
    folder: Path
    attributes: dict[str, str]


class SparseZooDouble:
    """`with SparseZooDouble() as zoo: zoo.add_model(stub, folder)`; point SPARSEZOO_API_URL at `zoo.url`."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.models: list[_Model] = []
        self.requests: list[Recorded] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer((host, 0), self._handler())  # tests/node binds the node IP pods reach
        self._server.daemon_threads = True
        self.url = f"http://{host}:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> "SparseZooDouble":
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop serving (the port then refuses connections: 'SparseZoo is down')."""
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()

    def add_model(self, stub: str, folder: Path) -> str:
        match = _STUB_RE.match(stub)
        if not match:
            raise ValueError(f"not a v1 SparseZoo stub: {stub}")
        attributes = {k: v for k, v in match.groupdict().items() if v is not None}
        model_id = f"model-{len(self.models) + 1:04d}"
        self.models.append(_Model(stub.removeprefix("zoo:"), model_id, Path(folder), attributes))
        return model_id

    def graphql_queries(self) -> list[str]:
        return [r.query for r in self.requests if r.path == "/v2/graphql"]

    def downloads(self) -> list[str]:
        return [r.path for r in self.requests if r.method == "GET" and r.path.startswith("/files/")]

    # -- the API ---------------------------------------------------------------------------------

    def _files(self, model: _Model) -> list[dict[str, Any]]:
        entries = []
        for path in sorted(p for p in model.folder.rglob("*") if p.is_file()):
            rel = path.relative_to(model.folder).as_posix()
            top = rel.split("/")[0]
            if "/" in rel:
                file_type = _FILE_TYPES.get(top)
                if file_type is None:
                    continue
            elif rel == "model.onnx":
                file_type = "onnx"
            elif rel == "model.md":
                file_type = "card"
            else:
                continue
            entries.append({"displayName": path.name, "downloadUrl": f"{self.url}/files/{model.model_id}/{rel}",
                            "fileSize": path.stat().st_size, "fileType": file_type, "modelId": model.model_id})
        return entries

    def _models_answer(self, query: str) -> dict[str, Any]:
        arguments = dict(_ARG_RE.findall(query.split("{", 2)[1] if "{" in query else query))
        found = []
        for model in self.models:
            if all(model.attributes.get(k) == v for k, v in arguments.items()):
                onnx = model.folder / "model.onnx"
                found.append({
                    "modelId": model.model_id,
                    "modelOnnxSizeCompressedBytes": onnx.stat().st_size if onnx.is_file() else 0,
                    "files": self._files(model),
                    "benchmarkResults": [],
                    "trainingResults": [],
                    "repoName": model.stub.replace("/", "-"),
                    "repoNamespace": "kontinual-tests",
                })
        return {"data": {"models": found}}

    def _file(self, path: str) -> Path | None:
        parts = unquote(path).split("/", 3)  # "", "files", model_id, rel
        if len(parts) != 4:
            return None
        for model in self.models:
            if model.model_id == parts[2]:
                candidate = (model.folder / parts[3]).resolve()
                if candidate.is_file() and model.folder.resolve() in candidate.parents:
                    return candidate
        return None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        double = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args: object) -> None:
                pass

            def _record(self, query: str) -> None:
                with double._lock:
                    double.requests.append(Recorded(self.command, urlsplit(self.path).path, query))

            def _send(self, status: int, body: bytes, content_type: str = "application/json",
                      head: bool = False) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                path = urlsplit(self.path).path
                try:
                    query = json.loads(raw or b"{}").get("query", "")
                except ValueError:
                    query = ""
                self._record(query)
                if path != "/v2/graphql":
                    self._send(404, b'{"error": "not found"}')
                elif "models" not in query:
                    self._send(200, json.dumps({"errors": [{"message": "unsupported query"}]}).encode())
                else:
                    self._send(200, json.dumps(double._models_answer(query)).encode())

            def _serve_file(self, head: bool) -> None:
                self._record(urlsplit(self.path).query)
                path = double._file(urlsplit(self.path).path)
                if path is None:
                    self._send(404, b"not found", "text/plain", head)
                else:
                    self._send(200, path.read_bytes(), "application/octet-stream", head)

            def do_HEAD(self) -> None:  # noqa: N802
                self._serve_file(head=True)

            def do_GET(self) -> None:  # noqa: N802
                self._serve_file(head=False)

        return Handler
