"""`longer-serve`: score requests with a trained checkpoint.

    longer-serve score --checkpoint DIR --requests FILE_OR_DIR --out FILE.parquet [--events DIR]
    longer-serve http --checkpoint DIR --port P [--admin-port A] [--threads N] [limits: docs/serving.md]
    longer-serve export --checkpoint DIR --out DIR   (torch.export programs of the whole scorer)

--checkpoint is a checkpoint folder (runs/<run>/checkpoints/step_N), verified against its manifest before
it is used, or a run folder (or its checkpoints/ folder): then the newest checkpoint that verifies.
Bad input (a checkpoint that fails verification, a request file that does not match the schema) is one
line on stderr and exit code 2; --debug (or LONGER_DEBUG=1) shows the traceback.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ..components.run_logger import setup_logging
from ..data.schema import SchemaError, is_store_schema
from ..data.store import EVENTS, EventLog, event_files
from ..errors import HelpFormatter, add_debug_flag, debug_enabled, run_cli


def _score(args: argparse.Namespace) -> int:
    from .scorer import Scorer

    scorer = Scorer.from_checkpoint(args.checkpoint)
    source = Path(args.requests)
    files = sorted(source.rglob("*.parquet")) if source.is_dir() else [source]
    tables, events = [], None
    start = time.perf_counter()
    for path in files:
        try:
            table = pq.read_table(path)
        except (OSError, pa.ArrowException) as err:
            raise SchemaError(f"{path}: cannot read Parquet file ({err})") from None
        if is_store_schema(table.schema, scorer.cfg.data):  # a sequence store's split: rebuild the histories
            if events is None:
                default = (source if source.is_dir() else source.parent).parent / EVENTS
                where = replace(scorer.cfg.data, root=".", events=str(args.events or default))
                events = EventLog(event_files(where), scorer.cfg.data)
            table = events.rebuild(table)[0]
        scores = scorer.score_table(table, source=str(path))
        tables.append(table.append_column("score", pa.array(scores, pa.float32())))
    out = pa.concat_tables(tables)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(out, args.out)
    print(f"scored {out.num_rows} rows from {len(files)} file(s) in {time.perf_counter() - start:.1f} s -> {args.out}")
    return 0


def _http(args: argparse.Namespace) -> int:
    import logging

    import torch

    from .http import HttpServer
    from .limits import RequestLimits, ServeLimits
    from .scorer import Scorer
    from .user_cache import CacheLimits, UserStateCache

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    limits = ServeLimits(
        request=RequestLimits(args.max_body_bytes, args.max_candidates, args.max_history, args.max_decoded_bytes),
        max_batch_requests=args.max_batch_requests, max_batch_slots=args.max_batch_slots,
        max_wait_ms=args.max_wait_ms, max_queue=args.max_queue, max_connections=args.max_connections,
        decode_workers=args.decode_workers, header_timeout_s=args.header_timeout, body_timeout_s=args.body_timeout,
        keep_alive_s=args.keep_alive, max_body_buffer_bytes=args.max_body_buffer_bytes,
        write_timeout_s=args.write_timeout,
    )
    cache = UserStateCache(CacheLimits(args.cache_mb, args.cache_entries, args.cache_ttl)) if args.cache_mb else None
    server = HttpServer(Scorer.from_checkpoint(args.checkpoint, cache), args.host, args.port, limits, args.admin_port)
    admin = f"; GET /health and /metrics also on port {server.admin_port}" if server.admin_port is not None else ""
    print(f"longer-serve: listening on {server.url} (POST /score, GET /health, GET /metrics{admin}); no "
          "authentication: keep it on localhost or behind a reverse proxy (docs/serving.md)", flush=True)
    server.serve_forever()
    return 0


def _add_http_limits(http: argparse.ArgumentParser) -> None:
    from .limits import RequestLimits, ServeLimits
    from .user_cache import CacheLimits

    r, s, c = RequestLimits(), ServeLimits(), CacheLimits()
    add = http.add_argument
    add("--threads", type=int, default=0, help="torch threads of the model (0: torch's default)")
    add("--max-candidates", type=int, default=r.max_candidates, help="candidates in one request (more: 413)")
    add("--max-history", type=int, default=r.max_history, help="events in one history list (more: 413)")
    add("--max-body-bytes", type=int, default=r.max_body_bytes, help="request body size (more: 413)")
    add("--max-decoded-bytes", type=int, default=r.max_decoded_bytes,
        help="what a body may decode to, counted before parsing (more: 413)")
    add("--max-body-buffer-bytes", type=int, default=s.max_body_buffer_bytes,
        help="bytes of all request bodies being read or decoded at once (more: 503)")
    add("--max-batch-requests", type=int, default=s.max_batch_requests,
        help="requests scored together in one model call (1: no batching)")
    add("--max-batch-slots", type=int, default=s.max_batch_slots,
        help="padded candidate slots (requests x widest request) in one model call")
    add("--max-wait-ms", type=float, default=s.max_wait_ms, help="wait for more requests once one is waiting")
    add("--max-queue", type=int, default=s.max_queue, help="requests in progress at once (more: 503, retry)")
    add("--max-connections", type=int, default=s.max_connections,
        help="open connections (more: 503); also the listen backlog")
    add("--decode-workers", type=int, default=s.decode_workers, help="threads parsing and validating bodies")
    add("--header-timeout", type=float, default=s.header_timeout_s, help="seconds to receive a request's headers")
    add("--body-timeout", type=float, default=s.body_timeout_s, help="seconds to receive a request's body")
    add("--keep-alive", type=float, default=s.keep_alive_s, help="seconds an idle keep-alive connection stays open")
    add("--write-timeout", type=float, default=s.write_timeout_s,
        help="seconds a client may take none of its answer before it is dropped")
    add("--admin-port", type=int, default=None,
        help="also serve GET /health and /metrics on this port, with connections of their own")
    add("--cache-mb", type=float, default=c.max_mb, help="MiB of encoded users kept between requests (0: no cache)")
    add("--cache-entries", type=int, default=c.max_entries, help="users kept between requests")
    add("--cache-ttl", type=float, default=c.ttl_s, help="seconds a kept user is used for")


def _export(args: argparse.Namespace) -> int:
    from .export import export_programs, save_programs
    from .scorer import Scorer

    scorer = Scorer.from_checkpoint(args.checkpoint)
    capacity = scorer.cfg.data.max_len
    save_programs(export_programs(scorer.lookup, scorer.dense, capacity, scorer.dense_width), args.out)
    print(f"wrote {args.out}/prefill.pt2 and {args.out}/score.pt2 (raw ids in, probabilities out; history "
          f"capacity {capacity} events; docs/serving.md)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="longer-serve", description=__doc__,
                                     formatter_class=HelpFormatter)
    common = add_debug_flag(parser)
    commands = parser.add_subparsers(dest="command", required=True)
    batch = commands.add_parser("score", help="score a Parquet file (or folder) of requests", parents=[common],
                                formatter_class=HelpFormatter)
    batch.add_argument("--checkpoint", required=True,
                       help="a checkpoint folder (runs/<run>/checkpoints/step_N), or a run folder: its newest "
                            "checkpoint that verifies")
    batch.add_argument("--requests", required=True, help="Parquet rows in the sample schema (label optional), or a "
                       "sequence store's split (histories rebuilt from its event log)")
    batch.add_argument("--events", help="the event log of a store's requests (default: events/ beside their folder)")
    batch.add_argument("--out", required=True, help="output Parquet: the request rows plus a 'score' column")
    batch.set_defaults(run=_score)
    http = commands.add_parser("http", help="serve JSON scoring requests over HTTP", parents=[common],
                               formatter_class=HelpFormatter)
    http.add_argument("--checkpoint", required=True)
    http.add_argument("--host", default="127.0.0.1", help="no authentication: keep the default (localhost) "
                                                           "or put a reverse proxy in front")
    http.add_argument("--port", type=int, default=8080,
                      help="TCP port of /score (and of /health, /metrics without --admin-port)")
    _add_http_limits(http)
    http.set_defaults(run=_http)
    export = commands.add_parser("export", help="write torch.export programs of prefill and score", parents=[common],
                                 formatter_class=HelpFormatter)
    export.add_argument("--checkpoint", required=True)
    export.add_argument("--out", required=True, help="folder for prefill.pt2 and score.pt2")
    export.set_defaults(run=_export)
    args = parser.parse_args(argv)
    debug = debug_enabled(args.debug)
    setup_logging(debug=debug)
    return run_cli(f"longer-serve {args.command}", lambda: args.run(args), debug)


if __name__ == "__main__":
    raise SystemExit(main())
