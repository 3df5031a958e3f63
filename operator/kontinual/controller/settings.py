"""The operator's settings, read once from environment variables (the Helm chart sets them)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import urlsplit

from kontinual import __version__


def _int(env: dict[str, str], name: str, default: int, low: int = 1, high: int = 2**31 - 1) -> int:
    raw = env.get(name, "")
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be a whole number, got {raw!r}") from None
    if not low <= value <= high:
        raise ValueError(f"{name} must be between {low} and {high}, got {raw!r}")
    return value


def _urls(env: dict[str, str], name: str) -> tuple[str, ...]:
    """A comma-separated list of http(s) base URLs without credentials, each without its trailing '/'."""
    urls = tuple(u.strip().rstrip("/") for u in env.get(name, "").split(",") if u.strip())
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme not in ("https", "http") or not parts.hostname or parts.username or parts.password:
            raise ValueError(f"{name} must list http(s) base URLs without user:password@, got {url!r}")
    return urls


@dataclass(frozen=True)
class Settings:
    """Defaults the ContinualModel spec can override, and the operator's own knobs."""

    server_image: str = f"kontinual/server:{__version__}"
    # spec.serving.runtime openvino/onnxruntime: kserve's ModelServer (images/server-openvino, Apache-2.0 throughout).
    openvino_server_image: str = f"kontinual/server-openvino:{__version__}"
    trainer_image: str = f"kontinual/trainer:{__version__}"
    roboflow_api_url: str = "https://api.roboflow.com"  # the default of spec.*.roboflow.apiUrl; always allowed
    # Further Roboflow API base URLs a ContinualModel may name (the key is sent there): the admin's
    # allow-list. http:// only when the admin names it here; nothing else, so no CR author can
    # make the operator or its pods send a key to a host of their choosing.
    roboflow_api_urls: tuple[str, ...] = ()
    sparsezoo_api_url: str = ""  # SparseZoo API base (a mirror); empty: sparsezoo's own default
    roboflow_poll_seconds: int = 300  # how often minNewLabeledImages triggers poll Roboflow
    roboflow_timeout_seconds: int = 20  # total deadline of one poll (connect to last byte)
    poll_workers: int = 4  # threads for Roboflow polls, apart from the reconciles' workers
    stuck_seconds: int = 120  # /healthz fails while a reconcile or a poll has run this long
    resync_seconds: int = 60  # periodic reconcile, repairs drift kopf did not see
    health_port: int = 8080  # liveness endpoint: http://HOST:PORT/healthz
    health_host: str = "0.0.0.0"  # all interfaces in a pod (the kubelet probes the pod IP); metrics too
    # Prometheus metrics: http://HOST:PORT/metrics; 0 turns them off. Not 8081 or another port a
    # sidecar or a second local operator commonly takes: 9102 sits next to the server pods' 9101.
    metrics_port: int = 9102
    log_level: str = "INFO"
    log_format: str = "text"  # text | json
    watch_namespaces: tuple[str, ...] = ()  # empty: all namespaces
    # Leader election (docs/operating.md, High availability): only the holder of the Lease
    # LEASE_NAMESPACE/LEASE_NAME reconciles; the chart turns it on for its 2 replicas.
    leader_election: bool = False
    lease_namespace: str = ""  # the operator's own namespace (the chart: the pod's, by the downward API)
    lease_name: str = "kontinual-operator"
    lease_seconds: int = 15  # a standby takes over a Lease not renewed for this long
    pod_name: str = ""  # names this replica in the Lease (the chart: the pod's name); empty: the host name

    @property
    def allowed_roboflow_urls(self) -> tuple[str, ...]:
        """Every Roboflow API base URL a ContinualModel may use: the default first, then the allow-list."""
        default = self.roboflow_api_url.rstrip("/")
        return (default, *(u for u in self.roboflow_api_urls if u != default))

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "Settings":
        env = dict(os.environ if env is None else env)
        default = cls()
        namespaces = tuple(n.strip() for n in env.get("KONTINUAL_WATCH_NAMESPACES", "").split(",") if n.strip())
        log_format = env.get("KONTINUAL_LOG_FORMAT", default.log_format)
        if log_format not in ("text", "json"):
            raise ValueError(f"KONTINUAL_LOG_FORMAT must be 'text' or 'json', got {log_format!r}")
        api_url = (_urls(env, "KONTINUAL_ROBOFLOW_API_URL") or (default.roboflow_api_url,))[0]
        zoo = (env.get("KONTINUAL_SPARSEZOO_API_URL") or "").rstrip("/")
        if zoo and not zoo.startswith(("https://", "http://")):
            raise ValueError(f"KONTINUAL_SPARSEZOO_API_URL must be an http(s) URL, got {zoo!r}")
        election = (env.get("KONTINUAL_LEADER_ELECTION") or "false").strip().lower()
        if election not in ("true", "false"):
            raise ValueError(f"KONTINUAL_LEADER_ELECTION must be 'true' or 'false', got {election!r}")
        settings = cls(
            leader_election=election == "true",
            lease_namespace=(env.get("KONTINUAL_LEASE_NAMESPACE") or "").strip(),
            lease_name=(env.get("KONTINUAL_LEASE_NAME") or "").strip() or default.lease_name,
            lease_seconds=_int(env, "KONTINUAL_LEASE_SECONDS", default.lease_seconds, 5, 300),
            pod_name=(env.get("KONTINUAL_POD_NAME") or "").strip(),
            sparsezoo_api_url=zoo,
            server_image=env.get("KONTINUAL_SERVER_IMAGE") or default.server_image,
            openvino_server_image=env.get("KONTINUAL_OPENVINO_SERVER_IMAGE") or default.openvino_server_image,
            trainer_image=env.get("KONTINUAL_TRAINER_IMAGE") or default.trainer_image,
            roboflow_api_url=api_url,
            roboflow_api_urls=_urls(env, "KONTINUAL_ROBOFLOW_API_URLS"),
            roboflow_poll_seconds=_int(env, "KONTINUAL_ROBOFLOW_POLL_SECONDS", default.roboflow_poll_seconds),
            roboflow_timeout_seconds=_int(env, "KONTINUAL_ROBOFLOW_TIMEOUT_SECONDS", default.roboflow_timeout_seconds,
                                          1, 600),
            poll_workers=_int(env, "KONTINUAL_POLL_WORKERS", default.poll_workers, 1, 64),
            stuck_seconds=_int(env, "KONTINUAL_STUCK_SECONDS", default.stuck_seconds, 10),
            resync_seconds=_int(env, "KONTINUAL_RESYNC_SECONDS", default.resync_seconds),
            health_port=_int(env, "KONTINUAL_HEALTH_PORT", default.health_port, 1, 65535),
            health_host=env.get("KONTINUAL_HEALTH_HOST") or default.health_host,
            metrics_port=_int(env, "KONTINUAL_METRICS_PORT", default.metrics_port, 0, 65535),
            log_level=(env.get("KONTINUAL_LOG_LEVEL") or default.log_level).upper(),
            log_format=log_format,
            watch_namespaces=namespaces,
        )
        settings.check_ports(settings.health_port, settings.metrics_port)
        return settings

    def check_leader_election(self) -> None:
        """Leader election needs to know where its Lease lives (checked at start, where the chart's
        downward-API values have arrived)."""
        if self.leader_election and not self.lease_namespace:
            raise ValueError("KONTINUAL_LEADER_ELECTION=true needs KONTINUAL_LEASE_NAMESPACE, the namespace of the "
                             "leader Lease (the chart sets it to the operator pod's namespace)")

    @staticmethod
    def check_ports(health_port: int, metrics_port: int) -> None:
        """The liveness and metrics endpoints are two servers: they cannot share a port."""
        if metrics_port and metrics_port == health_port:
            raise ValueError(f"KONTINUAL_METRICS_PORT ({metrics_port}) must differ from the health port "
                             f"(KONTINUAL_HEALTH_PORT or --health-port, {health_port}); 0 turns metrics off")
