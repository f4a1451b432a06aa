"""The one training loop: build (model -> sharding -> optimizers -> data) from a Config, then
train -> periodic validation -> final test evaluation -> checkpoint -> results line.

Sparse and dense parameters are updated in the same, fully synchronous step: the sparse optimizer runs
fused inside the embedding backward, the dense AdamW right after.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.utils import clip_grad_norm_

from .components.checkpoint import save_checkpoint
from .components.metrics import ranking_metrics
from .components.optimizer import apply_sparse_optimizer, build_lr_scheduler, build_optimizer
from .components.run_logger import RunLogger
from .config import Config, to_dict
from .data.loader import build_dataloader
from .distributed.process_group import all_gather_arrays, init_distributed
from .distributed.sharding import plan_summary, shard_model
from .models.ranking import build_model


class Trainer:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.env = env = init_distributed(cfg.train.device)
        torch.manual_seed(cfg.train.seed)  # identical dense init on every rank

        model = build_model(cfg)
        self.flops_per_sample = model.dense.flops([cfg.data.max_len])
        apply_sparse_optimizer(model.sparse, cfg.optim, env.device)
        self.model, plan = shard_model(model, cfg.data, env)
        self.plan = plan_summary(plan)
        self.optimizer, self.dense_optimizer = build_optimizer(self.model, cfg.optim)
        self.dense_params = [p for group in self.dense_optimizer.param_groups for p in group["params"]]

        self.train_loader = build_dataloader(
            cfg.data, "train", train=True, seed=cfg.train.seed, rank=env.rank, world_size=env.world_size
        )
        self.steps_per_epoch = self.train_loader.num_batches()  # equal on every rank
        total = cfg.train.epochs * self.steps_per_epoch
        self.total_steps = min(total, cfg.train.max_steps) if cfg.train.max_steps > 0 else total
        self.scheduler = build_lr_scheduler(self.dense_optimizer, cfg.optim, self.total_steps)
        self.step = 0

        name = cfg.train.run_name or f"{cfg.model.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        self.run_dir = Path(cfg.train.output_dir) / name
        self.resolved = to_dict(cfg)
        self.logger = RunLogger(cfg, self.run_dir, self.resolved, enabled=env.is_main)
        dense_count = sum(p.numel() for p in self.dense_params)
        self.logger.print(
            f"longer-train: world_size={env.world_size} device={env.device} backend={env.backend} | "
            f"dense params {dense_count / 1e6:.2f}M | {self.flops_per_sample / 1e9:.3g} GFLOPs/sample "
            f"(forward, max_len={cfg.data.max_len}) | {self.total_steps} steps"
        )
        for module, tables in self.plan.items():
            for table, where in tables.items():
                self.logger.print(f"  sharding {module}.{table}: {where}")

    # ------------------------------------------------------------------------------------------------
    def train(self) -> dict[str, Any]:
        cfg, env = self.cfg, self.env
        eval_every = cfg.train.eval_every or self.steps_per_epoch
        self.model.train()
        self.logger.start_progress(self.total_steps)
        valid: dict[str, float] = {}
        window_loss, window_samples, window_time, train_time, train_samples = 0.0, 0, 0.0, 0.0, 0
        epoch = 0
        while self.step < self.total_steps:
            self.train_loader.set_epoch(epoch)
            for batch in self.train_loader:
                start = time.perf_counter()
                batch = batch.to(env.device, non_blocking=True)
                loss, _ = self.model(batch)
                loss.backward()  # the sparse optimizer steps inside this backward
                max_norm = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf")  # inf: measure only
                grad_norm = clip_grad_norm_(self.dense_params, max_norm)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.scheduler.step()
                self.step += 1
                elapsed = time.perf_counter() - start
                loss_value = loss.item()
                if not math.isfinite(loss_value):
                    raise FloatingPointError(f"training loss is {loss_value} at step {self.step}")
                window_loss += loss_value * batch.size
                window_samples += batch.size
                window_time += elapsed
                train_time += elapsed
                train_samples += batch.size * env.world_size
                self.logger.advance(loss_value)
                if self.step % cfg.train.log_every == 0 or self.step == self.total_steps:
                    stats = {
                        "train/loss": window_loss / window_samples,
                        "train/lr": self.scheduler.get_last_lr()[0],
                        "train/grad_norm": float(grad_norm),
                        "train/samples_per_s": window_samples * env.world_size / max(window_time, 1e-9),
                        "train/epoch": epoch,
                        **{f"data/skipped_{k}": v for k, v in self.train_loader.skipped.items()},
                    }
                    self.logger.log(self.step, stats)
                    window_loss, window_samples, window_time = 0.0, 0, 0.0
                if self.step % eval_every == 0 or self.step == self.total_steps:
                    valid = self.evaluate("valid")
                    self.logger.print(f"step {self.step:>6}  " + _format(valid, "valid"))
                    self.logger.log(self.step, {f"valid/{k}": v for k, v in valid.items()})
                    self.model.train()
                if self.step >= self.total_steps:
                    break
            epoch += 1

        skipped = self.train_loader.skipped_on_all_ranks()  # a collective: every rank calls it
        if skipped:
            counts = ", ".join(f"{k} {v}" for k, v in sorted(skipped.items()))
            self.logger.print(f"data: skipped on all ranks (rows per reason; files): {counts}")
        test = self.evaluate("test")
        self.logger.log(self.step, {f"test/{k}": v for k, v in test.items()})
        checkpoint = self.save() if cfg.train.checkpoint else None
        summary = {
            "run": self.run_dir.name, "model": cfg.model.name, "merge": cfg.model.merge,
            "merge_k": cfg.model.merge_k, "num_queries": cfg.model.num_queries, "max_len": cfg.data.max_len,
            "seed": cfg.train.seed, "steps": self.step, "world_size": env.world_size,
            "train_samples_per_s": train_samples / max(train_time, 1e-9),
            "gflops_per_sample": self.flops_per_sample / 1e9,
            **{f"valid_{k}": v for k, v in valid.items()}, **{f"test_{k}": v for k, v in test.items()},
            "checkpoint": str(checkpoint) if checkpoint else None, "data_root": cfg.data.root,
        }
        self.logger.finish(summary)
        self.logger.print(results_table(summary))
        return summary

    # ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, split: str) -> dict[str, float]:
        """Metrics on a whole split; every rank scores its shard and rank 0 computes on the union."""
        self.model.eval()
        loader = build_dataloader(
            self.cfg.data, split, train=False, seed=0, rank=self.env.rank, world_size=self.env.world_size
        )
        users, labels, logits = [], [], []
        for batch in loader:
            batch = batch.to(self.env.device)
            _, (_, batch_logits, batch_labels) = self.model(batch)
            users.append(batch.user_ids.cpu().numpy())
            labels.append(batch_labels.float().cpu().numpy())
            logits.append(batch_logits.float().cpu().numpy())
        gathered = [all_gather_arrays(np.concatenate(parts)) for parts in (users, labels, logits)]
        return ranking_metrics(*gathered)

    def save(self) -> Path:
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step,
        }
        meta = {"step": self.step, "world_size": self.env.world_size, "plan": self.plan, "config": self.resolved}
        path = save_checkpoint(self.run_dir / "checkpoints", self.step, state, meta, self.env.is_main)
        self.logger.print(f"checkpoint: {path}")
        return path


def _format(metrics: dict[str, float], split: str) -> str:
    keys = ("auc", "gauc", "logloss", "calibration")
    return "  ".join(f"{split}/{k} {metrics[k]:.4f}" for k in keys)


def results_table(summary: dict[str, Any]) -> str:
    """The final metrics as a small fixed-width table."""
    rows = [("metric", "valid", "test")]
    for key in ("auc", "gauc", "logloss", "calibration", "samples"):
        fmt = (lambda v: f"{v:.0f}") if key == "samples" else (lambda v: f"{v:.4f}")
        rows.append((key, fmt(summary.get(f"valid_{key}", float("nan"))), fmt(summary[f"test_{key}"])))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    tail = (
        f"steps {summary['steps']}  train samples/s {summary['train_samples_per_s']:.0f}  "
        f"GFLOPs/sample {summary['gflops_per_sample']:.3g}"
    )
    return "\n".join(["", *lines, tail])
