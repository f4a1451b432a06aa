"""The HTTP service's limits (`longer-serve http` flags; docs/serving.md explains each and the memory
bound they give). Kept apart from the server so the CLI can show the defaults without importing it."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class RequestLimits:
    max_body_bytes: int = 4 * 2**20
    max_candidates: int = 2000
    max_history: int = 10_000  # events per history list; only the newest data.max_len are scored
    # what a body may decode to, counted before parsing (requests.check_expansion); the largest request the other
    # limits allow (10,000 events x 4 lists + 2,000 candidates) counts ~4 MiB
    max_decoded_bytes: int = 64 * 2**20


@dataclass(frozen=True)
class ServeLimits:
    request: RequestLimits = field(default_factory=RequestLimits)
    max_batch_requests: int = 32  # requests scored in one model call
    max_batch_slots: int = 2048  # padded candidate slots (requests x widest request) in one model call; on CPU
    # larger batches cost more CPU per candidate (memory-bound intermediates): benchmarks/serving_http.py
    max_wait_ms: float = 2.0  # how long the batcher waits for more requests once it has one
    max_queue: int = 256  # requests read and decoded, waiting for or in the model; more get 503
    # bytes of request bodies being read or waiting to be decoded, all connections together; a body that would
    # go beyond gets 503 (bodies not finished hold their bytes for at most body_timeout_s)
    max_body_buffer_bytes: int = 256 * 2**20
    max_connections: int = 1024  # open connections (more are answered 503 and closed); also the listen backlog
    decode_workers: int = 2  # threads parsing and validating request bodies
    header_timeout_s: float = 10.0  # from the first byte of a request (or the connection) to its last header
    body_timeout_s: float = 30.0  # from the last header to the last byte of the body
    keep_alive_s: float = 5.0  # an idle keep-alive connection is closed after this
    write_timeout_s: float = 10.0  # a client that takes none of its answer for this long is dropped
    admin_connections: int = 16  # open connections of the admin port (GET /health, /metrics), apart from the rest
