"""Run under torchrun by test_sharding_parity.py: a few training steps on fixed global batches, split
evenly over the ranks, for each variant (sharding plan, dense parallelism); rank 0 writes the global mean
loss of every step as JSON.

usage: torchrun --nproc_per_node=W parity_worker.py DATA_ROOT OUT_JSON GLOBAL_BATCH STEPS [overrides...]
"""

import json
import logging
import sys
import warnings
from pathlib import Path

import torch.distributed as dist

from longer_train.config import load_config
from longer_train.data.batch import collate
from longer_train.data.store import read_inline
from longer_train.distributed.process_group import destroy_distributed
from longer_train.trainer import Trainer

QUICKSTART = Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml"
# name -> (plan of the per-id tables, plan of the pooled tables, parallel.dense); pooled (user-role) tables
# cannot be row-wise on CPU, so they stay table-wise in the row-wise variants
VARIANTS = {
    "table_wise": ("table_wise", "table_wise", "ddp"),
    "row_wise": ("row_wise", "table_wise", "ddp"),
    "column_wise": ("column_wise", "column_wise", "ddp"),
    "row_wise+fsdp": ("row_wise", "table_wise", "fsdp"),
}


def main() -> None:
    root, out, global_batch, steps, *overrides = sys.argv[1:]
    global_batch, steps = int(global_batch), int(steps)
    warnings.filterwarnings("ignore")
    logging.getLogger().setLevel(logging.ERROR)
    results = {}
    for name, (plan, pooled_plan, dense) in VARIANTS.items():
        tables = {"item": plan, "category": plan, "action": plan, "user": pooled_plan, "segment": pooled_plan}
        cfg = load_config(QUICKSTART, [
            f"data.root={root}", "data.max_len=64", "data.num_workers=0", "train.checkpoint=false",
            "train.resume=never", "logging.wandb_mode=disabled", "train.progress_bar=false",
            f"train.output_dir={Path(out).parent}/runs", f"train.run_name=parity-{name}", f"parallel.dense={dense}",
            *[f"data.tables.{t}.sharding_type={p}" for t, p in tables.items()], *overrides,
        ])
        trainer = Trainer(cfg)
        rank, world = trainer.env.rank, trainer.env.world_size
        local = global_batch // world
        rows = read_inline(root, "train", cfg.data).slice(0, global_batch * steps)
        losses = []
        for step in range(steps):
            part = rows.slice(step * global_batch + rank * local, local)
            output = trainer._plain_step(iter([collate(part, cfg.data)]))
            loss = output[0].detach().clone()
            dist.all_reduce(loss)
            losses.append(loss.item() / world)
        results[name] = {"losses": losses, "plan": trainer.plan}
        dist.barrier()
    if dist.get_rank() == 0:
        Path(out).write_text(json.dumps(results))
    destroy_distributed()


if __name__ == "__main__":
    main()
