"""The training batch: KeyedJaggedTensors for the embedding tables plus dense tensors.

Built inside the data-loader workers from Arrow record batches (`collate`), moved to the device as one
object (`Pipelineable`, so TorchRec's train pipelines can copy it ahead of compute).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import torch
from torch import Tensor
from torchrec import KeyedJaggedTensor
from torchrec.streamable import Pipelineable

from ..config import DataConfig
from .oov import map_ids


@dataclass
class Batch(Pipelineable):
    per_id: KeyedJaggedTensor  # candidate features (one id per row) then sequence features (histories)
    pooled: KeyedJaggedTensor | None  # user/context features, sum-pooled
    time_diff: Tensor  # [N] request time - event time (seconds), aligned with the sequence features' values
    dense: Tensor  # [B, D_dense] float32
    labels: Tensor  # [B] float32
    user_ids: Tensor  # [B] int64, groups GAUC
    # rows the loader dropped (data.bad_rows: skip) since the previous batch of the same reader, per reason
    skipped: dict[str, int] = field(default_factory=dict)
    # each row's history length (events kept) [B] int64, kept on the host (CPU) when the batch moves to the
    # device, so that the dense model sizes its padded sequences and counts the positions that hold an event
    # with no device-to-host sync (DenseInputs.pad_to / host_lengths); None: not counted
    history_lengths: Tensor | None = None

    @property
    def longest(self) -> int | None:
        """The batch's longest history (events kept), from the host-side lengths; None: not counted."""
        if self.history_lengths is None:
            return None
        return int(self.history_lengths.max()) if self.history_lengths.numel() else 0

    def to(self, device: torch.device, non_blocking: bool = False) -> "Batch":
        return Batch(
            per_id=self.per_id.to(device, non_blocking=non_blocking),
            pooled=self.pooled.to(device, non_blocking=non_blocking) if self.pooled is not None else None,
            time_diff=self.time_diff.to(device, non_blocking=non_blocking),
            dense=self.dense.to(device, non_blocking=non_blocking),
            labels=self.labels.to(device, non_blocking=non_blocking),
            user_ids=self.user_ids.to(device, non_blocking=non_blocking),
            skipped=self.skipped,
            history_lengths=self.history_lengths,  # stays on the host
        )

    def record_stream(self, stream: torch.Stream) -> None:
        self.per_id.record_stream(stream)
        if self.pooled is not None:
            self.pooled.record_stream(stream)
        for t in (self.time_diff, self.dense, self.labels, self.user_ids):
            t.record_stream(stream)

    def pin_memory(self) -> "Batch":
        return Batch(
            per_id=self.per_id.pin_memory(),
            pooled=self.pooled.pin_memory() if self.pooled is not None else None,
            time_diff=self.time_diff.pin_memory(),
            dense=self.dense.pin_memory(),
            labels=self.labels.pin_memory(),
            user_ids=self.user_ids.pin_memory(),
            skipped=self.skipped,
            history_lengths=self.history_lengths,  # stays on the host
        )

    @property
    def size(self) -> int:
        return int(self.labels.shape[0])


def _list_column(table: pa.Table, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(values, offsets) of a list<int64> column; offsets index into values."""
    arr = table.column(name).combine_chunks()
    return arr.values.to_numpy(zero_copy_only=False), arr.offsets.to_numpy()


def _recent(table: pa.Table, name: str, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """The most recent `max_len` values of every row of a list column: (packed values, kept lengths)."""
    values, offsets = _list_column(table, name)
    keep = np.minimum(np.diff(offsets), max_len)
    out_start = np.cumsum(keep) - keep
    idx = np.arange(int(keep.sum()), dtype=np.int64) + np.repeat(offsets[1:] - keep - out_start, keep)
    return values[idx].astype(np.int64, copy=False), keep


def _int_column(table: pa.Table, name: str) -> np.ndarray:
    return table.column(name).to_numpy().astype(np.int64)  # a writable copy


def _labels(table: pa.Table, data: DataConfig) -> Tensor:
    if data.label in table.column_names:
        return torch.from_numpy(table.column(data.label).to_numpy().astype(np.float32))
    # scoring requests carry no label (validated with labelled=False); nothing reads these placeholders
    return torch.zeros(table.num_rows, dtype=torch.float32)


def collate(table: pa.Table, data: DataConfig) -> Batch:
    """Arrow rows (already validated) -> Batch, keeping the most recent `data.max_len` events per row and
    mapping ids beyond a table's vocabulary by its OOV policy (`oov.map_ids`)."""
    rows = table.num_rows
    roles = {role: data.columns(role) for role in ("candidate", "sequence", "user", "dense")}
    table_of = {f.name: data.tables[f.table] for f in data.features if f.table is not None}

    hist_ts, keep = _recent(table, data.hist_timestamp, data.max_len)
    values, lengths = [], []
    for name in roles["candidate"]:
        values.append(map_ids(_int_column(table, name), table_of[name]))
        lengths.append(np.ones(rows, dtype=np.int64))
    for name in roles["sequence"]:
        values.append(map_ids(_recent(table, name, data.max_len)[0], table_of[name]))
        lengths.append(keep)
    per_id = KeyedJaggedTensor(
        keys=roles["candidate"] + roles["sequence"],
        values=torch.from_numpy(np.concatenate(values)),
        lengths=torch.from_numpy(np.concatenate(lengths).astype(np.int32)),
    )

    pooled = None
    if roles["user"]:
        values, lengths = [], []
        for name in roles["user"]:
            if pa.types.is_list(table.schema.field(name).type):
                col_values, col_offsets = _list_column(table, name)
                values.append(map_ids(col_values[col_offsets[0] : col_offsets[-1]], table_of[name]))
                lengths.append(np.diff(col_offsets))
            else:
                values.append(map_ids(_int_column(table, name), table_of[name]))
                lengths.append(np.ones(rows, dtype=np.int64))
        pooled = KeyedJaggedTensor(
            keys=roles["user"],
            values=torch.from_numpy(np.concatenate(values)),
            lengths=torch.from_numpy(np.concatenate(lengths).astype(np.int32)),
        )

    time_diff = np.repeat(_int_column(table, data.timestamp), keep) - hist_ts

    dense_columns = [table.column(n).to_numpy().astype(np.float32) for n in roles["dense"]]
    dense = np.stack(dense_columns, axis=1) if dense_columns else np.zeros((rows, 0), np.float32)
    return Batch(
        per_id=per_id,
        pooled=pooled,
        time_diff=torch.from_numpy(time_diff),
        dense=torch.from_numpy(dense),
        labels=_labels(table, data),
        user_ids=torch.from_numpy(_int_column(table, data.user_id)),
        history_lengths=torch.from_numpy(np.asarray(keep, dtype=np.int64)),
    )
