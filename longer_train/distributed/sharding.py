"""Sharding: TorchRec's planner places the embedding tables with per-table constraints from the config
(sharding type, compute kernel), then DistributedModelParallel (even at world size 1) shards them and
wraps the dense layers in DDP or FSDP2 (`parallel.dense`). The plan, with a per-rank memory estimate, is
printed and saved with every checkpoint."""

from __future__ import annotations

import math
import os
import zlib

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torchrec.distributed import DistributedModelParallel
from torchrec.distributed.model_parallel import DataParallelWrapper, DefaultDataParallelWrapper
from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology
from torchrec.distributed.types import ShardingEnv, ShardingPlan

from ..config import Config, ConfigError, DataConfig
from ..data.oov import embedding_rows
from ..machine import table_bytes
from .parallelize import compute_units
from .process_group import DistEnv

# data_parallel tables would be updated by the dense optimizer instead of the fused sparse one
_SHARDED = ["table_wise", "row_wise", "column_wise"]
_CUDA_ONLY_KERNELS = ("fused_uvm", "fused_uvm_caching", "key_value")


def table_constraints(data: DataConfig, device: torch.device, world_size: int) -> dict[str, ParameterConstraints]:
    """Per table, the sharding types and compute kernel the planner may choose. A table without
    `sharding_type` may be sharded any way (`_SHARDED`) — except at world size 1, where every way puts the whole
    table on the one rank, and table-wise is the one with no per-step work for it: row-wise would bucketize the
    ids and permute the looked-up rows back (an index_select forward, an index_add over every looked-up row
    backward) to move nothing anywhere."""
    pooled = {f.table for f in data.features if f.role == "user"}
    constraints = {}
    for name, table in data.tables.items():
        if table.compute_kernel in _CUDA_ONLY_KERNELS and device.type != "cuda":
            raise ConfigError(
                f"config key 'data.tables.{name}.compute_kernel': {table.compute_kernel!r} needs CUDA "
                f"(this run is on {device.type}); use 'fused'"
            )
        # TorchRec shards pooled (EmbeddingBagCollection) tables row-wise only on CUDA
        allowed = _SHARDED if name not in pooled or device.type == "cuda" else ["table_wise", "column_wise"]
        if table.sharding_type and table.sharding_type not in allowed:
            raise ConfigError(
                f"config key 'data.tables.{name}.sharding_type': {table.sharding_type!r} is not available for a "
                f"pooled (user-role) table on {device.type}; use one of {allowed}"
            )
        default = ["table_wise"] if world_size == 1 else list(allowed)
        constraints[name] = ParameterConstraints(
            sharding_types=[table.sharding_type] if table.sharding_type else default,
            compute_kernels=[table.compute_kernel],
        )
    return constraints


class FSDPWrapper(DataParallelWrapper):
    """FSDP2 for the dense layers: `fully_shard` on every unit the dense model declares for it (its transformer
    blocks; models/units.py), then on the dense network as the root. The sharded embedding module is left to
    TorchRec."""

    def wrap(self, dmp: DistributedModelParallel, env: ShardingEnv, device: torch.device) -> None:
        mesh = init_device_mesh(device.type, (env.world_size,))
        dense = dmp._dmp_wrapped_module.dense
        for module in compute_units(dense).shard:
            fully_shard(module, mesh=mesh)
        fully_shard(dense, mesh=mesh)


def shard_model(model: nn.Module, cfg: Config, env: DistEnv) -> tuple[DistributedModelParallel, ShardingPlan]:
    """Plan the embedding tables over all ranks and wrap the model in DMP (dense part DDP or FSDP2)."""
    topology = Topology(
        world_size=env.world_size, compute_device=env.device.type,
        local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", env.world_size)),
    )
    constraints = table_constraints(cfg.data, env.device, env.world_size)
    planner = EmbeddingShardingPlanner(topology=topology, constraints=constraints)
    plan = planner.collective_plan(model, pg=dist.GroupMember.WORLD)
    wrapper = FSDPWrapper() if cfg.parallel.dense == "fsdp" else DefaultDataParallelWrapper()
    dmp = DistributedModelParallel(module=model, device=env.device, plan=plan, data_parallel_wrapper=wrapper)
    return dmp, plan


_INIT_CHUNK_ROWS = 4096


@torch.no_grad()
def init_tables(dmp: DistributedModelParallel, data: DataConfig, seed: int) -> None:
    """Re-initialise every embedding table the same way whatever the plan and world size: TorchRec
    initialises each shard from its rank's RNG, so a 2-rank run would otherwise start from different
    tables than a 1-process run. Rows are drawn in fixed chunks from generators seeded by (seed, table,
    chunk), so each rank generates only the rows it holds. Every row of the table is drawn, the shared
    OOV row under `oov: oov_row` included. Distribution: U(-b, b) with the table's `init_bound` b, by
    default TorchRec's sqrt(1/rows)."""
    for key, value in dmp.state_dict().items():
        if not hasattr(value, "local_shards") or not key.endswith(".weight"):
            continue
        table = key.split(".")[-2]
        rows, dim = embedding_rows(data.tables[table]), data.tables[table].embedding_dim
        bound = data.tables[table].init_bound or math.sqrt(1.0 / rows)
        for shard in value.local_shards():
            (row0, col0), (nrows, ncols) = shard.metadata.shard_offsets, shard.metadata.shard_sizes
            out = shard.tensor
            for chunk in range(row0 // _INIT_CHUNK_ROWS, (row0 + nrows - 1) // _INIT_CHUNK_ROWS + 1):
                start = chunk * _INIT_CHUNK_ROWS
                size = min(_INIT_CHUNK_ROWS, rows - start)
                gen = torch.Generator().manual_seed(zlib.crc32(f"{seed}/{table}/{chunk}".encode()))
                block = torch.empty(size, dim).uniform_(-bound, bound, generator=gen)
                lo, hi = max(start, row0), min(start + size, row0 + nrows)
                out[lo - row0 : hi - row0].copy_(block[lo - start : hi - start, col0 : col0 + ncols])


def plan_summary(plan: ShardingPlan, cfg: Config) -> dict:
    """The plan as JSON: per table its sharding type, kernel and shards, and per rank an estimate of the
    bytes the tables and their fused optimizer state take (fp32 weights)."""
    tables: dict[str, dict] = {}
    per_rank: dict[int, int] = {}
    for module, params in plan.plan.items():
        for table, spec in params.items():
            shards = []
            for shard in spec.sharding_spec.shards if spec.sharding_spec else []:
                rows, cols = shard.shard_sizes
                rank = shard.placement.rank()
                per_rank[rank] = per_rank.get(rank, 0) + table_bytes(rows, cols, cfg.optim.sparse_optimizer)
                shards.append({"rank": rank, "offsets": list(shard.shard_offsets), "sizes": [rows, cols]})
            tables[f"{module}.{table}"] = {
                "sharding_type": spec.sharding_type, "compute_kernel": spec.compute_kernel, "shards": shards,
            }
    return {"tables": tables, "bytes_per_rank": {str(r): per_rank[r] for r in sorted(per_rank)}}


def format_plan(summary: dict) -> list[str]:
    lines = []
    for name, table in summary["tables"].items():
        ranks = sorted({s["rank"] for s in table["shards"]})
        lines.append(f"  sharding {name}: {table['sharding_type']}/{table['compute_kernel']} ranks={ranks}")
    memory = ", ".join(f"rank {r}: {b / 2**20:.1f} MiB" for r, b in summary["bytes_per_rank"].items())
    lines.append(f"  embedding memory estimate (weights + optimizer state): {memory}")
    return lines
