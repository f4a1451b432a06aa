"""The HTTP service's Prometheus metrics (`GET /metrics`, text exposition format, prometheus_client).

Each server has its own registry (several servers in one process, as in the tests, do not share counts):

- `longer_serve_requests_total{path, code}`: every answer, the ones the connection layer writes itself included
  (path "-": 408 too slow, 400 unparsable HTTP, 503 too many connections);
- `longer_serve_request_seconds{path}`: latency from the request's headers to its answer;
- `longer_serve_dropped_connections_total{reason}`: connections closed without an answer (a client that does not
  read its answer within the write deadline);
- `longer_serve_scoring_queue`, `longer_serve_body_reads`, `longer_serve_connections`: what is in progress now;
- `longer_serve_batch_requests`, `longer_serve_batch_candidates`: the size of each model call;
- `longer_serve_user_cache_*`: the warm user state's hits, appends, misses, evictions, entries and bytes
  (user_cache.py).
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from .user_cache import UserStateCache

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("longer_serve_requests", "Answers by path and status code", ["path", "code"],
                                registry=r)
        self.latency = Histogram("longer_serve_request_seconds", "From the request's headers to its answer",
                                 ["path"], buckets=LATENCY_BUCKETS, registry=r)
        self.dropped = Counter("longer_serve_dropped_connections", "Connections closed without an answer",
                               ["reason"], registry=r)
        self.batch_requests = Histogram("longer_serve_batch_requests", "Requests per model call",
                                        buckets=SIZE_BUCKETS, registry=r)
        self.batch_candidates = Histogram("longer_serve_batch_candidates", "Candidates per model call",
                                          buckets=SIZE_BUCKETS, registry=r)

    def gauges(self, **current: Callable[[], float]) -> None:
        """Gauges read when scraped: name (without the prefix) -> how to read it."""
        for name, read in current.items():
            Gauge(f"longer_serve_{name}", f"{name.replace('_', ' ')} now", registry=self.registry).set_function(read)

    def watch_cache(self, cache: UserStateCache) -> None:
        self.registry.register(_CacheCollector(cache))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _CacheCollector:
    def __init__(self, cache: UserStateCache) -> None:
        self.cache = cache

    def collect(self):
        counts, prefix = self.cache.counts, "longer_serve_user_cache"
        for name, value in (("hits", counts.hits), ("appends", counts.appends), ("misses", counts.misses),
                            ("evictions", counts.evictions)):
            yield CounterMetricFamily(f"{prefix}_{name}", f"Warm user state {name}", value=value)
        yield GaugeMetricFamily(f"{prefix}_entries", "Users kept", value=len(self.cache))
        yield GaugeMetricFamily(f"{prefix}_bytes", "Bytes of the users kept", value=self.cache.nbytes)
