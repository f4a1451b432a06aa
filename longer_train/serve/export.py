"""`torch.export` programs for serving: `prefill` (user side -> flat cache tensors) and `score` (cache +
candidates -> logits), with the number of users, history events and candidates dynamic. Histories are
padded to a fixed capacity inside the program (shapes must not depend on data); padding is masked, so
scores equal the eager model's (tests/serve/test_export.py)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn
from torch.export import Dim, ExportedProgram

from ..models.inputs import DenseInputs
from ..models.longer import Longer
from .kv_cache import UserCache, prefill, score


def _flatten(cache: UserCache) -> tuple[Tensor, ...]:
    kv = [t for pair in cache.keys_values for t in pair]
    match = () if cache.match_groups is None else (cache.match_groups,)
    return (*kv, *cache.num_pad, cache.seq_mean, cache.user_globals, cache.user, cache.dense, *match)


def _unflatten(tensors: tuple[Tensor, ...], layers: int) -> UserCache:
    kv = [(tensors[2 * i], tensors[2 * i + 1]) for i in range(layers)]
    pads = list(tensors[2 * layers : 3 * layers])
    seq_mean, user_globals, user, dense, *match = tensors[3 * layers :]
    return UserCache(kv, pads, seq_mean, user_globals, user, dense, *match)


class PrefillProgram(nn.Module):
    def __init__(self, model: Longer, capacity: int) -> None:
        super().__init__()
        self.model, self.capacity = model, capacity

    def forward(self, events: Tensor, lengths: Tensor, time_diff: Tensor, user: Tensor, dense: Tensor):
        x = DenseInputs(events, lengths, time_diff, user[:, :0], user, dense, capacity=self.capacity)
        return _flatten(prefill(self.model, x))


class ScoreProgram(nn.Module):
    def __init__(self, model: Longer) -> None:
        super().__init__()
        self.model = model
        self.layers = 1 + len(model.attention.self_layers)

    def forward(self, candidates: Tensor, *cache: Tensor) -> Tensor:
        return score(self.model, _unflatten(cache, self.layers), candidates)


def export_programs(model: Longer, example: DenseInputs, candidates: Tensor, capacity: int):
    """(prefill, score) ExportedPrograms; `example` and `candidates` [U, C, D_cand] fix only the widths."""
    model = model.eval()
    users, events, cands = Dim("users", min=1), Dim("events", min=1), Dim("candidates", min=1)
    prefill_args = (example.events, example.lengths, example.time_diff, example.user, example.dense)
    prefill_program = torch.export.export(
        PrefillProgram(model, capacity), prefill_args, strict=False,
        dynamic_shapes=({0: events}, {0: users}, {0: events}, {0: users}, {0: users}),
    )
    cache = PrefillProgram(model, capacity)(*prefill_args)
    score_program = torch.export.export(
        ScoreProgram(model), (candidates, *cache), strict=False,
        dynamic_shapes=({0: users, 1: cands}, tuple({0: users} for _ in cache)),  # *cache is one argument
    )
    return prefill_program, score_program


def save_programs(programs: tuple[ExportedProgram, ExportedProgram], out: str | Path) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.export.save(programs[0], out / "prefill.pt2")
    torch.export.save(programs[1], out / "score.pt2")
