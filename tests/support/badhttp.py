"""HTTP servers that misbehave on purpose (test code): one answers a fixed body, one drips its answer.

`FixedAnswer(b"[]")` answers every request with that body (a Roboflow reply of the wrong shape);
`Dripping(interval)` sends its status line one byte every `interval` seconds, forever, to every
client (the stall of issue 10: per-read timeouts never fire, only a total deadline ends the call).
Both run on 127.0.0.1 in daemon threads and count the connections they served.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def handle_error(self, request: Any, client_address: Any) -> None:  # a client that gave up: expected
        pass


class _Base:
    handler: type[BaseHTTPRequestHandler]

    def __init__(self, port: int = 0) -> None:
        self.connections = 0
        self.stopped = threading.Event()
        owner = self

        class Handler(self.handler):  # type: ignore[misc, valid-type, name-defined]
            server_owner = owner

        self._server = _Server(("127.0.0.1", port), Handler)  # a fixed port: an allow-list can name it first
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True, name=type(self).__name__)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> "_Base":
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stopped.set()
        self._server.shutdown()
        self._server.server_close()


class _FixedHandler(BaseHTTPRequestHandler):
    server_owner: "FixedAnswer"

    def log_message(self, *_: Any) -> None:
        pass

    def _answer(self) -> None:
        owner = self.server_owner
        owner.connections += 1
        self.send_response(owner.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(owner.body)))
        self.end_headers()
        self.wfile.write(owner.body)

    do_GET = do_POST = _answer


class FixedAnswer(_Base):
    handler = _FixedHandler

    def __init__(self, body: bytes, status: int = 200) -> None:
        self.body, self.status = body, status
        super().__init__()


class _DripHandler(BaseHTTPRequestHandler):
    server_owner: "Dripping"

    def log_message(self, *_: Any) -> None:
        pass

    def _drip(self) -> None:
        owner = self.server_owner
        owner.connections += 1
        owner.open_now += 1
        try:
            for byte in b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Drip: " + b"x" * 100_000:
                if owner.stopped.wait(owner.interval):
                    return
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
        except OSError:  # the client hung up (its deadline): what the test wants
            return
        finally:
            owner.open_now -= 1

    do_GET = do_POST = _drip


class Dripping(_Base):
    handler = _DripHandler

    def __init__(self, interval: float = 3.0, port: int = 0) -> None:
        self.interval = interval
        self.open_now = 0
        super().__init__(port)

