"""The scoring interface every dense model of `models/` implements (`ServableModel`), and the user state that
passes between its two halves (`UserState`). Serving (`serve/`) reads a model through this and nothing else.

Scoring is two calls: `prefill(x)` runs what does not depend on the candidate, once per user; `score(state,
candidates)` gives the logits of C candidates per user against that state, equal to the training forward of
each (user, candidate) row. How much `prefill` can do is the model's math (`ServingTraits`):

- `cached`: the candidate is the last token of a causal layout (LONGER, the Transformer, HSTU), so every
  history state is candidate-independent; `prefill` runs the history through every layer and keeps what a
  candidate attends to, and `score` computes only the candidates' rows.
- direct: the candidate enters the history's first step (target attention: DIN, TWIN, SumPooling with the
  candidate match; Base has no history); `prefill` keeps the behaviour tokens and `score` runs the rest of the
  forward for every (user, candidate) pair.
- `appends` (`AppendableModel`): a state of a history's first events extends to the longer history by
  encoding the new events only (LONGER and the Transformer under `model.stream_tokens`). Under the paper's
  tokens no model can: every behaviour token embeds its recency and its time before the request, so new
  events change every token (docs/serving.md, "Warm user state").

A `UserState` is a set of named tensors, each [U, ...] (one row per user). Some are left-padded sequences
(the keys of a layer, the behaviour tokens): their padded positions are declared with the [U] tensor that
counts them, so that serving can split a batch's state into one state per user (trimmed of its padding, to be
cached) and stack users' states back into a batch (`split_users`, `stack_users`) without knowing what any
tensor means. Padding is masked by the model, so a state scores the same however it is padded (tested).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor

from .inputs import DenseInputs


@dataclass(frozen=True)
class ServingTraits:
    """What a model's `prefill` / `score` can do (docs/serving.md, the per-model table)."""

    cached: bool  # prefill runs the history through every layer; score computes only the candidates' rows
    # `append` extends a state by newer events, equal to a fresh prefill (`AppendableModel`)
    appends: bool = False


@dataclass
class UserState:
    """The candidate-independent side of U users: named tensors, each [U, ...]. `padded` names the left-padded
    ones: tensor name -> (its padded axis, the name of the [U] integer tensor counting its leading padded
    positions); tensors that share a count are padded together."""

    tensors: dict[str, Tensor]
    padded: dict[str, tuple[int, str]] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Tensor:
        return self.tensors[name]

    @property
    def num_users(self) -> int:
        return next(iter(self.tensors.values())).shape[0]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())


@runtime_checkable
class ServableModel(Protocol):
    """What serving calls on a dense model (each model of `models/` implements it; tests/models/test_user_state.py
    checks every one against its training forward)."""

    serving: ServingTraits

    def prefill(self, x: DenseInputs) -> UserState:
        """The user side of `x` (its `candidate` field is not read): one state row per user."""
        ...

    def score(self, state: UserState, candidates: Tensor) -> Tensor:
        """Logits [U, C] of candidates [U, C, D_cand] (C per user; pad the rows of users with fewer and ignore
        their scores), each as the training forward gives it."""
        ...


@runtime_checkable
class AppendableModel(ServableModel, Protocol):
    """A model whose `serving.appends` is true: a state extends to newer events (tests/models/test_user_state.py
    checks it against a fresh prefill)."""

    def append_start(self, covered: int) -> int:
        """The oldest event `append` reads (index from the history's oldest) of a history whose first `covered`
        events a state encodes."""
        ...

    def append(self, state: UserState, x: DenseInputs, covered: int) -> UserState:
        """`prefill` of the longer history, from one user's state (`split_users`) of its first `covered` events;
        `x`: that user with the history's events from `append_start(covered)` on."""
        ...


def split_users(state: UserState) -> list[UserState]:
    """One state per user, each with its padded positions cut off (its counts 0): what a cache keeps."""
    counts = {name for _, name in state.padded.values()}
    out = []
    for u in range(state.num_users):
        tensors = {}
        for name, t in state.tensors.items():
            row = t[u : u + 1]
            if name in state.padded:
                axis, count = state.padded[name]
                row = row.narrow(axis, int(state[count][u]), row.shape[axis] - int(state[count][u]))
            tensors[name] = torch.zeros_like(row) if name in counts else row.clone()
        out.append(UserState(tensors, dict(state.padded)))
    return out


def stack_users(states: list[UserState]) -> UserState:
    """The users of `states` (one or more each, same model) as one batch: each padded sequence left-padded with
    zeros to the longest, its count raised by as many."""
    first = states[0]
    added: dict[str, list[Tensor]] = {}  # count name -> per state, the positions added in front [U_s]
    tensors = {}
    for name, (axis, count) in first.padded.items():
        parts = [s[name] for s in states]
        longest = max(p.shape[axis] for p in parts)
        pads = [longest - p.shape[axis] for p in parts]
        grown = [torch.full((p.shape[0],), n, dtype=torch.long) for p, n in zip(parts, pads)]
        if count in added and any(not torch.equal(a, g) for a, g in zip(added[count], grown)):
            raise ValueError(f"stack_users: the tensors counted by {count!r} are not padded alike ({name!r})")
        added[count] = grown
        tensors[name] = torch.cat([_pad_front(p, axis, n) for p, n in zip(parts, pads)])
    for name in first.tensors:
        if name in added:
            tensors[name] = torch.cat([s[name] + a.to(s[name]) for s, a in zip(states, added[name])])
        elif name not in tensors:
            tensors[name] = torch.cat([s[name] for s in states])
    return UserState({name: tensors[name] for name in first.tensors}, dict(first.padded))


def _pad_front(t: Tensor, axis: int, n: int) -> Tensor:
    """t with n zero positions in front of its `axis`."""
    if n == 0:
        return t
    return F.pad(t, [0, 0] * (t.dim() - 1 - axis) + [n, 0])
