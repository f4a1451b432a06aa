"""`longer-serve`: score requests with a trained checkpoint.

    longer-serve score --checkpoint DIR --requests FILE_OR_DIR --out FILE.parquet
    longer-serve http --checkpoint DIR --port P [--host 127.0.0.1] [--max-candidates N]
    longer-serve export --checkpoint DIR --out DIR   (torch.export programs of the dense prefill and score)

--checkpoint is a checkpoint folder (runs/<run>/checkpoints/step_N), verified against its manifest before
it is used, or a run folder (or its checkpoints/ folder): then the newest checkpoint that verifies.
Bad input (a checkpoint that fails verification, a request file that does not match the schema) is one
line on stderr and exit code 2; --debug (or LONGER_DEBUG=1) shows the traceback.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ..components.run_logger import setup_logging
from ..data.schema import SchemaError
from ..errors import add_debug_flag, debug_enabled, run_cli


def _score(args: argparse.Namespace) -> int:
    from .scorer import Scorer

    scorer = Scorer.from_checkpoint(args.checkpoint)
    source = Path(args.requests)
    files = sorted(source.rglob("*.parquet")) if source.is_dir() else [source]
    tables = []
    start = time.perf_counter()
    for path in files:
        try:
            table = pq.read_table(path)
        except (OSError, pa.ArrowException) as err:
            raise SchemaError(f"{path}: cannot read Parquet file ({err})") from None
        scores = scorer.score_table(table, source=str(path))
        tables.append(table.append_column("score", pa.array(scores, pa.float32())))
    out = pa.concat_tables(tables)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(out, args.out)
    print(f"scored {out.num_rows} rows from {len(files)} file(s) in {time.perf_counter() - start:.1f} s -> {args.out}")
    return 0


def _http(args: argparse.Namespace) -> int:
    from .http import serve_forever
    from .scorer import Scorer

    serve_forever(Scorer.from_checkpoint(args.checkpoint), args.host, args.port, args.max_candidates)
    return 0


def _export(args: argparse.Namespace) -> int:
    import torch

    from ..models.longer import LongerInputs
    from .export import export_programs, save_programs
    from .scorer import Scorer

    scorer = Scorer.from_checkpoint(args.checkpoint)
    dims, capacity = scorer.dense.dims, scorer.cfg.data.max_len
    # example sizes > 1 so that no dimension is specialised to 1; only the widths are fixed
    example = LongerInputs(
        torch.zeros(8, dims.event), torch.tensor([3, 5]), torch.zeros(8, dtype=torch.long), torch.zeros(2, 0),
        torch.zeros(2, dims.user), torch.zeros(2, dims.dense),
    )
    programs = export_programs(scorer.dense, example, torch.zeros(2, 3, dims.candidate), capacity)
    save_programs(programs, args.out)
    print(f"wrote {args.out}/prefill.pt2 and {args.out}/score.pt2 (history capacity {capacity} events)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="longer-serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    common = add_debug_flag(parser)
    commands = parser.add_subparsers(dest="command", required=True)
    batch = commands.add_parser("score", help="score a Parquet file (or folder) of requests", parents=[common])
    batch.add_argument("--checkpoint", required=True,
                       help="a checkpoint folder (runs/<run>/checkpoints/step_N), or a run folder: its newest "
                            "checkpoint that verifies")
    batch.add_argument("--requests", required=True, help="Parquet rows in the sample schema (label optional)")
    batch.add_argument("--out", required=True, help="output Parquet: the request rows plus a 'score' column")
    batch.set_defaults(run=_score)
    http = commands.add_parser("http", help="serve JSON scoring requests over HTTP", parents=[common])
    http.add_argument("--checkpoint", required=True)
    http.add_argument("--host", default="127.0.0.1")
    http.add_argument("--port", type=int, default=8080)
    http.add_argument("--max-candidates", type=int, default=2000, help="candidates allowed in one request")
    http.set_defaults(run=_http)
    export = commands.add_parser("export", help="write torch.export programs of prefill and score", parents=[common])
    export.add_argument("--checkpoint", required=True)
    export.add_argument("--out", required=True, help="folder for prefill.pt2 and score.pt2")
    export.set_defaults(run=_export)
    args = parser.parse_args(argv)
    debug = debug_enabled(args.debug)
    setup_logging(debug=debug)
    return run_cli(f"longer-serve {args.command}", lambda: args.run(args), debug)


if __name__ == "__main__":
    raise SystemExit(main())
