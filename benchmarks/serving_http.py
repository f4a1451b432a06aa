"""The HTTP scoring service under concurrent clients: batched vs unbatched (vs an older revision's server).

Each variant is a `longer-serve http` server in its own process (this script with `--serve`), with the
same random-weight LONGER model (seeded) and the same limits; only the batching differs:
`batched-N` (the default limits: up to 32 requests per model call, 2 ms max wait, at most N padded
candidate slots per call; one variant per `--batched-slots` value) and `unbatched`
(`--max-batch-requests 1`: one request per model call). `--baseline-ref REF` adds the server of a git
revision (e.g. the one-at-a-time standard-library server this one replaced), run from `git archive REF`
with the same model config and seed.

Clients are threads of this process, each with one keep-alive connection, sending its next request as
soon as the previous one is answered (closed loop). A request is one user with a history of --length
events and --candidates candidates (distinct users and candidates per client). Per cell: p50/p99 latency,
candidates/s over the cell's wall time, connection errors (resets, refused, timeouts: no HTTP answer) and
non-200 answers. Variants are alternated within each concurrency level, --rounds times, and each row is
one variant's requests of all rounds. Scores of a probe request must agree across variants (1e-5) before
anything is timed.

    python benchmarks/serving_http.py [--clients 1 8 32 128] [--length 2000 --candidates 500]
        [--threads 1] [--baseline-ref REF [--override KEY=VALUE]] [--out benchmarks/results/serving_http_cpu.md]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "quickstart.yaml"


# ------------------------------------------------------------------------------------------------
# server side (a separate process per variant)
# ------------------------------------------------------------------------------------------------
# the synthetic data's table sizes at the generator's defaults: there is no dataset here for `num_embeddings: auto`
TABLE_SIZES = {"item": 20000, "category": 50, "action": 3, "user": 4000, "segment": 8}


def model_overrides(length: int) -> list[str]:
    """The model of benchmarks/serving.py (K=8, k=100, d=32, one self layer) over the synthetic schema."""
    return [f"data.max_len={length}", "model.token_dim=32", "model.merge_k=8", "model.num_queries=100",
            "model.num_self_layers=1", "model.head_dim=32", "logging.wandb_mode=disabled",
            *(f"data.tables.{t}.num_embeddings={n}" for t, n in TABLE_SIZES.items())]


def build_scorer(length: int, seed: int, overrides: list[str] = ()):
    import torch

    from longer_train.config import load_config
    from longer_train.models.longer import Longer
    from longer_train.models.ranking import dense_dims
    from longer_train.models.sparse_arch import SparseArch
    from longer_train.serve.scorer import Scorer

    cfg = load_config(CONFIG, [*model_overrides(length), *overrides])
    torch.manual_seed(seed)
    sparse = SparseArch(cfg.data, device=torch.device("cpu"))
    return Scorer(cfg, sparse, Longer(cfg.model, dense_dims(cfg, sparse)))


def serve(args: argparse.Namespace) -> None:
    import torch

    from longer_train.serve import http as serve_http

    torch.set_num_threads(args.threads)
    scorer = build_scorer(args.length, args.seed, args.override)
    print(f"serving {args.serve} from {Path(serve_http.__file__).parent}", flush=True)
    if hasattr(serve_http, "HttpServer"):
        from longer_train.serve.limits import ServeLimits

        if args.serve == "unbatched":
            limits = ServeLimits(max_batch_requests=1)
        else:  # batched-N
            limits = ServeLimits(max_batch_slots=int(args.serve.split("-")[1]))
        server = serve_http.HttpServer(scorer, "127.0.0.1", args.port, limits)
        server.serve_forever()
    else:  # an older revision: the standard-library server
        server = serve_http.make_server(scorer, "127.0.0.1", args.port, 2000)
        server.serve_forever()


# ------------------------------------------------------------------------------------------------
# client side
# ------------------------------------------------------------------------------------------------
def request_bodies(count: int, length: int, candidates: int, seed: int) -> list[bytes]:
    """`count` requests in the synthetic schema's JSON: distinct users, histories and candidates."""
    from longer_train.config import load_config

    data = load_config(CONFIG, model_overrides(length)).data
    rng = np.random.default_rng(seed)
    size = lambda name: data.tables[next(f.table for f in data.features if f.name == name)].num_embeddings
    bodies = []
    for i in range(count):
        now = 1_700_000_000 + int(rng.integers(0, 10**6))
        user = {
            "user_id": i % size("user_id"), "timestamp": now, "user_segment": int(rng.integers(size("user_segment"))),
            "user_activity": float(rng.random()),
            "hist_item_id": rng.integers(0, size("hist_item_id"), length).tolist(),
            "hist_category_id": rng.integers(0, size("hist_category_id"), length).tolist(),
            "hist_action": rng.integers(0, size("hist_action"), length).tolist(),
            "hist_timestamp": np.sort(now - rng.integers(0, 10**7, length)).tolist(),
        }
        cands = [{"item_id": int(a), "category_id": int(b)} for a, b in
                 zip(rng.integers(0, size("item_id"), candidates), rng.integers(0, size("category_id"), candidates))]
        bodies.append(json.dumps({"user": user, "candidates": cands}).encode())
    return bodies


