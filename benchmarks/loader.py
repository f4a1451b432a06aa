"""Data loader vs training step: samples/s of the streaming loader alone against samples/s of a training
step (forward + backward + optimizers of the real model on batches already loaded), the peak RSS of a
process that streams one whole training epoch, and the time to the first batch after a resume at the
start, the middle and the last batch of an epoch (with the row groups that took reading).

For each config the loader is timed with 0 workers and with the config's data.num_workers (batches after
the first, so worker start-up is left out), and the step on the same machine in the same run. The RSS of
a separate process (num_workers=0, so the reading and the batches are in that process) is compared with
the split's size uncompressed: it must stay near a few row groups plus the shuffle buffer, not grow with
the data.

    python benchmarks/loader.py [--configs configs/quickstart.yaml configs/movielens.yaml] [--batches 150]
        [--steps 15] [--out benchmarks/results/loader_cpu.md]
    (a config may carry overrides: configs/taobao.yaml@data.root=data/bench-prepare/prepared-5000000)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

# torch and longer_train are imported inside the functions: the RSS processes are started first, from a
# parent that is still small, because a child's getrusage high-water mark starts at its parent's RSS.

OVERRIDES = ["logging.wandb_mode=disabled", "train.progress_bar=false", "train.checkpoint=false"]


def _config(spec: str):
    """A --configs entry: `PATH` or `PATH@key=value@key=value` (overrides, e.g. another data.root)."""
    from longer_train.config import load_config
    from longer_train.data.vocab import resolve_num_embeddings

    path, *extra = spec.split("@")
    cfg = load_config(path, OVERRIDES + extra)
    resolve_num_embeddings(cfg.data)  # the table sizes the loader maps ids against
    return cfg


def _max_rss_mb() -> float:
    """High-water mark of this process's RSS (getrusage; Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rss_mb() -> float:
    """Current RSS (Linux /proc), to see the loader's own memory under the high-water mark of the imports."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def loader_rate(cfg, workers: int, batches: int) -> float:
    """Samples/s of the training loader alone, batches 2..batches+1 of epoch 0."""
    from longer_train.data.loader import build_dataloader

    cfg.data.num_workers = workers
    loader = build_dataloader(cfg.data, "train", train=True, seed=0)
    it = iter(loader)
    next(it)  # worker start-up and the first shuffle-buffer fill
    samples, start = 0, time.perf_counter()
    for _, batch in zip(range(batches), it):
        samples += batch.size
    return samples / (time.perf_counter() - start)


def step_rate(cfg, steps: int) -> float:
    """Samples/s of forward + backward + sparse (fused) and dense optimizer steps on loaded batches: the
    trainer's own step (`Trainer._plain_step`) without its pipeline, so no loading overlaps it."""
    from longer_train.distributed.process_group import destroy_distributed
    from longer_train.trainer import Trainer

    trainer = Trainer(cfg)
    try:
        batches = [b for _, b in zip(range(steps + 2), trainer.train_loader)]
        trainer.model.train()
        samples, elapsed = 0, 0.0
        for i, batch in enumerate(batches):
            start = time.perf_counter()
            trainer._plain_step(iter([batch]))
            if i >= 2:  # the first steps allocate optimizer state
                elapsed += time.perf_counter() - start
                samples += batch.size
        return samples / elapsed
    finally:
        destroy_distributed()


