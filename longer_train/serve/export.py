"""`torch.export` programs of the whole scorer, embedding lookups included, for every model (its scoring
interface, models/user_state.py): `prefill.pt2` (a user's raw ids -> the state tensors) and `score.pt2` (the state
+ candidates' raw ids -> click probabilities), the number of users, history events, user ids and candidates
dynamic. Loading and running them needs torch only (`torch.export.load(path).module()`).

    prefill(sequence [N, S] int64, lengths [U], time_diff [N], user [U, F_user, P] int64, dense [U, D_dense])
        -> the state's tensors, in the order `score` takes them
    score(candidates [U, C, F_cand] int64, *state) -> probabilities [U, C]

`sequence` holds the histories packed user after user, oldest event first, one column per sequence feature
(config order); `time_diff` is request time - event time in seconds; `user` holds each user feature's ids
padded with -1. Ids are mapped by the tables' OOV policy as in training; the programs do not validate them (an
id beyond the vocabulary of an `error` table fails the lookup). Histories are padded to a fixed capacity inside
the program (shapes must not depend on data); padding is masked, so scores equal the eager scorer's
(tests/serve/test_export.py).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn
from torch.export import Dim, ExportedProgram

from ..models.inputs import DenseInputs
from ..models.user_state import ServableModel, UserState
from .lookup import EmbeddingLookup


class PrefillProgram(nn.Module):
    def __init__(self, lookup: EmbeddingLookup, dense: ServableModel, capacity: int) -> None:
        super().__init__()
        self.lookup, self.dense, self.capacity = lookup, dense, capacity

    def state(self, sequence: Tensor, lengths: Tensor, time_diff: Tensor, user: Tensor, dense: Tensor) -> UserState:
        events = self.lookup.events(sequence)
        x = DenseInputs(events, lengths, time_diff, events.new_zeros((lengths.shape[0], 0)), self.lookup.users(user),
                        dense, pad_to=self.capacity)
        return self.dense.prefill(x)

    def forward(self, sequence: Tensor, lengths: Tensor, time_diff: Tensor, user: Tensor, dense: Tensor):
        return tuple(self.state(sequence, lengths, time_diff, user, dense).tensors.values())


class ScoreProgram(nn.Module):
    def __init__(self, lookup: EmbeddingLookup, dense: ServableModel, example: UserState) -> None:
        """`example`: a state of the model (its tensors' names and padding layout)."""
        super().__init__()
        self.lookup, self.dense = lookup, dense
        self.names, self.padded = list(example.tensors), dict(example.padded)

    def forward(self, candidates: Tensor, *state: Tensor) -> Tensor:
        user_state = UserState(dict(zip(self.names, state)), self.padded)
        return torch.sigmoid(self.dense.score(user_state, self.lookup.candidates(candidates)))


def export_programs(
    lookup: EmbeddingLookup, dense: ServableModel, capacity: int, dense_width: int
) -> tuple[ExportedProgram, ...]:
    """(prefill, score) ExportedPrograms of the scorer made of `lookup` and `dense` (histories up to `capacity`
    events, `dense_width` dense features)."""
    dense, lookup = dense.eval(), lookup.eval()
    # example sizes > 1 so that no dimension is specialised to 1; the ids are 0, valid in every table
    users, events_n = 2, 8
    args = (torch.zeros(events_n, len(lookup.sequence), dtype=torch.long), torch.tensor([3, 5]),
            torch.zeros(events_n, dtype=torch.long), torch.full((users, len(lookup.user), 2), -1),
            torch.zeros(users, dense_width))
    u, n, p, c = Dim("users", min=1), Dim("events", min=1), Dim("user_ids", min=1), Dim("candidates", min=1)
    prefill = PrefillProgram(lookup, dense, capacity)
    with torch.no_grad():
        prefill_program = torch.export.export(
            prefill, args, strict=False, dynamic_shapes=({0: n}, {0: u}, {0: n}, {0: u, 2: p}, {0: u}),
        )
        example = prefill.state(*args)
        candidates = torch.zeros(users, 3, len(lookup.candidate), dtype=torch.long)
        state = tuple(example.tensors.values())
        score_program = torch.export.export(
            ScoreProgram(lookup, dense, example), (candidates, *state), strict=False,
            dynamic_shapes=({0: u, 1: c}, tuple({0: u} for _ in state)),  # *state is one argument
        )
    return prefill_program, score_program


def save_programs(programs: tuple[ExportedProgram, ...], out: str | Path) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.export.save(programs[0], out / "prefill.pt2")
    torch.export.save(programs[1], out / "score.pt2")
