"""Admission after the body (issue 34): unfinished bodies do not hold the scoring queue, a client that does not
read its answers is dropped within its write deadline, bodies that expand when parsed are refused before they
are parsed and leave no memory behind, /health and /metrics have connections of their own, and /metrics
counts what happened in the Prometheus text format."""

import gc
import json
import re
import socket
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from test_http import _half_open, _http, _payload, _post, _score

from longer_train.serve.http import HttpServer
from longer_train.serve.limits import RequestLimits, ServeLimits
from longer_train.serve.scorer import Scorer
from longer_train.serve.user_cache import CacheLimits, UserStateCache

HEALTH = b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n"
METRICS = b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n"


def _metric(port: int, name: str, labels: str = "") -> float:
    status, _, body = _http(port, METRICS)
    assert status == 200
    found = re.search(rf"^{re.escape(name + labels)} (\S+)$", body.decode(), re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def test_unfinished_bodies_do_not_hold_the_scoring_queue(trained):
    """310 connections send their headers and part of their body and stop (the old service: every /score 503
    while they are held); with a scoring queue of 8, valid requests are still answered 200."""
    _, _, test = trained
    srv = HttpServer(trained[1], "127.0.0.1", 0, ServeLimits(max_queue=8, body_timeout_s=60)).start()
    held = [_half_open(srv.port, 2) for _ in range(310)]
    try:
        for _ in range(100):  # until the server has read the 310 partial bodies ('{"us' each), up to 10 s
            if _metric(srv.port, "longer_serve_body_buffer_bytes") == 310 * 4:
                break
            time.sleep(0.1)
        assert _metric(srv.port, "longer_serve_body_buffer_bytes") == 310 * 4
        for row in range(5):
            status, body = _score(srv.port, _payload(test, row, 4))
            assert status == 200 and len(body["scores"]) == 4, body
        assert _metric(srv.port, "longer_serve_scoring_queue") == 0
    finally:
        for sock in held:
            sock.close()
        srv.stop()


def test_a_client_that_does_not_read_its_answers_is_dropped(trained):
    """A client pipelines requests and reads nothing: once its socket's buffers are full the server stops
    writing, and drops it when write_timeout_s (0.5 s) passes without progress."""
    srv = HttpServer(trained[1], "127.0.0.1", 0, ServeLimits(write_timeout_s=0.5))
    srv.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # accepted sockets inherit it
    srv.start()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", srv.port))
    try:
        sock.settimeout(10)
        sock.sendall(METRICS * 400)  # ~2 MB of answers, never read
        dropped = 'longer_serve_dropped_connections_total{reason="slow_reader"}'
        for _ in range(100):  # up to 10 s; the deadline is 0.5 s
            if _metric(srv.port, dropped) == 1:
                break
            time.sleep(0.1)
        assert _metric(srv.port, dropped) == 1
        received = 0
        try:  # the connection ends (closed or reset) short of the 400 answers
            while chunk := sock.recv(65536):
                received += len(chunk)
        except ConnectionResetError:
            pass
        assert received < len(_http(srv.port, METRICS)[2]) * 400
    finally:
        sock.close()
        srv.stop()


def test_expanding_bodies_are_refused_before_parsing_and_memory_comes_back(trained):
    """300 bodies of 4 MiB, each '[{},{},...]' (1.4 M objects, ~100 MB if parsed), sent 100 at a time: every
    one answered (413 counted before parsing, or 503 while the body budget is full), /health answering
    meanwhile, and the process's memory back within 100 MiB of where it started."""
    _, _, test = trained
    srv = HttpServer(trained[1], "127.0.0.1", 0, ServeLimits()).start()
    body = b'{"user": {"x": [' + b"{}," * ((4 * 2**20 - 64) // 3) + b'{}]}, "candidates": []}'
    assert len(body) <= RequestLimits().max_body_bytes
    request = _post(srv.port, body)
    try:
        gc.collect()
        before = _rss_mb()
        health: list = []
        stop = threading.Event()

        def watch():
            while not stop.is_set():
                health.append(_http(srv.port, HEALTH, timeout=30)[0])

        watcher = threading.Thread(target=watch)
        watcher.start()
        with ThreadPoolExecutor(100) as pool:
            answers = list(pool.map(lambda _: _http(srv.port, request, timeout=60), range(300)))
        stop.set()
        watcher.join()
        statuses = [status for status, _, _ in answers]
        assert statuses.count(None) == 0 and set(statuses) <= {413, 503}, sorted(set(map(str, statuses)))
        assert all("JSON values" in json.loads(b)["error"] for s, _, b in answers if s == 413)
        assert health and set(health) == {200}
        del answers
        gc.collect()
        assert _rss_mb() - before < 100
        assert _metric(srv.port, "longer_serve_body_buffer_bytes") == 0
    finally:
        srv.stop()


def test_health_and_metrics_have_connections_of_their_own(trained):
    """With every scoring connection taken, the admin port still answers /health and /metrics (and only those)."""
    srv = HttpServer(trained[1], "127.0.0.1", 0, ServeLimits(max_connections=4), admin_port=0).start()
    held = [socket.create_connection(("127.0.0.1", srv.port), timeout=10) for _ in range(4)]
    try:
        time.sleep(0.2)  # the server has accepted the four
        assert _http(srv.port, HEALTH)[0] == 503
        assert _http(srv.admin_port, HEALTH)[0] == 200
        status, _, body = _http(srv.admin_port, METRICS)
        assert status == 200 and b'longer_serve_requests_total{code="503",path="-"} 1.0' in body
        status, _, body = _http(srv.admin_port, _post(srv.admin_port, b"{}"))
        assert status == 404 and "admin port" in json.loads(body)["error"]
    finally:
        for sock in held:
            sock.close()
        srv.stop()


def test_a_peer_that_went_away_leaves_no_traceback(trained, caplog):
    """Clients that reset their connection mid-headers or mid-body, before and after their deadline fires:
    nothing is logged with a traceback (the old service: OSError [Errno 107] tracebacks from each)."""
    srv = HttpServer(trained[1], "127.0.0.1", 0, ServeLimits(header_timeout_s=0.3, body_timeout_s=0.3)).start()
    try:
        for wait in (0.0, 0.5):
            held = [_half_open(srv.port, 1 + i % 2) for i in range(40)]
            time.sleep(wait)
            for sock in held:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = reset
                sock.close()
        time.sleep(1.0)  # every deadline has fired
        assert _http(srv.port, HEALTH)[0] == 200
        assert not [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]
    finally:
        srv.stop()


def test_metrics_count_requests_errors_batches_latency_and_the_cache(trained):
    _, scorer, test = trained
    warm = Scorer(scorer.cfg, scorer.lookup, scorer.dense, UserStateCache(CacheLimits()))
    srv = HttpServer(warm, "127.0.0.1", 0, ServeLimits()).start()
    port = srv.port
    ok = 'longer_serve_requests_total{code="200",path="/score"}'
    bad = 'longer_serve_requests_total{code="400",path="/score"}'
    before = (_metric(port, ok), _metric(port, bad), _metric(port, "longer_serve_batch_requests_count"))
    assert _score(port, _payload(test, 1, 3))[0] == 200
    assert _http(port, _post(port, b'{"user": 1}'))[0] == 400
    status, headers, body = _http(port, METRICS)
    assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
    after = (_metric(port, ok), _metric(port, bad), _metric(port, "longer_serve_batch_requests_count"))
    assert [a - b for a, b in zip(after, before)] == [1, 1, 1]
    for name in ("longer_serve_request_seconds_bucket", "longer_serve_batch_candidates_bucket",
                 "longer_serve_scoring_queue", "longer_serve_connections"):
        assert name.encode() in body, name
    assert _score(port, _payload(test, 1, 3))[0] == 200  # the same user again: a hit
    assert _metric(port, "longer_serve_user_cache_hits_total") == 1
    assert _metric(port, "longer_serve_user_cache_appends_total") == 0  # the paper's tokens: no append
    assert _metric(port, "longer_serve_user_cache_entries") == 1
    srv.stop()

