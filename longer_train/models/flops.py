"""Analytic forward FLOPs of the dense LONGER network per sample (matmuls, 2 FLOPs per multiply-add).

Counts what the model actually computes — the quantity `torch.utils.flop_counter.FlopCounterMode`
measures: behaviour tokens are built for valid events only and InnerTrans runs on the groups holding an
event only (jagged); everything after the merge runs on the batch padded to its longest history.
`longer_flops(cfg, dims, [L])` is the per-sample number to put beside AUC in tables ("GFLOPs/sample" at
history length L). Norms, softmax, activations and embedding lookups are not matmuls and are not counted.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..config import ModelConfig
from .inputs import DenseDims, DenseInputs
from .token_builder import token_flops


def mlp_flops(dims: list[int]) -> int:
    """Forward FLOPs per row of an MLP with these layer widths [in, hidden..., out] (blocks.MLP)."""
    return sum(2 * a * b for a, b in zip(dims[:-1], dims[1:]))


def _block(n_q: int, n_kv: int, width: int, ffn_mult: int, attended: int | None = None) -> int:
    """One attention + FFN block; `attended`: keys each query's scores are computed for (default n_kv)."""
    projections = 2 * n_q * width * width * 2 + 2 * n_kv * width * 2 * width  # q, out; k and v
    attention = 4 * n_q * (n_kv if attended is None else attended) * width  # QK^T and AV over all heads
    ffn = 4 * n_q * ffn_mult * width * width
    return projections + attention + ffn


def longer_flops(cfg: ModelConfig, dims: DenseDims, lengths: list[int]) -> int:
    """Forward FLOPs of one batch whose rows have these history lengths."""
    k, d = cfg.merge_k, cfg.token_dim
    batch = len(lengths)
    padded = -(-max(lengths, default=0) // k) * k
    merged = padded // k
    width = cfg.merge_proj_dim or k * d
    num_globals = cfg.num_cls + int(dims.user + dims.dense > 0) + 1
    queries = cfg.num_queries if cfg.query_selection == "learnable" else min(cfg.num_queries, merged)
    n_q = queries + num_globals  # gathering the queries (uniform, recent_uniform) is not a matmul

    flops = token_flops(sum(lengths), dims.event, d, cfg.time_buckets)  # token builder, valid events only
    if cfg.merge == "inner_trans":  # on the groups holding an event only
        groups = sum(-(-length // k) for length in lengths)
        flops += groups * k * (2 * d * 3 * d + 2 * d * d + 4 * cfg.ffn_mult * d * d)  # qkv, out, ffn
        flops += groups * 4 * k * k * d  # attention inside each group of K
    per_row = 0
    if cfg.merge_proj_dim:
        per_row += 2 * merged * k * d * width
    if dims.user + dims.dense > 0:
        per_row += mlp_flops([dims.user + dims.dense, width, width])
    per_row += mlp_flops([dims.candidate, width, width])
    pairs = dims.match_pairs if cfg.candidate_match != "none" else ()
    readout = cfg.candidate_match == "attention_readout"
    heads = width // cfg.head_dim
    if pairs:  # the candidate's similarity to each merged token, its bias per head and the readout
        per_row += 2 * merged * sum(p.width for p in pairs) + (1 + readout) * 2 * heads * merged * len(pairs)
        # the user rows and the candidate row attend separately, neither computing a score for the
        # candidate's key against the others (its own score is an elementwise product)
        per_row += _block(n_q, merged + num_globals, width, cfg.ffn_mult, attended=merged + num_globals - 1)
    else:
        per_row += _block(n_q, merged + num_globals, width, cfg.ffn_mult)  # cross-causal layer
    per_row += cfg.num_self_layers * _block(n_q, n_q, width, cfg.ffn_mult)
    head_in = width * (num_globals + 1) + dims.candidate + dims.user + dims.dense
    head_in += heads * len(pairs) * readout  # the match readout
    per_row += mlp_flops([head_in, *cfg.head_hidden, 1])
    flops += batch * per_row
    return flops


def transformer_config(cfg: ModelConfig, max_len: int) -> ModelConfig:
    """The paper's Transformer baseline for a LONGER config: the same token width d and depth, no token merge
    (K = 1, width d) and every one of the max_len events a query (configs/experiments/transformer.yaml)."""
    return dataclasses.replace(
        cfg, merge="concat", merge_k=1, merge_proj_dim=None, num_queries=max_len, query_selection="recent",
        head_dim=cfg.token_dim,  # one head of width d; the head count does not change the FLOPs
    )


@torch.no_grad()
def counted_flops(dense: nn.Module, dims: DenseDims, lengths: list[int], seed: int = 0) -> int:
    """Forward FLOPs of `dense` (any model of `models/`) as torch's FlopCounterMode measures them, on random
    inputs with these history lengths: the check of an analytic `flops(lengths)`."""
    g = torch.Generator().manual_seed(seed)
    n, b = sum(lengths), len(lengths)
    x = DenseInputs(
        events=torch.randn(n, dims.event, generator=g), lengths=torch.tensor(lengths),
        time_diff=torch.randint(0, 10**7, (n,), generator=g), candidate=torch.randn(b, dims.candidate, generator=g),
        user=torch.randn(b, dims.user, generator=g), dense=torch.randn(b, dims.dense, generator=g),
    )
    with FlopCounterMode(display=False) as counter:
        dense(x)
    return counter.get_total_flops()
