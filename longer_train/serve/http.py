"""HTTP scoring service: FastAPI on uvicorn, requests that arrive together scored in one model call.

`POST /score` with a JSON request (`requests.py`) -> `{"scores": [p, ...]}` in candidate order;
`GET /health` -> `{"status": "ok"}`; `GET /metrics` -> Prometheus metrics (`metrics.py`), also on the admin
port (`--admin-port`: /health and /metrics only, with connections of their own). Every request gets an HTTP
answer with a JSON body and an `x-request-id` header: 4xx with a message naming what to fix (400 bad HTTP, JSON
or field, 408 headers or body too slow, 413 too large or expanding too much), 503 when the body budget, the
scoring queue or the connections are full (retry), 500 with the request id for our own errors (logged with the
same id).

How a request flows: uvicorn's event loop reads it (headers within `header_timeout_s`, body within
`body_timeout_s`, at most `max_body_bytes`, all bodies in progress within `max_body_buffer_bytes`); its
decoded size is bounded before parsing (`max_decoded_bytes`); a pool of `decode_workers` threads parses and
validates it; only then does it take a place in the scoring queue (`max_queue`), where the `DynamicBatcher`
worker thread scores it together with the other requests waiting (`batching.py`). A client that does not read
its answer is dropped after `write_timeout_s`.
docs/serving.md has the limits, the memory bound and how to run it behind a reverse proxy.
"""

from __future__ import annotations

import asyncio
import http
import json
import logging
import re
import resource
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Sequence

import h11
import numpy as np
import pyarrow as pa
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from uvicorn.protocols.http.h11_impl import H11Protocol

from ..components.allocator import release_free_memory
from ..errors import NonFiniteScores
from .batching import DynamicBatcher
from .limits import ServeLimits
from .metrics import CONTENT_TYPE, ServiceMetrics
from .requests import RequestError, ScoringRequest, check_expansion, decode_request, json_values

if TYPE_CHECKING:
    from .scorer import Scorer

logger = logging.getLogger(__name__)


