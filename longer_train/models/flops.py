"""Analytic forward FLOPs of the dense LONGER network per sample (matmuls, 2 FLOPs per multiply-add).

Counts what the model actually computes — the quantity `torch.utils.flop_counter.FlopCounterMode`
measures in eager mode: behaviour tokens are built for valid events only and InnerTrans runs on the groups
holding an event only (jagged); after the merge, the projections and FFNs run on the valid tokens only
(merged tokens that hold an event, valid query slots, globals) and attention scores on the batch padded to
its longest history. (Under torch.compile or torch.export every padded position is computed too.)
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


def _block(n_q: int, n_kv: int, width: int, ffn_mult: int, attended: int | None = None,
           live_q: int | None = None, live_kv: int | None = None) -> int:
    """One attention + FFN block: n_q queries, n_kv keys per query row (padded layout); `attended`: keys each
    query's scores are computed for (default n_kv); `live_q` / `live_kv`: the queries / keys that are not
    padding, the only ones projected and passed through the FFN (default n_q / n_kv)."""
    live_q, live_kv = n_q if live_q is None else live_q, n_kv if live_kv is None else live_kv
    projections = 2 * live_q * width * width * 2 + 2 * live_kv * width * 2 * width  # q, out; k and v
    attention = 4 * n_q * (n_kv if attended is None else attended) * width  # QK^T and AV over all heads
    ffn = 4 * live_q * ffn_mult * width * width
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
    row_groups = [-(-length // k) for length in lengths]  # valid merged tokens per row
    live_kv = sum(row_groups) + batch * num_globals  # valid keys of the cross layer (over the batch)
    live_q = batch * num_globals + sum(  # valid query slots: learned ones unless the history is empty
        (queries if g else 0) if cfg.query_selection == "learnable" else min(queries, g) for g in row_groups
    )

    flops = token_flops(sum(lengths), dims.event, d, cfg.time_buckets)  # token builder, valid events only
    if cfg.merge == "inner_trans":  # on the groups holding an event only
        groups = sum(row_groups)
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
    attended = merged + num_globals - 1 if pairs else None
    # cross-causal layer, then the self-causal ones, over the whole batch: rows differ in their valid tokens
    flops += _block(batch * n_q, merged + num_globals, width, cfg.ffn_mult, attended, live_q=live_q, live_kv=live_kv)
    flops += cfg.num_self_layers * _block(batch * n_q, n_q, width, cfg.ffn_mult, live_q=live_q, live_kv=live_q)
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
