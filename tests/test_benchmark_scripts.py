"""The CPU benchmarks still run against the current code (a refactor of the Trainer once broke the loader
benchmark unnoticed): the loader benchmark's step and resume measurements, on a small generated dataset."""

import json
import runpy
from pathlib import Path

import pytest
from test_config import QUICKSTART

from longer_train.config import load_config
from longer_train.datasets import synthetic

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench_data")
    synthetic.generate(root, users=120, max_len=64, seed=1)
    return root


def test_loader_benchmark_measures_step_and_resume(small, tmp_path):
    bench = runpy.run_path(str(ROOT / "benchmarks" / "loader.py"), run_name="benchmark")
    overrides = [*bench["OVERRIDES"], f"data.root={small}", "data.max_len=64", "data.batch_size=32",
                 f"train.output_dir={tmp_path}"]
    from longer_train.machine import resolve

    assert bench["step_rate"](resolve(load_config(QUICKSTART, overrides)), 2) > 0
    costs = bench["resume_costs"](resolve(load_config(QUICKSTART, overrides)))
    assert [at for at, *_ in costs] == [0, costs[0][1] // 2, costs[0][1] - 1]
    assert all(seconds > 0 and 1 <= reads <= 3 and built > 0 for _, _, seconds, reads, built in costs), costs


def test_summarise_runs_groups_seeds_of_one_run(tmp_path):
    """The table behind the extra checks in docs/results.md: seeds of one run averaged, a repeated run counted
    once (its latest line)."""
    summarise = runpy.run_path(str(ROOT / "benchmarks" / "summarise_runs.py"), run_name="benchmark")["summarise"]
    line = lambda run, auc: {"run": run, "test_auc": auc, "test_gauc": 0.5, "test_logloss": 0.6}
    rows = summarise([line("m-a-seed0", 0.1), line("m-a-seed1", 0.2), line("m-a-seed1", 0.3), line("m-b-seed0", 0.7)])
    assert rows[2] == "| m-a | 2 | 0.2000 ± 0.1414 | 0.5000 ± 0.0000 | 0.6000 ± 0.0000 |"
    assert rows[3] == "| m-b | 1 | 0.7000 | 0.5000 | 0.6000 |"


def test_token_merge_benchmark_prints_the_table(capsys):
    table = runpy.run_path(str(ROOT / "benchmarks" / "token_merge.py"), run_name="benchmark")["main"](["--smoke"])
    rows = [line for line in table.splitlines() if line.startswith("| 64 |")]
    assert [row.split(" | ")[1].split(" ")[0] for row in rows] == ["real", "full"]
    assert all(row.rstrip(" |").endswith("x") for row in rows)


def test_prepare_benchmark_generates_userbehavior_and_reports_a_row(tmp_path):
    """benchmarks/prepare.py on 3,000 generated lines: the file has the UserBehavior format and the requested line
    count, `longer-data prepare taobao` reads every line of it (the out-of-window ones counted), and the results
    row carries wall time, peak RSS, size and the command."""
    bench = runpy.run_path(str(ROOT / "benchmarks" / "prepare.py"), run_name="benchmark")
    out = tmp_path / "results.md"
    bench["main"](["--lines", "3000", "--work", str(tmp_path / "work"), "--memory-budget", "512MB", "--out", str(out),
                   "--keep-input", "--keep-output"])
    src = tmp_path / "work" / "UserBehavior-3000.csv"
    lines = src.read_text().splitlines()
    assert len(lines) == 3000 and all(len(line.split(",")) == 5 for line in lines)
    assert {line.split(",")[3] for line in lines} <= {"pv", "cart", "fav", "buy"}
    meta = json.loads((tmp_path / "work" / "prepared-3000" / "meta.json").read_text())
    assert sum(meta["rows"].values()) + meta["skipped"].get("out_of_window", 0) == 3000
    row = out.read_text().splitlines()[-1]
    assert row.startswith("| 3,000 | ") and "`python benchmarks/prepare.py --lines 3000" in row


def test_flops_table_matches_the_model_and_merging_pays_at_long_histories():
    """benchmarks/flops.py (the 2,000-event FLOPs of docs/paper.md): the count of a percentage-query row is the
    trainer's own `model.dense.flops` for the resolved k, and at 2,000 events merging costs less than no merge."""
    gflops = runpy.run_path(str(ROOT / "benchmarks" / "flops.py"), run_name="benchmark")["gflops"]
    no_merge = gflops("longer_paper", ["model.merge_k=1", "model.merge=concat", "model.head_dim=32",
                                       "model.num_queries=100%"], 2000)
    k4 = gflops("longer_paper", ["model.merge_k=4", "model.merge=concat", "model.num_queries=100%"], 2000)
    assert 0 < k4 < no_merge
    assert gflops("longer_paper", ["model.num_queries=40%"], 2000) == gflops("longer_paper", [], 2000)  # 100 of 250


def test_step_profile_groups_the_step_s_ops(small, tmp_path):
    """benchmarks/step_profile.py on the real Trainer: the groups' shares cover the whole step and the matmuls
    are one of them."""
    main = runpy.run_path(str(ROOT / "benchmarks" / "step_profile.py"), run_name="benchmark")["main"]
    out = tmp_path / "profile.md"
    text = main(["--data", str(small), "--warmup", "1", "--steps", "2", "--workdir", str(tmp_path / "runs"),
                 "--out", str(out), "data.max_len=64", "data.batch_size=32"])
    assert out.read_text() == text
    shares = [float(line.split(" | ")[0].strip("| %")) for line in text.splitlines()
              if line.startswith("| ") and line.split(" | ")[0].strip("| ").endswith("%")]
    assert abs(sum(shares) - 100) < 0.5 and len(shares) >= 4, shares
    assert "| matmul |" in text


def test_dense_step_stock_encoder_is_the_causal_flash_path_and_its_flops_are_counted():
    """The reference of benchmarks/dense_step.py: torch.nn.TransformerEncoder runs the CPU flash kernel with
    is_causal and no mask (the causal path that skips the masked blocks, what the comparison is against), and its
    analytic FLOPs are what FlopCounterMode counts; counting the causal pairs only, attention costs (L + 1) / 2L
    as much."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import FlopCounterMode

    from longer_train.models.flops import transformer_config

    bench = runpy.run_path(str(ROOT / "benchmarks" / "dense_step.py"), run_name="benchmark")
    length, rows = 48, 3
    stock = bench["StockEncoder"](transformer_config(bench["model_config"]([]), length), length)
    x = bench["make_inputs"](torch.full((rows,), length), "cpu", torch.Generator().manual_seed(0))
    flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default
    calls = []

    class Attention(TorchDispatchMode):  # (is_causal, attn_mask) of each flash call
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is flash:
                calls.append((args[4], (kwargs or {}).get("attn_mask")))
            return func(*args, **(kwargs or {}))

    with torch.no_grad(), FlopCounterMode(display=False) as counter, Attention():
        stock(x)
    assert calls == [(True, None)] * len(stock.encoder.layers)
    assert counter.get_total_flops() == stock.flops([length] * rows)
    layers, d = len(stock.encoder.layers), stock.d
    saved = layers * rows * 4 * d * (length * length - length * (length + 1) // 2)
    assert stock.flops([length] * rows) - stock.flops([length] * rows, causal_pairs=True) == saved


def test_long_history_benchmark_times_each_part(tmp_path):
    """benchmarks/long_history.py at tiny sizes: a row per part and length, the parts' FLOPs shares adding up to
    the step's, and the longest / shortest ratio of every part."""
    bench = runpy.run_path(str(ROOT / "benchmarks" / "long_history.py"), run_name="benchmark")
    out = tmp_path / "long.md"
    table = bench["main"](["--threads", "1", "--lengths", "24", "40", "--batch", "2", "--repeats", "1", "--blocks",
                           "1", "--out", str(out), "model.token_dim=8", "model.merge_k=4", "model.num_queries=3",
                           "model.head_dim=16", "model.head_hidden=[16]"])
    assert out.read_text().strip() == table.strip()
    for length in ("24", "40"):
        rows = [line.split(" | ") for line in table.splitlines() if line.startswith(f"| {length} |")]
        assert [row[1] for row in rows] == ["step", "tokens", "cross K/V + attention", "candidate row", "rest",
                                            "cross K/V + attention, blocks of 1 rows"]
        shares = [int(row[4].rstrip("% |")) for row in rows[1:5]]
        assert abs(sum(shares) - 100) <= 2  # rounded percentages of the step's FLOPs
    assert table.rstrip().endswith("x |") and "| rest |" in table.split("GFLOP/s at 40 / at 24")[1]


def test_fuxictr_export_gives_each_row_the_history_of_this_projects_loader(small, tmp_path):
    """benchmarks/peer_fuxictr.py's adapter (no FuxiCTR needed): a row's first seq_len events of its user in
    user_info, looked up in item_info, are the row's whole history as read_inline builds it (ids + 1), newest last;
    its item_index row holds the candidate's item and category and the reserved id for the action."""
    import numpy as np
    import pyarrow.parquet as pq

    from longer_train.data.store import read_inline
    from longer_train.data.vocab import resolve_num_embeddings

    peer = runpy.run_path(str(ROOT / "benchmarks" / "peer_fuxictr.py"), run_name="benchmark")
    cfg = load_config(QUICKSTART, [f"data.root={small}", "data.max_len=100000"])  # whole histories
    resolve_num_embeddings(cfg.data)
    out = tmp_path / "export"
    keys = peer["export"](cfg, out)
    users = pq.read_table(out / "user_info.parquet").column("full_item_seq").to_pylist()
    columns = lambda path: {k: np.asarray(v) for k, v in pq.read_table(path).to_pydict().items()}
    items = columns(out / "item_info.parquet")
    assert (items["item_index"] == np.arange(len(items["item_index"]))).all()  # FuxiCTR looks rows up by position
    none = cfg.data.tables["action"].num_embeddings + 1
    for split in ("train", "test"):
        rows = columns(out / f"{split}.parquet")
        inline = read_inline(small, split, cfg.data).to_pydict()
        assert (rows["label"] == keys[split]["label"]).all() and len(rows["label"]) == len(inline["label"])
        for i in np.linspace(0, len(rows["label"]) - 1, 25).astype(int):
            seq = users[rows["user_index"][i]][: rows["seq_len"][i]]
            for table, column in (("item", "hist_item_id"), ("category", "hist_category_id"),
                                  ("action", "hist_action")):
                assert list(items[table][seq]) == [v + 1 for v in inline[column][i]], (split, i, table)
            at = rows["item_index"][i]
            assert (items["item"][at], items["category"][at], items["action"][at]) == (
                inline["item_id"][i] + 1, inline["category_id"][i] + 1, none)
            assert rows["user_id"][i] == inline["user_id"][i] + 1


def test_hstu_benchmark_compares_against_a_revision(tmp_path):
    """benchmarks/hstu.py at tiny sizes (without the peer, which is not vendored): a row for our HSTU and one for
    the same model at a git revision, the first with its time and memory ratios to the second, and the profile's
    shares of the history attention."""
    bench = runpy.run_path(str(ROOT / "benchmarks" / "hstu.py"), run_name="benchmark")
    out = tmp_path / "hstu.md"
    table = bench["main"](["--threads", "1", "--lengths", "20", "--batch", "2", "--repeats", "1", "--warmup", "0",
                           "--peak-size", "64", "--against", "HEAD", "--profile", "3", "--out", str(out)])
    assert out.read_text().strip().endswith(table.strip())
    rows = [[cell.strip() for cell in line.strip("| ").split("|")] for line in table.splitlines()
            if line.startswith("| 20 |")]
    assert [row[1] for row in rows] == ["HSTU", f"HSTU @ {rows[1][1].split(' @ ')[1]}"]
    assert rows[0][-2].endswith("x") and rows[0][-1].endswith("x")  # time / REV, memory / REV
    assert "- inside `_HistoryAttention`: " in table and "- inside `_HistoryAttentionBackward`: " in table


def test_throughput_settings_are_the_configs():
    """benchmarks/throughput.py's copies of the configs' model, batch and history length (for a python without a
    YAML reader) are what load_config gives, and its data history is longer-data synthetic's."""
    import inspect

    from longer_train.config import ModelConfig

    bench = runpy.run_path(str(ROOT / "benchmarks" / "throughput.py"), run_name="benchmark")
    for path, settings, batch, max_len in bench["CONFIGS"].values():
        cfg = load_config(str(ROOT / path), [])
        assert (ModelConfig(**settings), batch, max_len) == (cfg.model, cfg.data.batch_size, cfg.data.max_len), path
    assert bench["DATA_HISTORY"] == inspect.signature(synthetic.generate).parameters["max_len"].default


def test_throughput_compares_the_trainer_step_with_the_loader(small, tmp_path):
    """With the full training stack: the Trainer's step and the real loader, a verdict per worker count."""
    bench = runpy.run_path(str(ROOT / "benchmarks" / "throughput.py"), run_name="benchmark")
    out = tmp_path / "throughput.md"
    table = bench["main"](["--smoke", "--configs", "quickstart", "--workers", "1", "--data", str(small),
                           "--runs", str(tmp_path / "runs"), "--out", str(out)])
    assert out.read_text() == table
    assert "| quickstart | 8 | 8 | step (Trainer) |" in table and "| quickstart | 8 | 8 | loader | 1 |" in table
    assert "- quickstart, 1 loader worker(s): " in table


def test_activation_memory_benchmark_recompute_is_exact_and_keeps_less(tmp_path):
    """Claim 7's memory table (`make reproduce` writes it): every recomputation row keeps fewer activations for
    backward than the same precision without it, with bitwise equal gradients."""
    out = tmp_path / "activation_memory.md"
    runpy.run_path(str(ROOT / "benchmarks" / "activation_memory.py"), run_name="benchmark")["main"](
        ["--lengths", "48", "--batch", "2", "--device", "cpu", "--out", str(out)])
    rows = [line.split(" | ") for line in out.read_text().splitlines() if line.startswith("| 48 |")]
    saved = {row[1]: float(row[2]) for row in rows}
    assert len(rows) == 7 and "command: `python benchmarks/activation_memory.py" in out.read_text().lower()
    for row in rows:
        if "recompute" in row[1]:
            assert row[-1].startswith("bitwise equal"), row
            assert saved[row[1]] < saved[row[1].split(",")[0]], row
    assert saved["fp32, recompute all"] < 0.5 * saved["fp32"]


def test_serving_benchmark_writes_its_table(tmp_path):
    out = tmp_path / "serving.md"
    runpy.run_path(str(ROOT / "benchmarks" / "serving.py"), run_name="benchmark")["main"](
        ["--length", "32", "--candidates", "1", "3", "--repeats", "1", "--out", str(out)])
    text = out.read_text()
    assert "python benchmarks/serving.py --length 32" in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and "x |" in line]
    assert [row.split(" | ")[0] for row in rows] == ["| 1", "| 3"]


def test_user_cache_benchmark_times_hits_and_appends(capsys):
    """benchmarks/user_cache.py at a tiny size: every variant's scores equal the fresh scorer's, the hit and the
    appends are counted as such (the script asserts both), and the table has a row per variant."""
    runpy.run_path(str(ROOT / "benchmarks" / "user_cache.py"), run_name="benchmark")["main"](
        ["--lengths", "24", "--new-events", "1", "9", "--repeats", "1", "--candidates", "4"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 24 |")]
    assert [row.split(" | ")[1] for row in rows] == ["fresh", "hit", "+1 events", "+9 events"]
