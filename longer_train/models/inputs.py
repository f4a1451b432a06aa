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
    # How the histories are padded: one contract for every caller. `pad_to`: the padded length [B, pad_to], chosen
    # by the caller and >= every length: the loader's count of the batch's longest (data/batch.py: no
    # device-to-host sync, so torch.compile captures the dense model whole), serving's batch's longest, or
    # torch.export's fixed capacity (shapes that do not depend on the data). Padding is masked: any pad_to >= the
    # longest gives the same outputs. None: the model reads lengths.max() (one host sync).
    pad_to: int | None = None
    # the rows' lengths [B] on the host (a CPU tensor; the loader and serving have them): with them the model
    # computes only the padded positions that hold an event (e.g. InnerTrans groups); not read under
    # torch.compile / torch.export, whose graphs cannot depend on them. None: every position is computed.
    host_lengths: Tensor | None = None

    def padding(self) -> tuple[int, Tensor | None]:
        """The one reading of the contract: (padded length, the rows' lengths on the host or None). Traced
        (torch.compile, torch.export): `pad_to` and no host lengths. Eager: `pad_to` or the longest of the host
        lengths, counting them with one sync where the caller gave neither."""
        traced = torch.compiler.is_compiling()
        host = None if traced else self.host_lengths
        if self.pad_to is not None:
            return self.pad_to, None if host is None else host.long()
        if host is None:  # the one device-to-host sync
            host = self.lengths.long().cpu()
            return (int(host.max()) if host.numel() else 0), None if traced else host
        host = host.long()
        return (int(host.max()) if host.numel() else 0), host


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
