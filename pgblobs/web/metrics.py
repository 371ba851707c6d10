"""Prometheus metrics of one site: requests, latencies, bytes, database pools."""
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.twisted import MetricsResource


class SiteMetrics:
    def __init__(self, pool_usage=None):
        self.registry = CollectorRegistry()
        self._requests = Counter(
            "pgblobs_http_requests", "HTTP requests answered",
            ["route", "method", "status"], registry=self.registry)
        self._latency = Histogram(
            "pgblobs_http_request_duration_seconds", "Time from headers to last byte",
            ["route"], registry=self.registry)
        self._received = Counter(
            "pgblobs_http_received_bytes", "Request body bytes received", registry=self.registry)
        self._sent = Counter(
            "pgblobs_http_sent_bytes", "Response bytes sent", registry=self.registry)
        if pool_usage is not None:
            in_use = Gauge("pgblobs_db_connections_in_use", "Database connections busy",
                           ["pool"], registry=self.registry)
            for pool in ("statements", "content"):
                in_use.labels(pool).set_function(lambda pool=pool: pool_usage()[pool])

    def resource(self):
        return MetricsResource(self.registry)

    def record(self, request):
        route = getattr(request, "route", "other")
        method = request.method.decode("latin-1") if request.method else "-"
        self._requests.labels(route, method, str(request.code)).inc()
        started = getattr(request, "started_at", None)
        if started is not None:
            self._latency.labels(route).observe(time.monotonic() - started)
        body = getattr(request, "body", None)
        if body is not None:
            self._received.inc(body.received)
        self._sent.inc(request.sentLength)
