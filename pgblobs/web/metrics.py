"""Prometheus metrics of one site: requests, latencies, bytes, database pools."""

import time
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from twisted.web.server import NOT_DONE_YET

from pgblobs.web.request import StreamingRequest
from pgblobs.web.resources import Handler
from pgblobs.web.responses import send

if TYPE_CHECKING:
    from pgblobs.ops.capacity import Capacity

# Label values come from known sets only: the method is whatever a client
# typed, and every new label value is a new time series, kept forever.
_KNOWN_METHODS = frozenset({"GET", "HEAD", "PUT", "POST", "DELETE", "OPTIONS", "PATCH"})


# (metric, help, the ops.capacity.Capacity attribute it shows)
_LARGE_OBJECT_GAUGES = [
    ("pgblobs_large_objects", "Large objects in the database (estimated)", "large_objects"),
    ("pgblobs_large_object_disk_bytes", "Bytes of pg_largeobject on disk", "disk_bytes"),
    ("pgblobs_large_object_oids_left", "OIDs left for new large objects", "oids_left"),
]


def _in_use(pool_usage: Callable[[], dict[str, int]], pool: str) -> float:
    return pool_usage()[pool]


class SiteMetrics:
    def __init__(self, pool_usage: Callable[[], dict[str, int]] | None = None) -> None:
        self.registry = CollectorRegistry()
        self._requests = Counter(
            "pgblobs_http_requests",
            "HTTP requests answered",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self._latency = Histogram(
            "pgblobs_http_request_duration_seconds",
            "Time from headers to last byte",
            ["route"],
            registry=self.registry,
        )
        self._received = Counter(
            "pgblobs_http_received_bytes", "Request body bytes received", registry=self.registry
        )
        self._sent = Counter(
            "pgblobs_http_sent_bytes", "Response bytes sent", registry=self.registry
        )
        if pool_usage is not None:
            in_use = Gauge(
                "pgblobs_db_connections_in_use",
                "Database connections busy",
                ["pool"],
                registry=self.registry,
            )
            for pool in ("statements", "content"):
                in_use.labels(pool).set_function(partial(_in_use, pool_usage, pool))
        self._large_objects = [
            (Gauge(name, description, registry=self.registry), figure)
            for name, description, figure in _LARGE_OBJECT_GAUGES
        ]
        self._uploads = Gauge(
            "pgblobs_uploads_in_progress",
            "Resumable uploads in progress in the database",
            registry=self.registry,
        )
        self._upload_bytes = Gauge(
            "pgblobs_upload_received_bytes",
            "Bytes the resumable uploads in progress have received",
            registry=self.registry,
        )

    def held_changes(self, count: Callable[[], int]) -> None:
        """Show ``count()``, the change feed requests held, from now on."""
        Gauge(
            "pgblobs_changes_held",
            "GET /changes requests held waiting for a change",
            registry=self.registry,
        ).set_function(count)

    def large_objects(self, measured: "Capacity") -> None:
        """Show ``measured`` (an ops.capacity.Capacity) from now on."""
        for gauge, figure in self._large_objects:
            gauge.set(getattr(measured, figure))

    def uploads(self, in_progress: int, received_bytes: int) -> None:
        """Show the uploads in progress and the bytes they hold, from now on."""
        self._uploads.set(in_progress)
        self._upload_bytes.set(received_bytes)

    def resource(self) -> Handler:
        return _MetricsPage(self.registry)

    def record(self, request: StreamingRequest) -> None:
        route = request.route
        method = request.method.decode("latin-1") if request.method else "-"
        if method not in _KNOWN_METHODS:
            method = "other"
        self._requests.labels(route, method, str(request.code)).inc()
        started = request.started_at
        if started is not None:
            self._latency.labels(route).observe(time.monotonic() - started)
        if request.body is not None:
            self._received.inc(request.body.received)
        self._sent.inc(request.sentLength)


class _MetricsPage(Handler):
    isLeaf = True
    route = "metrics"

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self._registry = registry

    def render_GET(self, request: StreamingRequest) -> int:
        send(request, 200, generate_latest(self._registry), CONTENT_TYPE_LATEST.encode("ascii"))
        return NOT_DONE_YET
