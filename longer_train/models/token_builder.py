"""Behaviour tokens: per-event features + log-bucketised time difference -> MLP -> width d, plus a
learnable absolute position embedding (LONGER: time difference concatenated, position added).

Which time and position (`event_time_position`): the paper's, each event's time before the request and its
recency (0 = the newest), or with `model.stream_tokens` (this project's extension, docs/serving.md) its time since
the previous event and its position from the oldest, which newer events and the request time do not change."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .blocks import MLP


def time_diff_bucket(seconds: Tensor, num_buckets: int, dtype: torch.dtype = torch.long, overwrite: bool = False
                     ) -> Tensor:
    """Log-bucketise a non-negative time difference: bucket = floor(2 * log2(1 + seconds)), capped, as `dtype`.

    Two buckets per doubling: 1 min -> 11, 1 hour -> 23, 1 day -> 32, 1 year -> 49. `seconds` may be integer or
    a float holding whole seconds (rounded to float32 either way). In place on one float32 copy, or with
    `overwrite` on `seconds` itself, which must then be float32 (HSTU bucketises every pair of a batch); the
    conversion truncates, which is the floor of these non-negative values.
    """
    if overwrite and seconds.dtype != torch.float32:
        raise TypeError(f"time_diff_bucket(overwrite=True) needs float32 seconds, got {seconds.dtype}")
    buckets = seconds if overwrite else seconds.to(torch.float32, copy=True)
    return buckets.clamp_(min=0).add_(1.0).log2_().mul_(2.0).clamp_(max=num_buckets - 1).to(dtype)


def event_time_position(time_diff: Tensor, lengths: Tensor, rows: tuple[Tensor, Tensor], stream: bool,
                        ) -> tuple[Tensor, Tensor]:
    """Each packed event's time feature [N] (seconds) and position [N] for `TokenBuilder`; `rows`: the events'
    (row, recency) (`inputs.event_rows`). Paper: (request time - event time, recency). `stream`: (event time -
    the previous event's time of its row, 0 for a row's oldest; its index from the row's oldest event), exact
    in integers, since time_diff holds int64 seconds (data/batch.py)."""
    row, recency = rows
    if not stream:
        return time_diff, recency
    index = lengths.long()[row] - 1 - recency  # from the oldest: 0, 1, ...
    previous = torch.roll(time_diff, 1)  # the packed predecessor's (another row's for index 0: masked)
    return torch.where(index == 0, torch.zeros_like(time_diff), previous - time_diff), index


class TokenBuilder(nn.Module):
    """Packed events of all rows [N, D_event] -> behaviour tokens [N, d] (no work on padding)."""

    def __init__(self, event_dim: int, token_dim: int, time_buckets: int, max_positions: int) -> None:
        super().__init__()
        self.time_buckets = time_buckets
        self.time_embedding = nn.Embedding(time_buckets, token_dim)
        self.mlp = MLP(event_dim + token_dim, [token_dim * 2], token_dim)
        # the paper's position 0 is the newest event, so a given recency has one embedding whatever the length
        # (`event_time_position`)
        self.position_embedding = nn.Embedding(max_positions, token_dim)

    def forward(self, events: Tensor, time_diff: Tensor, position: Tensor) -> Tensor:
        # events [N, D_event]; time_diff [N] seconds; position [N] (`event_time_position`: the paper's recency,
        # 0 = the row's newest event)
        # MLP([events | time embedding]) + position embedding, with every per-event addition folded into a matmul:
        # the first layer is split by its input columns, its time-embedding columns and bias applied once per
        # bucket ([buckets, 2d]) and looked up per event as the addmm's input (no [N, D_event + d] concatenation,
        # no separate add or [N, 2d] bias-gradient sum); the position embedding, plus the last layer's bias, is
        # looked up per event as the last addmm's input
        first, act, last = self.mlp.net
        split = events.shape[-1]
        per_bucket = torch.addmm(first.bias, self.time_embedding.weight, first.weight[:, split:].t())  # [buckets, 2d]
        bucket = time_diff_bucket(time_diff, self.time_buckets)
        # lookups by index_select, not F.embedding: the same rows; its backward is an index_add, which on CPU ran
        # faster than embedding's backward over a batch's ~10^5 events (an ad-hoc timing, not a repo benchmark)
        hidden = torch.addmm(per_bucket.index_select(0, bucket), events, first.weight[:, :split].t())
        position = position.clamp(max=self.position_embedding.num_embeddings - 1)
        per_position = self.position_embedding.weight + last.bias  # [positions, d]
        return torch.addmm(per_position.index_select(0, position), act(hidden), last.weight.t())


def token_flops(num_events: int, event_dim: int, token_dim: int, time_buckets: int) -> int:
    """Forward matmul FLOPs of `TokenBuilder` over `num_events` events: the first layer's event columns and
    the second layer per event, the time-embedding columns once per bucket."""
    d = token_dim
    return num_events * (2 * event_dim * 2 * d + 2 * 2 * d * d) + 2 * time_buckets * d * 2 * d
