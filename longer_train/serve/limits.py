"""The HTTP service's limits (`longer-serve http` flags; docs/serving.md explains each and the memory
bound they give). Kept apart from the server so the CLI can show the defaults without importing it."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class RequestLimits:
    max_body_bytes: int = 4 * 2**20
    max_candidates: int = 2000
    max_history: int = 10_000  # events per history list; only the newest data.max_len are scored


@dataclass(frozen=True)
class ServeLimits:
    request: RequestLimits = field(default_factory=RequestLimits)
    max_batch_requests: int = 32  # requests scored in one model call
    max_batch_slots: int = 2048  # padded candidate slots (requests x widest request) in one model call; on CPU
    # larger batches cost more CPU per candidate (memory-bound intermediates): benchmarks/serving_http.py
    max_wait_ms: float = 2.0  # how long the batcher waits for more requests once it has one
    max_queue: int = 256  # requests in progress (reading, decoding, waiting, scoring); more get 503
    max_connections: int = 1024  # open connections (more are answered 503 and closed); also the listen backlog
    decode_workers: int = 2  # threads parsing and validating request bodies
    header_timeout_s: float = 10.0  # from the first byte of a request (or the connection) to its last header
    body_timeout_s: float = 30.0  # from the last header to the last byte of the body
    keep_alive_s: float = 5.0  # an idle keep-alive connection is closed after this
