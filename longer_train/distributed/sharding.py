"""Embedding sharding: TorchRec planner with per-table constraints from the config, then
DistributedModelParallel (even at world size 1). The plan is printed and kept for checkpoints."""

from __future__ import annotations

import os

import torch.distributed as dist
from torch import nn
from torchrec.distributed import DistributedModelParallel
from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology
from torchrec.distributed.types import ShardingPlan

from ..config import DataConfig
from .process_group import DistEnv

# data_parallel tables would be updated by the dense optimizer instead of the fused sparse one
_SHARDED = ["table_wise", "row_wise", "column_wise"]


def table_constraints(data: DataConfig) -> dict[str, ParameterConstraints]:
    return {
        name: ParameterConstraints(
            sharding_types=[table.sharding_type] if table.sharding_type else list(_SHARDED),
            compute_kernels=["fused"],
        )
        for name, table in data.tables.items()
    }


def shard_model(model: nn.Module, data: DataConfig, env: DistEnv) -> tuple[DistributedModelParallel, ShardingPlan]:
    """Plan the embedding tables over all ranks and wrap the model in DMP (dense part data-parallel)."""
    topology = Topology(
        world_size=env.world_size, compute_device=env.device.type,
        local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", env.world_size)),
    )
    planner = EmbeddingShardingPlanner(topology=topology, constraints=table_constraints(data))
    plan = planner.collective_plan(model, pg=dist.GroupMember.WORLD)
    dmp = DistributedModelParallel(module=model, device=env.device, plan=plan)
    return dmp, plan


def plan_summary(plan: ShardingPlan) -> dict[str, dict[str, str]]:
    """{module: {table: 'sharding_type/compute_kernel ranks'}} — printable and JSON-serialisable."""
    summary: dict[str, dict[str, str]] = {}
    for module, params in plan.plan.items():
        for table, spec in params.items():
            ranks = sorted({s.placement.rank() for s in spec.sharding_spec.shards}) if spec.sharding_spec else [0]
            summary.setdefault(module, {})[table] = f"{spec.sharding_type}/{spec.compute_kernel} ranks={ranks}"
    return summary