def _error_bytes(status: int, message: str) -> bytes:
    """A complete HTTP/1.1 error response that closes the connection (written before or instead of h11)."""
    request_id = uuid.uuid4().hex[:16]
    body = json.dumps({"error": message, "request_id": request_id}).encode()
    head = (f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nx-request-id: {request_id}\r\nconnection: close\r\n\r\n")
    return head.encode() + body


LINGER_S = 1.0  # after an error answer, how long unread request bytes are drained before the socket closes


def _protocol(limits: ServeLimits, metrics: ServiceMetrics, admin_port: int | None) -> type[H11Protocol]:
    """uvicorn's h11 protocol with deadlines and JSON errors (uvicorn has no public setting for any of them, and
    headers arrive before an ASGI app or middleware is called; pyproject pins uvicorn and h11, and
    tests/serve/test_http.py checks the hooks used here):

    - a connection beyond `max_connections` is answered 503 (connections to the admin port count apart, up to
      `admin_connections`: scoring traffic cannot take /health and /metrics' connections);
    - a request whose headers are not all in `header_timeout_s` after the connection opened (or after the
      previous response) is answered 408, and one whose body is not all in `body_timeout_s` after its
      headers is answered 408 (or, when it was already answered, closed): slow and half-open clients
      hold a connection for a bounded time, and never a thread;
    - a client that takes none of its answer for `write_timeout_s` (its socket's buffers full, so uvicorn stops
      writing) is dropped;
    - a request h11 cannot parse (a malformed or conflicting Content-Length, a bad request line, headers
      over 16 KiB) is answered with a JSON 400 (431) saying why, where uvicorn's plain-text answer says
      only "Invalid HTTP request received.".
    Error answers end with a lingering close: the write side is shut, what the client still sends is read
    and dropped for up to `LINGER_S`, so that its unread bytes do not reset the connection before it has
    read the answer.
    """

    admin: set = set()  # the open connections to the admin port

    class Protocol(H11Protocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._deadline: tuple[Any, asyncio.TimerHandle] | None = None  # (h11 state it is for, timer)
            self._write_deadline: asyncio.TimerHandle | None = None
            self._refused = False
            self._protocol_error: h11.RemoteProtocolError | None = None
            next_event = self.conn.next_event

            def next_event_keeping_the_error() -> Any:
                try:
                    return next_event()
                except h11.RemoteProtocolError as err:
                    self._protocol_error = err
                    raise

            self.conn.next_event = next_event_keeping_the_error

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            local = transport.get_extra_info("sockname")
            if admin_port is not None and isinstance(local, tuple) and local[1] == admin_port:
                admin.add(self)
                open_, most = len(admin), limits.admin_connections
            else:
                open_, most = len(self.connections) - len(admin), limits.max_connections
            if open_ > most:
                self._refuse(503, f"{open_ - 1} connections open, at most {most}")
            else:
                self._watch()

        def data_received(self, data: bytes) -> None:
            if self._refused:  # lingering: drop what the client still sends
                return
            super().data_received(data)
            self._watch()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._watch()

        def connection_lost(self, exc: Exception | None) -> None:
            self._set_deadline(None)
            self.resume_writing()
            admin.discard(self)
            super().connection_lost(exc)

        def pause_writing(self) -> None:  # the transport's buffer is full: the client is not reading
            super().pause_writing()
            if self._write_deadline is None:
                self._write_deadline = self.loop.call_later(limits.write_timeout_s, self._slow_reader)

        def resume_writing(self) -> None:
            super().resume_writing()
            if self._write_deadline is not None:
                self._write_deadline.cancel()
                self._write_deadline = None

        def _slow_reader(self) -> None:
            self._write_deadline = None
            metrics.dropped.labels("slow_reader").inc()
            self.transport.abort()  # connection_lost: the app's pending send returns, its answer dropped

        def send_400_response(self, msg: str) -> None:
            err = self._protocol_error
            status = err.error_status_hint if err is not None and 400 <= err.error_status_hint < 500 else 400
            self._refuse(status, f"invalid HTTP request: {err if err is not None else msg}")

        def _watch(self) -> None:
            """Keep the deadline that matches what we wait for from the client: headers or body."""
            if self._refused or self.transport.is_closing():
                return
            state = self.conn.their_state
            if state is h11.IDLE or state is h11.SEND_BODY:
                if self._deadline is None or self._deadline[0] is not state:
                    seconds = limits.header_timeout_s if state is h11.IDLE else limits.body_timeout_s
                    self._set_deadline((state, self.loop.call_later(seconds, self._too_slow, state)))
            else:
                self._set_deadline(None)

        def _set_deadline(self, deadline: tuple[Any, asyncio.TimerHandle] | None) -> None:
            if self._deadline is not None:
                self._deadline[1].cancel()
            self._deadline = deadline

        def _too_slow(self, state: Any) -> None:
            self._deadline = None
            if self._refused or self.transport.is_closing() or self.conn.their_state is not state:
                return
            if state is h11.IDLE:
                self._refuse(408, f"request headers not received within {limits.header_timeout_s:g} s")
            elif self.cycle is not None and not self.cycle.response_started:
                self.cycle.disconnected = True  # the app's body read ends; its answer is not sent
                self.cycle.message_event.set()
                self._refuse(408, f"request body not received within {limits.body_timeout_s:g} s")
            else:  # answered already (e.g. 413 before the body): stop reading the rest
                self._linger()

        def _refuse(self, status: int, message: str) -> None:
            metrics.requests.labels("-", str(status)).inc()
            self.transport.write(_error_bytes(status, message))
            self._linger()

        def _linger(self) -> None:
            self._refused = True
            self._set_deadline(None)
            try:
                if self.transport.can_write_eof():
                    self.transport.write_eof()
            except OSError:  # the peer is gone (ENOTCONN): nothing to linger for
                self.transport.abort()
                return
            self.loop.call_later(LINGER_S, self.transport.close)

    return Protocol


TRIM_AFTER_BYTES = 2**20  # a body this large, once freed, has the C heap's free memory given back


_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def _request_id(request: Request) -> str:
    """The client's (or reverse proxy's) x-request-id when it is a plain token, else a new one."""
    given = request.headers.get("x-request-id", "")
    return given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex[:16]


def _error(status: int, message: str, request_id: str, headers: dict | None = None) -> JSONResponse:
    payload = {"error": message, "request_id": request_id}
    return JSONResponse(payload, status_code=status, headers={"x-request-id": request_id, **(headers or {})})


class ScoringService:
    """The model side of the service: admission, the decode pool and the batcher. A request counts against
    `max_queue` only once its body is read and decoded; until then its body's bytes count against
    `max_body_buffer_bytes` (so unfinished bodies cannot hold the scoring queue, and expanding ones cannot hold
    memory beyond the budget)."""

    def __init__(self, scorer: Scorer, limits: ServeLimits, metrics: ServiceMetrics) -> None:
        self.scorer, self.limits, self.metrics = scorer, limits, metrics
        self.in_progress = 0  # decoded requests waiting for or in the model; only touched on the event loop
        self.body_bytes = 0  # bytes of bodies being read or decoded; only touched on the event loop
        self._large_bodies_freed = False  # since the last release_free_memory
        self.decoder = ThreadPoolExecutor(limits.decode_workers, thread_name_prefix="longer-serve-decode")
        self.batcher = DynamicBatcher(self._score_batch, limits.max_batch_requests,
                                      max(limits.max_batch_slots, limits.request.max_candidates),
                                      limits.max_wait_ms / 1000, name="longer-serve-model")
        metrics.gauges(scoring_queue=lambda: self.in_progress, body_buffer_bytes=lambda: self.body_bytes)
        if scorer.cache is not None:
            metrics.watch_cache(scorer.cache)

    def _score_batch(self, requests: Sequence[ScoringRequest]) -> list[list[float]]:
        counts = np.array([r.num_candidates for r in requests])
        self.metrics.batch_requests.observe(len(requests))
        self.metrics.batch_candidates.observe(int(counts.sum()))
        scores = self.scorer.score_requests(pa.concat_tables([r.user for r in requests]),
                                            pa.concat_tables([r.candidates for r in requests]), counts)
        return [part.tolist() for part in np.split(scores, np.cumsum(counts)[:-1])]

    async def _decoded(self, request: Request) -> ScoringRequest:
        """The request's body read (within body_timeout_s: the protocol answers 408 otherwise) and decoded, its
        bytes counted against the body budget until then."""
        limit, budget = self.limits.request.max_body_bytes, self.limits.max_body_buffer_bytes
        declared = request.headers.get("content-length")  # h11 has checked it is one decimal number
        if declared is not None and int(declared) > limit:
            raise RequestError(413, f"body of {declared} bytes, at most {limit}")
        chunks, held, values = [], 0, 1  # held: this body's bytes counted in self.body_bytes
        try:
            async for chunk in request.stream():  # also bounds chunked bodies, which declare no length
                if held + len(chunk) > limit:
                    raise RequestError(413, f"body of more than {limit} bytes")
                if self.body_bytes + len(chunk) > budget:
                    raise RequestError(503, f"busy: {self.body_bytes} bytes of request bodies in progress, at most "
                                            f"{budget}; retry later")
                values += json_values(chunk)  # refused as soon as it would expand too much, before parsing
                check_expansion(values, self.limits.request.max_decoded_bytes)
                self.body_bytes += len(chunk)
                held += len(chunk)
                chunks.append(chunk)
            body = b"".join(chunks)
            chunks.clear()
            return await asyncio.get_running_loop().run_in_executor(
                self.decoder, decode_request, body, self.scorer.cfg.data, self.limits.request)
        finally:
            self.body_bytes -= held
            self._large_bodies_freed |= held >= TRIM_AFTER_BYTES
            if self._large_bodies_freed and self.body_bytes == 0:
                # no body held: give the C heap's free pages back (after many large bodies its free memory is
                # fragmented and would otherwise stay with the process)
                self._large_bodies_freed = False
                release_free_memory()

    async def score(self, request: Request) -> JSONResponse:
        request_id = _request_id(request)
        try:
            decoded = await self._decoded(request)
            if self.in_progress >= self.limits.max_queue:
                raise RequestError(503, f"busy: {self.in_progress} requests in progress, at most "
                                        f"{self.limits.max_queue}; retry later")
            self.in_progress += 1
            try:
                scores = await asyncio.wrap_future(self.batcher.submit(decoded, decoded.num_candidates))
            finally:
                self.in_progress -= 1
            return JSONResponse({"scores": scores}, headers={"x-request-id": request_id})
        except RequestError as err:
            return _error(err.status, str(err), request_id, {"retry-after": "1"} if err.status == 503 else None)
        except ClientDisconnect:  # gone, or answered 408 by the protocol: this answer is not sent
            return _error(400, "client disconnected before sending the whole body", request_id)
        except NonFiniteScores as err:  # the model's fault, not the request's: one line in the log, no traceback
            logger.error("request %s: %s", request_id, err)
            return _error(500, str(err), request_id)
        except Exception:
            logger.exception("request %s failed", request_id)
            return _error(500, "internal error; it is logged with this request id", request_id)

    def close(self) -> None:
        self.batcher.close()
        self.decoder.shutdown(wait=True)


PATHS = ("/score", "/health", "/metrics")  # the paths metrics name; anything else counts as "other"
ADMIN_PATHS = ("/health", "/metrics")  # what the admin port answers


class MeasuredApp:
    """ASGI middleware: each HTTP answer's status and latency into the metrics (by path)."""

    def __init__(self, app: Any, metrics: ServiceMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"] if scope["path"] in PATHS else "other"
        start, status = time.perf_counter(), []

        async def measured_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, measured_send)
        finally:
            if status:  # an answer was started (else the connection layer answered or the client left)
                self.metrics.requests.labels(path, str(status[0])).inc()
                self.metrics.latency.labels(path).observe(time.perf_counter() - start)


def make_app(service: ScoringService, admin_port: int | None = None) -> MeasuredApp:
    """The routes, measured; on `admin_port`, only GET /health and /metrics."""
    app = FastAPI(title="longer-serve", docs_url=None, redoc_url=None, openapi_url=None)

    async def health() -> dict:
        return {"status": "ok"}

    async def metrics() -> Response:
        return Response(service.metrics.exposition(), media_type=CONTENT_TYPE)

    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:  # 404, 405
        message = f"{exc.detail}: {request.method} {request.url.path}; use POST /score, GET /health or GET /metrics"
        return _error(exc.status_code, message, _request_id(request), getattr(exc, "headers", None))

    async def internal_error(request: Request, exc: Exception) -> JSONResponse:  # outside the endpoints
        request_id = _request_id(request)
        logger.error("request %s failed", request_id, exc_info=exc)
        return _error(500, "internal error; it is logged with this request id", request_id)

    async def admin_only(request: Request, call_next: Any) -> Any:
        server = request.scope.get("server")
        if admin_port is not None and server is not None and server[1] == admin_port and \
                request.url.path not in ADMIN_PATHS:
            return _error(404, f"the admin port answers GET {' and '.join(ADMIN_PATHS)} only, not "
                               f"{request.method} {request.url.path}", _request_id(request))
        return await call_next(request)

    app.add_api_route("/score", service.score, methods=["POST"])
    app.add_api_route("/health", health, methods=["GET"])
    app.add_api_route("/metrics", metrics, methods=["GET"])
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, internal_error)
    if admin_port is not None:
        app.middleware("http")(admin_only)
    return MeasuredApp(app, service.metrics)


def _raise_open_files_limit(needed: int) -> None:
    """Each connection is a file descriptor: lift the soft limit towards the hard one if it is too low."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        if target < needed:
            logger.warning("open files limited to %d (< %d connections + 64); raise `ulimit -n`", target, needed)


class HttpServer:
    """The service on a socket bound at construction (port 0: a free port, see `.port`), listening with a
    backlog of `max_connections`. `serve_forever()` blocks (Ctrl-C stops it); `start()`/`stop()` run it
    in a background thread (tests, benchmarks)."""

    def __init__(self, scorer: Scorer, host: str = "127.0.0.1", port: int = 8080,
                 limits: ServeLimits | None = None, admin_port: int | None = None) -> None:
        """`admin_port`: also listen there for GET /health and /metrics only, with connections of their own (0:
        a free port, see `.admin_port`; None: none)."""
        self.limits = limits or ServeLimits()
        _raise_open_files_limit(self.limits.max_connections + self.limits.admin_connections + 64)
        self.metrics = ServiceMetrics()
        self.service = ScoringService(scorer, self.limits, self.metrics)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.socket = socket.create_server((host, port), family=family, backlog=self.limits.max_connections)
        self.sockets = [self.socket]
        if admin_port is not None:
            self.sockets.append(socket.create_server((host, admin_port), family=family,
                                                     backlog=self.limits.admin_connections))
        admin = self.sockets[1].getsockname()[1] if admin_port is not None else None
        self.metrics.gauges(connections=lambda: len(self.server.server_state.connections))
        config = uvicorn.Config(
            make_app(self.service, admin), http=_protocol(self.limits, self.metrics, admin), ws="none",
            lifespan="off", log_config=None, access_log=False, backlog=self.limits.max_connections,
            timeout_keep_alive=self.limits.keep_alive_s, server_header=False,
        )
        self.server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def admin_port(self) -> int | None:
        return self.sockets[1].getsockname()[1] if len(self.sockets) > 1 else None

    @property
    def host(self) -> str:
        return self.socket.getsockname()[0]

    @property
    def port(self) -> int:
        return self.socket.getsockname()[1]

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def serve_forever(self) -> None:
        try:
            self.server.run(sockets=self.sockets)
        finally:
            self.service.close()
            for sock in self.sockets:
                sock.close()

    def start(self, timeout: float = 30.0) -> "HttpServer":
        self._thread = threading.Thread(target=self.serve_forever, name="longer-serve-http", daemon=True)
        self._thread.start()
        waited = 0.0
        while not self.server.started and self._thread.is_alive() and waited < timeout:
            threading.Event().wait(0.01)
            waited += 0.01
        if not self.server.started:
            raise RuntimeError("the HTTP server did not start")
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
