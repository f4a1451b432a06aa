"""What every dense model of `models/` takes: the embedding tensors of one batch (`DenseInputs`), the widths
fixed by the feature config (`DenseDims`), and the one helper for their jagged histories (`event_rows`).

Plain torch: `ranking.py` fills `DenseInputs` from the TorchRec lookups, serving fills it from a request.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .candidate_match import MatchPair


@dataclass
class DenseInputs:
    """Embedding tensors for one batch. Histories are jagged: the events of all rows packed row after row,
    oldest first within a row (TorchRec's JaggedTensor values), with per-row lengths."""

    events: Tensor  # [N, D_event] per-event embeddings (item, category, action, ...) concatenated
    lengths: Tensor  # [B] events per row (0 allowed); N = lengths.sum()
    time_diff: Tensor  # [N] request time - event time, seconds
    candidate: Tensor  # [B, D_cand] candidate feature embeddings concatenated
    user: Tensor  # [B, D_user] pooled user/context embeddings (D_user may be 0)
    dense: Tensor  # [B, D_dense] dense features (D_dense may be 0)
    # pad histories to this many events instead of the batch's longest (>= every length): fixed shapes,
    # e.g. for torch.export; padding is masked, so the outputs are the same
    capacity: int | None = None
    # the batch's longest history (= lengths.max()) when the caller knows it on the host (the loader counts it:
    # data/batch.py), so that sizing the padded sequences needs no device-to-host sync — none inside the dense
    # model, which torch.compile can then capture whole (parallel.compile); None: read from `lengths`
    longest: int | None = None
    # the rows' lengths [B] on the host (a CPU tensor; the loader has them), so that the dense model can count
    # the padded positions that hold an event (and work on those only) with no device-to-host sync; not read
    # under torch.compile or torch.export (fixed or dynamic shapes); None: counted from `lengths` if needed
    host_lengths: Tensor | None = None


@dataclass(frozen=True)
class DenseDims:
    """Widths of the inputs, fixed by the feature config."""

    event: int
    candidate: int
    user: int
    dense: int
    max_len: int  # longest history the model sees (position embeddings)
    # candidate/sequence features that share a table (models/candidate_match.py); () = none
    match_pairs: tuple[MatchPair, ...] = ()


def event_rows(lengths: Tensor, num_events: int) -> tuple[Tensor, Tensor]:
    """Packed events (rows of these lengths [B] one after another, oldest first within a row; `num_events` =
    lengths.sum(), passed so no host sync is needed): each event's row [N] and recency [N] (0 = newest).

    The one place the jagged row ids are computed: a forward computes them once and passes them on
    (`token_merge.to_left_padded(..., rows=)`)."""
    lengths = lengths.long()
    row = torch.repeat_interleave(torch.arange(lengths.shape[0], device=lengths.device), lengths,
                                  output_size=num_events)
    recency = torch.cumsum(lengths, 0)[row] - 1 - torch.arange(num_events, device=lengths.device)
    return row, recency
