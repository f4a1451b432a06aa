"""HTTP scoring service (standard library only): `POST /score` with JSON, `GET /health`.

Request: {"user": {<every column of the sample schema that is not a candidate feature>},
          "candidates": [{<candidate feature columns>}, ...]}
Response: {"scores": [p, ...]} in candidate order. Malformed requests get a 4xx with a message naming the
field: 400 for bad JSON, missing or mistyped fields, negative ids and ids beyond the vocabulary of a table
whose OOV policy is `error` (under `hash` or `oov_row` they are mapped as in training, `data/oov.py`), 413
for a body over the size bound or too many candidates.
"""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pyarrow as pa

from ..data.schema import SchemaError
from .scorer import Scorer

MAX_BODY_BYTES = 16 * 1024 * 1024


class RequestError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def request_table(scorer: Scorer, body: Any, max_candidates: int) -> pa.Table:
    """A JSON request -> rows of the sample schema (one per candidate, the user's columns repeated)."""
    data = scorer.cfg.data
    if not isinstance(body, dict) or not isinstance(body.get("user"), dict):
        raise RequestError(400, "request must be a JSON object with 'user' (object) and 'candidates' (list)")
    user, candidates = body["user"], body.get("candidates")
    if not isinstance(candidates, list) or not candidates:
        raise RequestError(400, "'candidates' must be a non-empty list of objects")
    if len(candidates) > max_candidates:
        raise RequestError(413, f"{len(candidates)} candidates, at most {max_candidates} per request")
    candidate_columns = data.columns("candidate")
    user_columns = [f.name for f in data.features if f.role != "candidate"]
    user_columns += [data.user_id, data.timestamp, data.hist_timestamp]
    sequence = set(data.columns("sequence")) | {data.hist_timestamp}
    dense = set(data.columns("dense"))
    columns: dict[str, pa.Array] = {}
    n = len(candidates)
    for name in dict.fromkeys(user_columns):
        if name not in user:
            raise RequestError(400, f"'user.{name}' is missing")
        value = user[name]
        try:
            if name in sequence:
                columns[name] = pa.array([value] * n, pa.list_(pa.int64()))
            elif name in dense:
                columns[name] = pa.array([value] * n, pa.float32())
            else:
                columns[name] = pa.array([value] * n, pa.list_(pa.int64()) if isinstance(value, list) else pa.int64())
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError) as err:
            raise RequestError(400, f"'user.{name}' has the wrong type: {err}") from None
    for name in candidate_columns:
        values = []
        for i, cand in enumerate(candidates):
            if not isinstance(cand, dict) or name not in cand:
                raise RequestError(400, f"'candidates[{i}].{name}' is missing")
            values.append(cand[name])
        try:
            columns[name] = pa.array(values, pa.int64())
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError) as err:
            raise RequestError(400, f"'candidates[*].{name}' must be integers: {err}") from None
    return pa.table(columns)


def make_handler(scorer: Scorer, max_candidates: int) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _reply(self, status: int, payload: dict) -> None:
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            if self.path == "/health":
                self._reply(200, {"status": "ok"})
            else:
                self._reply(404, {"error": f"no route {self.path}; use POST /score or GET /health"})

        def do_POST(self) -> None:  # noqa: N802
            if self.path != "/score":
                self._reply(404, {"error": f"no route {self.path}; use POST /score"})
                return
            try:
                length = int(self.headers.get("Content-Length", "-1"))
                if length < 0:
                    raise RequestError(411, "Content-Length is required")
                if length > MAX_BODY_BYTES:
                    raise RequestError(413, f"body of {length} bytes, at most {MAX_BODY_BYTES}")
                try:
                    body = json.loads(self.rfile.read(length))
                except (json.JSONDecodeError, UnicodeDecodeError) as err:
                    raise RequestError(400, f"body is not valid JSON: {err}") from None
                table = request_table(scorer, body, max_candidates)
                try:
                    scores = scorer.score_table(table, source="request")
                except SchemaError as err:  # ids out of range, bad timestamps, unequal lists, ...
                    raise RequestError(400, str(err).replace("request: row ", "request: candidate ")) from None
                self._reply(200, {"scores": [float(s) for s in scores]})
            except RequestError as err:
                self._reply(err.status, {"error": str(err)})

        def log_message(self, format: str, *args: Any) -> None:  # keep test and service output quiet
            pass

    return Handler


def make_server(scorer: Scorer, host: str, port: int, max_candidates: int) -> ThreadingHTTPServer:
    return ThreadingHTTPServer((host, port), make_handler(scorer, max_candidates))


def serve_forever(scorer: Scorer, host: str, port: int, max_candidates: int) -> None:
    server = make_server(scorer, host, port, max_candidates)
    print(f"longer-serve: listening on http://{host}:{server.server_address[1]} (POST /score, GET /health)")
    try:
        server.serve_forever()
    finally:
        server.server_close()
