"""Optimizers: the sparse optimizer fused into the embedding backward (FBGEMM), AdamW for every dense
parameter, and the warmup + decay learning-rate schedule of the dense optimizer."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter
from torchrec.optim.rowwise_adagrad import RowWiseAdagrad

from ..config import ConfigError, OptimConfig

_SPARSE = {
    "rowwise_adagrad": (RowWiseAdagrad, lambda c: {"lr": c.sparse_lr, "eps": c.sparse_eps}),
    "adagrad": (torch.optim.Adagrad, lambda c: {"lr": c.sparse_lr, "eps": c.sparse_eps}),
    "sgd": (torch.optim.SGD, lambda c: {"lr": c.sparse_lr}),
    "adam": (torch.optim.Adam, lambda c: {"lr": c.sparse_lr, "eps": c.sparse_eps}),
}


def apply_sparse_optimizer(embeddings: nn.Module, cfg: OptimConfig, device: torch.device) -> None:
    """Fuse the configured optimizer into the backward of the embedding tables (before sharding)."""
    if cfg.sparse_optimizer == "adam" and device.type != "cuda":
        raise ConfigError(
            "config key 'optim.sparse_optimizer': FBGEMM's fused Adam runs only on CUDA; on CPU use "
            "rowwise_adagrad, adagrad or sgd"
        )
    cls, kwargs = _SPARSE[cfg.sparse_optimizer]
    apply_optimizer_in_backward(cls, embeddings.parameters(), kwargs(cfg))


def adamw_kernel(params: list[Tensor]) -> dict[str, bool]:
    """The fastest AdamW implementation for these parameters: `fused` (one kernel over every tensor) on CPU
    and CUDA, else `foreach`. torch's default on CPU is the per-parameter loop, a dozen small ops per tensor,
    whose overhead dominates for a model of many small tensors such as these."""
    devices = {p.device.type for p in params}
    if devices <= {"cpu", "cuda"} and all(p.dtype.is_floating_point for p in params):
        return {"fused": True}
    return {"foreach": True}


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> tuple[CombinedOptimizer, KeyedOptimizerWrapper]:
    """(optimizer over sparse + dense state, the dense AdamW alone for scheduling and clipping)."""
    dense_params = dict(in_backward_optimizer_filter(model.named_parameters()))
    kernel = adamw_kernel(list(dense_params.values()))
    dense = KeyedOptimizerWrapper(
        dense_params, lambda params: torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **kernel)
    )
    return CombinedOptimizer([("sparse", model.fused_optimizer), ("dense", dense)]), dense


def lr_lambda(cfg: OptimConfig, total_steps: int):
    """Multiplier of the peak lr at a step: linear warmup, then cosine / linear decay to min_lr_ratio."""

    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.decay == "constant":
            return 1.0
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
        shape = 0.5 * (1 + math.cos(math.pi * progress)) if cfg.decay == "cosine" else 1 - progress
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * shape

    return factor


def build_lr_scheduler(dense: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int):
    return torch.optim.lr_scheduler.LambdaLR(dense, lr_lambda(cfg, total_steps))