def resume_costs(cfg) -> list[tuple[int, int, float, int, float]]:
    """(resume point, batches per epoch, seconds to the first batch after it, row groups read, seconds to build
    the loader: listing the files and, for a store, opening and checking its event log) with 0 workers, for resumes
    at the first, the middle and the last batch of epoch 0."""
    from longer_train.data.loader import build_dataloader

    cfg.data.num_workers = 0
    read_row_group, reads = pq.ParquetFile.read_row_group, [0]

    def counted(self, *args, **kwargs):
        reads[0] += 1
        return read_row_group(self, *args, **kwargs)

    pq.ParquetFile.read_row_group = counted
    try:
        batches = build_dataloader(cfg.data, "train", train=True, seed=0).num_batches()
        out = []
        for at in (0, batches // 2, batches - 1):
            start = time.perf_counter()
            loader = build_dataloader(cfg.data, "train", train=True, seed=0)
            built = time.perf_counter() - start
            loader.load_state_dict({**loader.state_dict(), "epoch": 0, "batches": at})
            reads[0], start = 0, time.perf_counter()
            next(iter(loader))
            out.append((at, batches, time.perf_counter() - start, reads[0], built))
        return out
    finally:
        pq.ParquetFile.read_row_group = read_row_group


def rss_child(config: str) -> dict:
    """Runs in its own process: stream one training epoch (0 workers), report sizes and peak RSS."""
    from longer_train.data.loader import build_dataloader, read_columns
    from longer_train.data.row_groups import resolve_files
    from longer_train.data.schema import is_store_schema
    from longer_train.data.store import event_files

    cfg = _config(config)
    cfg.data.num_workers = 0  # read and collate in this process
    files = resolve_files(cfg.data.root, cfg.data.train)
    metas = [pq.ParquetFile(f).metadata for f in files]
    groups = [m.row_group(i) for m in metas for i in range(m.num_row_groups)]
    rows = sum(g.num_rows for g in groups)
    store = is_store_schema(pq.ParquetFile(files[0]).schema_arrow, cfg.data)
    first = pq.ParquetFile(files[0]).read_row_group(0, columns=read_columns(cfg.data, store=store))
    arrow_per_row = first.nbytes / first.num_rows  # bytes of a row once read into Arrow (a store: no history)
    del first
    events_mb = sum(os.path.getsize(f) for f in event_files(cfg.data)) / 2**20 if store else 0.0
    loader = build_dataloader(cfg.data, "train", train=True, seed=0)
    before, peak_before = _rss_mb(), _max_rss_mb()
    samples, start, streaming = 0, time.perf_counter(), before
    for batch in loader:
        samples += batch.size
        streaming = max(streaming, _rss_mb())
    return {
        "rows": rows, "samples": samples, "seconds": time.perf_counter() - start,
        "dataset_mb": rows * arrow_per_row / 2**20,
        "disk_mb": sum(os.path.getsize(f) for f in files) / 2**20, "events_mb": events_mb,
        "layout": "store" if store else "inline",
        "row_group_mb": max(g.num_rows for g in groups) * arrow_per_row / 2**20,
        "buffer_mb": cfg.data.shuffle_buffer * arrow_per_row / 2**20,
        "shuffle_buffer": cfg.data.shuffle_buffer, "rss_before_mb": before, "rss_streaming_mb": streaming,
        "peak_before_mb": peak_before, "peak_mb": _max_rss_mb(),
        "arrow_peak_mb": pa.default_memory_pool().max_memory() / 2**20,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["configs/quickstart.yaml", "configs/movielens.yaml"],
                        help="config files, each optionally with overrides: PATH@key=value@key=value")
    parser.add_argument("--batches", type=int, default=150, help="batches timed per loader measurement")
    parser.add_argument("--steps", type=int, default=15, help="training steps timed per config")
    parser.add_argument("--out", default="benchmarks/results/loader_cpu.md")
    parser.add_argument("--resume-only", action="store_true",
                        help="only the resume table (for a split too big to stream whole here)")
    parser.add_argument("--rss-child", help=argparse.SUPPRESS)  # internal: the RSS measurement process
    args = parser.parse_args(argv)
    if args.rss_child:
        print(json.dumps(rss_child(args.rss_child)))
        return

    command = "python benchmarks/loader.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    resume = ["| config | resume at batch | of | s to build the loader | s to the first batch | row groups read |",
              "|---|---:|---:|---:|---:|---:|"]
    if args.resume_only:
        for config in args.configs:
            name = Path(config.split("@")[0]).stem + "".join(f" ({o})" for o in config.split("@")[1:])
            for at, batches, seconds, reads, built in resume_costs(_config(config)):
                resume.append(f"| {name} | {at} | {batches} | {built:.2f} | {seconds:.2f} | {reads} |")
                print(resume[-1], flush=True)
        text = "\n".join(["# Data loader: resume costs (CPU)", "", f"command: `{command}`", "",
                          f"{os.cpu_count()} CPU cores shared with other jobs (1-minute load average "
                          f"{os.getloadavg()[0]:.1f} at the end). Build: listing the files and, for a sequence "
                          "store, opening and checking its event log (sorted users, times in order); then the time "
                          "to the first batch after a resume and the row groups of sample rows it read (the event "
                          "log is memory-mapped: no row group of it is read).", "", *resume, ""])
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
        print(text)
        return
    rss = {}
    for config in args.configs:  # first, while this process is small (see the imports)
        out = subprocess.run([sys.executable, __file__, "--rss-child", config], check=True, capture_output=True,
                             text=True)
        rss[config] = json.loads(out.stdout.strip().splitlines()[-1])
        print(config, rss[config], flush=True)

    import torch


    speed = ["| config | batch | loader 0 workers samples/s | loader N workers samples/s | N | "
             "train step samples/s | loader (N) / step |", "|---|---:|---:|---:|---:|---:|---:|"]
    memory = ["| config | layout | train rows | shuffle buffer rows | rows / buffer | split in Arrow MB (est.) | "
              "on disk MB (split + event log) | "
              "largest row group MB (est.) | shuffle buffer MB (est.) | RSS before MB | max RSS streaming MB | "
              "growth MB | Arrow pool peak MB | getrusage peak before / after MB | epoch s |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for config in args.configs:
        name = Path(config.split("@")[0]).stem + "".join(f" ({o})" for o in config.split("@")[1:])
        cfg = _config(config)
        workers = cfg.data.num_workers
        alone = loader_rate(_config(config), 0, args.batches)
        with_workers = loader_rate(_config(config), workers, args.batches) if workers else alone
        step = step_rate(_config(config), args.steps)
        speed.append(f"| {name} | {cfg.data.batch_size} | {alone:,.0f} | {with_workers:,.0f} | {workers} | "
                     f"{step:,.0f} | {with_workers / step:.1f}x |")
        print(speed[-1], flush=True)
        m = rss[config]
        assert m["samples"] == m["rows"], m
        memory.append(
            f"| {name} | {m['layout']} | {m['rows']:,} | {m['shuffle_buffer']:,} | "
            f"{m['rows'] / m['shuffle_buffer']:.0f} | {m['dataset_mb']:,.0f} | {m['disk_mb']:,.0f} + "
            f"{m['events_mb']:,.0f} | {m['row_group_mb']:,.0f} | {m['buffer_mb']:,.0f} | "
            f"{m['rss_before_mb']:,.0f} | {m['rss_streaming_mb']:,.0f} | "
            f"{m['rss_streaming_mb'] - m['rss_before_mb']:,.0f} | {m['arrow_peak_mb']:,.0f} | "
            f"{m['peak_before_mb']:,.0f} / {m['peak_mb']:,.0f} | "
            f"{m['seconds']:.0f} |")
        print(memory[-1], flush=True)
        for at, batches, seconds, reads, built in resume_costs(_config(config)):
            resume.append(f"| {name} | {at} | {batches} | {built:.2f} | {seconds:.2f} | {reads} |")
            print(resume[-1], flush=True)

    text = "\n".join([
        "# Data loader vs training step (CPU)", "",
        f"command: `{command}`", "",
        f"torch {torch.__version__}, {torch.get_num_threads()} torch threads, {os.cpu_count()} CPU cores "
        f"shared with other jobs (1-minute load average {os.getloadavg()[0]:.1f} at the end): the loader and step "
        "rates are measured one after the other in the same run, so their ratio is meaningful, the absolute "
        "numbers less so.", "",
        "## Throughput (training split, epoch 0)", "", *speed, "",
        "## Peak RSS of one whole training epoch streamed (0 workers, one process)", "",
        "RSS before: after imports (torch, TorchRec, FBGEMM) and building the loader; max RSS streaming: the "
        "largest current RSS (/proc/self/statm) sampled after every batch; growth: their difference, the "
        "loader's own memory (row groups being read, the shuffle buffer, a batch, allocator caches); Arrow pool "
        "peak: the most memory pyarrow held at once (pa.default_memory_pool().max_memory()). The getrusage high-water "
        "mark (ru_maxrss) before and after streaming is shown too. Arrow sizes are estimated from the first "
        "row group read with the configured columns (a sequence store's sample rows hold no history: histories are "
        "rebuilt per row group from the event log, whose value columns are memory-mapped, so the pages of it that "
        "were touched count in the RSS as shared file cache).", "",
        *memory, "",
        "## Resume: time to the first batch (0 workers, epoch 0)", "",
        "The delivered batches are re-planned from row counts and the seed without reading them; only the "
        "row groups holding rows of the next batches are read (see longer_train/data/loader.py); a store's event "
        "log is memory-mapped, so its reads are page faults on the events those rows need, not row group reads.", "",
        *resume, "",
    ])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
