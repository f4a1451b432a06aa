"""Table-wise, row-wise and column-wise plans on 2 ranks, and FSDP2 instead of DDP for the dense layers,
train exactly like one process with the same global batch and seed: the loss of every step agrees to
float tolerance (a wrong all-to-all, a wrong gradient scale over ranks or a mis-sharded optimizer state
would show from the second step on). The item table runs under `oov: oov_row` with a vocabulary smaller
than the data's, so a quarter of the ids share its extra OOV row. Every table, that row included, starts
bitwise the same at every plan and world size (and `init_tables` is checked directly on hand-made shards)."""

import json
import math
from types import SimpleNamespace

import torch
from test_config import QUICKSTART
from torchrun_launch import torchrun

from longer_train.config import DataConfig, TableConfig, load_config
from longer_train.distributed.sharding import init_tables, table_constraints

WORKER = "tests/distributed/parity_worker.py"
STEPS = 4


def _run(nproc, tiny_data, tmp_path, *overrides):
    out = tmp_path / f"losses-{nproc}.json"
    proc = torchrun(nproc, [WORKER, str(tiny_data), str(out), "64", str(STEPS), *overrides])
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text())


def test_two_ranks_match_one_process_for_every_plan(tiny_data, tmp_path):
    # sgd with a large lr: its update is proportional to the gradient, so a wrong embedding-gradient scale
    # over ranks moves the later losses (halving the embedding gradients moved step 2 by 1e-5 when tried)
    sparse = ["optim.sparse_optimizer=sgd", "optim.sparse_lr=100.0"]
    # ids 15000..19999 of the data are beyond this vocabulary: they all use the item table's OOV row
    sparse += ["data.tables.item.oov=oov_row", "data.tables.item.num_embeddings=15000"]
    one = _run(1, tiny_data, tmp_path, *sparse)
    two = _run(2, tiny_data, tmp_path, *sparse)
    assert set(two) == {"table_wise", "row_wise", "column_wise", "row_wise+fsdp"}
    tables = one["table_wise"]["tables"]
    assert set(tables) == {"item", "category", "action", "user", "segment"}
    for variant, result in [*one.items(), *two.items()]:  # every table the same at every plan and world size
        assert result["tables"] == tables, variant
    for variant, result in two.items():
        plan = variant.split("+")[0]
        per_id = {n: t["sharding_type"] for n, t in result["plan"]["tables"].items() if ".per_id." in n}
        assert set(per_id.values()) == {plan}, (variant, result["plan"])
        ranks = {s["rank"] for t in result["plan"]["tables"].values() for s in t["shards"]}
        assert ranks == {0, 1}, f"{variant}: tables should be spread over both ranks, got {ranks}"
        reference = one[plan]["losses"]  # fsdp: against the 1-process DDP run
        assert len(result["losses"]) == STEPS
        worst = max(abs(a - b) for a, b in zip(reference, result["losses"]))
        print(f"{variant}: largest loss difference over {STEPS} steps, 2 ranks vs 1 process: {worst:.1e}")
        for step, (a, b) in enumerate(zip(reference, result["losses"]), start=1):
            assert abs(a - b) <= 2e-6, f"{variant} step {step}: 1 process {a}, 2 ranks {b}"


def test_one_process_plans_every_table_table_wise_unless_the_config_says_otherwise():
    # at world size 1 every plan keeps whole tables on the one rank; row-wise would only add a bucketize of the
    # ids and a permute of the looked-up rows per step. A table's own sharding_type still wins; several ranks
    # leave the choice to the planner
    cfg = load_config(QUICKSTART, ["data.tables.category.sharding_type=column_wise"]).data
    one = table_constraints(cfg, torch.device("cpu"), world_size=1)
    assert {n: c.sharding_types for n, c in one.items()} == {
        "item": ["table_wise"], "category": ["column_wise"], "action": ["table_wise"], "user": ["table_wise"],
        "segment": ["table_wise"]}
    two = table_constraints(cfg, torch.device("cpu"), world_size=2)
    assert two["item"].sharding_types == ["table_wise", "row_wise", "column_wise"]
    assert two["user"].sharding_types == ["table_wise", "column_wise"]  # pooled: no row-wise on CPU
    assert two["category"].sharding_types == ["column_wise"]


def _shards(rows: int, cols: int, cuts: list[tuple[int, int, int, int]]):
    """A sharded table as init_tables sees it: (row0, col0, nrows, ncols) per shard, filled with NaN."""
    shards = [SimpleNamespace(metadata=SimpleNamespace(shard_offsets=[r, c], shard_sizes=[n, k]),
                              tensor=torch.full((n, k), math.nan)) for r, c, n, k in cuts]
    table = SimpleNamespace(local_shards=lambda: shards)
    model = SimpleNamespace(state_dict=lambda: {"sparse.per_id.embeddings.item.weight": table})
    return model, shards


def test_init_tables_draws_every_row_alike_for_every_plan_including_the_oov_row():
    data = DataConfig(tables={"item": TableConfig(num_embeddings=5000, embedding_dim=8, oov="oov_row")})
    rows, cols = 5001, 8  # the shared OOV row is row 5000, past the second 4096-row chunk's start
    plans = {
        "one shard": [(0, 0, rows, cols)],
        "row_wise": [(0, 0, 2501, cols), (2501, 0, 2500, cols)],
        "uneven rows": [(0, 0, 4096, cols), (4096, 0, 904, cols), (5000, 0, 1, cols)],
        "column_wise": [(0, 0, rows, 4), (0, 4, rows, 4)],
    }
    tables = {}
    for plan, cuts in plans.items():
        model, shards = _shards(rows, cols, cuts)
        init_tables(model, data, seed=3)
        full = torch.full((rows, cols), math.nan)
        for (r, c, n, k), shard in zip(cuts, shards):
            full[r:r + n, c:c + k] = shard.tensor
        left = full.isnan().any(1).nonzero().flatten().tolist()
        assert not left, f"{plan}: rows left as TorchRec initialised them: {left}"
        tables[plan] = full
    for plan, full in tables.items():
        assert torch.equal(full, tables["one shard"]), plan
