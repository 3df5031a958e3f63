"""HTTP GET with a total deadline, connect to last byte: a server that drips bytes cannot stretch a call.

requests (and urllib3) time out per socket operation, so a server that sends one byte every 20 s
keeps a call with a 30 s read timeout alive forever. Here a watchdog shuts the socket down when
the deadline passes, which ends any blocked connect, TLS handshake or read at once. Standard
library only, so the operator and both wings can use it. HTTPS_PROXY / HTTP_PROXY / NO_PROXY are
honoured as requests would. Error messages never contain the URL's query (it carries the API key).
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import ssl
import threading
import time
import urllib.request
from dataclasses import dataclass
from typing import Iterable
from urllib.parse import urlencode, urlsplit

CONNECT_TIMEOUT = 5.0
MAX_BODY_BYTES = 4 << 20  # a project's JSON is a few KiB; more is not a Roboflow answer


class DeadlineError(OSError):
    """The call did not complete within its total deadline."""


class HTTPFailure(OSError):
    """The call failed before an answer arrived (connection refused, TLS, a malformed answer)."""


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    seconds: float


def _tls_context() -> ssl.SSLContext:
    try:
        import certifi  # what requests trusts; present wherever requests is

        return ssl.create_default_context(cafile=certifi.where())
    except ImportError:  # pragma: no cover - requests always brings certifi
        return ssl.create_default_context()


def _connection(scheme: str, host: str, port: int | None, timeout: float) -> tuple[http.client.HTTPConnection, bool]:
    """A connection to `host` (through the environment's proxy, if any); True if the target must be absolute."""
    proxy = urllib.request.getproxies().get(scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        p = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        if scheme == "https":
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                p.hostname or "", p.port or 3128, timeout=timeout, context=_tls_context())
            conn.set_tunnel(host, port or 443)
            return conn, False
        return http.client.HTTPConnection(p.hostname or "", p.port or 3128, timeout=timeout), True
    if scheme == "https":
        return http.client.HTTPSConnection(host, port, timeout=timeout, context=_tls_context()), False
    return http.client.HTTPConnection(host, port, timeout=timeout), False


def get(url: str, params: Iterable[tuple[str, str]] = (), *, deadline: float,
        max_bytes: int = MAX_BODY_BYTES) -> Answer:
    """GET `url?params` and read the whole body within `deadline` seconds, or raise DeadlineError.

    Raises HTTPFailure for anything else that stops the call; neither message holds the query.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise HTTPFailure(f"not an http(s) URL: {parts.scheme}://{parts.hostname or ''}")
    query = "&".join(q for q in (parts.query, urlencode(list(params))) if q)
    target = (parts.path or "/") + (f"?{query}" if query else "")
    started = time.monotonic()
    conn, absolute = _connection(parts.scheme, parts.hostname, parts.port, min(CONNECT_TIMEOUT, deadline))
    if absolute:
        target = f"{parts.scheme}://{parts.netloc}{target}"
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        sock = conn.sock
        if sock is not None:
            with contextlib.suppress(OSError):  # the plain socket's shutdown, also under TLS: wakes a blocked read
                socket.socket.shutdown(sock, socket.SHUT_RDWR)

    watchdog = threading.Timer(deadline, expire)
    watchdog.daemon = True
    watchdog.start()
    try:
        conn.connect()
        if expired.is_set():
            raise DeadlineError()
        conn.request("GET", target, headers={"Accept": "application/json", "User-Agent": "kontinual"})
        response = conn.getresponse()
        body = response.read(max_bytes + 1)
        if expired.is_set():  # a shut-down socket can read as a clean end of the body
            raise DeadlineError()
    except (OSError, http.client.HTTPException) as exc:
        if expired.is_set():
            raise DeadlineError(f"no complete answer within {deadline:g} s (a total deadline)") from None
        reason = type(exc).__name__ + (f" ({exc.strerror})" if isinstance(exc, OSError) and exc.strerror else "")
        raise HTTPFailure(reason) from None
    finally:
        watchdog.cancel()
        conn.close()
    if len(body) > max_bytes:
        raise HTTPFailure(f"the answer is larger than {max_bytes} bytes")
    return Answer(response.status, body, time.monotonic() - started)