def post(conn: http.client.HTTPConnection, body: bytes) -> tuple[int, bytes]:
    conn.request("POST", "/score", body, {"Content-Type": "application/json"})
    response = conn.getresponse()
    return response.status, response.read()


def run_load(port: int, bodies: list[bytes], clients: int, requests: int, timeout: float = 300.0) -> dict:
    """`clients` closed-loop clients sending `requests` requests in all; latencies of the answered ones."""
    latencies: list[float] = []
    counts = {"connection_errors": 0, "non_200": 0}
    lock = threading.Lock()
    todo = iter(range(requests))

    def client(index: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        while True:
            with lock:
                if next(todo, None) is None:
                    break
            start = time.perf_counter()
            try:
                status, _ = post(conn, bodies[index % len(bodies)])
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
                with lock:
                    counts["connection_errors"] += 1
                continue
            with lock:
                latencies.append(time.perf_counter() - start)
                counts["non_200"] += status != 200
        conn.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"latencies": latencies, "wall": time.perf_counter() - start, **counts}


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _baseline_tree(ref: str, into: Path) -> Path:
    """`git archive REF` of the package (and its kernels) in `into`, importable with PYTHONPATH=into."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "longer_train", "kernels"],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    (into / "longer_train" / "kernels").symlink_to(into / "kernels")
    return into


def start_server(variant: str, args: argparse.Namespace, pythonpath: Path | None) -> tuple[subprocess.Popen, int]:
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--serve", variant, "--port", str(port),
           "--length", str(args.length), "--threads", str(args.threads), "--seed", str(args.seed)]
    if variant != "baseline":
        cmd += [f"--override={o}" for o in args.override]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{variant} server exited:\n{proc.stdout.read()}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return proc, port
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"{variant} server did not answer /health")


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32, 128])
    parser.add_argument("--length", type=int, default=2000, help="history events per request (= data.max_len)")
    parser.add_argument("--candidates", type=int, default=500)
    parser.add_argument("--requests", type=int, default=32,
                        help="requests per cell and round; at least 2 per client (128 clients: 256)")
    parser.add_argument("--rounds", type=int, default=2, help="variants alternated this many times per level")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each server")
    parser.add_argument("--batched-slots", type=int, nargs="+", default=[2048, 16384],
                        help="one batched variant per value of --max-batch-slots (the first is the reference)")
    parser.add_argument("--baseline-ref", default=None, help="also time the server of this git revision")
    parser.add_argument("--override", action="append", default=[],
                        help="config override for this revision's servers only, e.g. to run the baseline's model "
                             "when the model gained an option since (repeatable)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="also write the table (with its command) to this file")
    parser.add_argument("--serve", default=None, help=argparse.SUPPRESS)  # server process: the variant name
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args)
        return ""

    batched = [f"batched-{slots}" for slots in args.batched_slots]
    variants = batched + ["unbatched"] + (["baseline"] if args.baseline_ref else [])
    tmp = Path(tempfile.mkdtemp(prefix="serving_http_"))
    servers: dict[str, tuple[subprocess.Popen, int]] = {}
    load = [os.getloadavg()[0]]
    try:
        for variant in variants:
            tree = _baseline_tree(args.baseline_ref, tmp) if variant == "baseline" else None
            servers[variant] = start_server(variant, args, tree)
        bodies = request_bodies(max(args.clients), args.length, args.candidates, args.seed + 1)
        probe = {}
        for variant, (_, port) in servers.items():  # warm-up, and the same scores from every variant
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
            for body in bodies[:3]:
                status, answer = post(conn, body)
                assert status == 200, (variant, answer[:300])
            probe[variant] = np.array(json.loads(answer)["scores"])
            conn.close()
        for variant in variants[1:-1] if args.baseline_ref else variants[1:]:  # this revision: equal scores
            np.testing.assert_allclose(probe[variant], probe[batched[0]], atol=1e-5, rtol=0, err_msg=variant)
        agree = {variant: float(np.abs(scores - probe[batched[0]]).max()) for variant, scores in probe.items()}

        results: dict[tuple[str, int], dict] = {}
        for clients in args.clients:
            requests = max(args.requests, 2 * clients)
            for r in range(args.rounds):
                for variant in variants if r % 2 == 0 else variants[::-1]:
                    proc, port = servers[variant]
                    cpu = _cpu_seconds(proc.pid)
                    out = run_load(port, bodies, clients, requests)
                    out["cpu"] = _cpu_seconds(proc.pid) - cpu
                    cell = results.setdefault((variant, clients), {"latencies": [], "wall": 0.0, "cpu": 0.0,
                                                                   "connection_errors": 0, "non_200": 0})
                    for key in ("wall", "cpu", "connection_errors", "non_200"):
                        cell[key] += out[key]
                    cell["latencies"] += out["latencies"]
                    load.append(os.getloadavg()[0])
                    print(f"# {variant:>9} x{clients:<3} round {r}: {len(out['latencies'])} answered in "
                          f"{out['wall']:.1f} s", file=sys.stderr, flush=True)
        peak = {variant: _peak_rss_mb(proc.pid) for variant, (proc, _) in servers.items()}
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)

    command = "python benchmarks/serving_http.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    lines = [
        f"# HTTP serving under concurrent clients, CPU, fp32 ({args.threads} torch thread(s) per server process;",
        f"# clients are threads of one more process). Load average during the run: {min(load):.1f}-{max(load):.1f}"
        f" on {os.cpu_count()} cores (a shared machine).",
        f"# request: 1 user, L={args.length} history events (= data.max_len), {args.candidates} candidates; model "
        "K=8, k=100, d=32, 1 self layer (benchmarks/serving.py's)",
        f"# baseline: the server of {args.baseline_ref}" if args.baseline_ref else "# baseline: not run",
        f"# this revision's servers with: {' '.join(args.override) or 'the config as it is'}",
        f"# largest |score - {batched[0]} score| on a probe request: "
        + ", ".join(f"{v} {d:.1e}" for v, d in agree.items() if v != batched[0]),
        f"# command: {command}",
        "| clients | variant | requests | p50 ms | p99 ms | candidates/s | x unbatched | server CPU s / 1k cand "
        "| connection errors | non-200 |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    rate = {key: args.candidates * len(c["latencies"]) / c["wall"] for key, c in results.items()}
    for clients in args.clients:
        for variant in variants:
            c = results[variant, clients]
            lat = np.array(c["latencies"]) * 1000 if c["latencies"] else np.array([np.nan])
            answered = max(1, len(c["latencies"]))
            lines.append(
                f"| {clients} | {variant} | {len(c['latencies'])} | {np.percentile(lat, 50):.0f} | "
                f"{np.percentile(lat, 99):.0f} | {rate[variant, clients]:,.0f} | "
                f"{rate[variant, clients] / rate['unbatched', clients]:.2f}x | "
                f"{1000 * c['cpu'] / (args.candidates * answered):.3f} | {c['connection_errors']} | {c['non_200']} |")
    lines.append("")
    lines.append("Server peak RSS (MiB): " + ", ".join(f"{v} {mb:,.0f}" for v, mb in peak.items()))
    table = "\n".join(lines)
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n")
    return table


if __name__ == "__main__":
    main()
