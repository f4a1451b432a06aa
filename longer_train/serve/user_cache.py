"""Warm user state: the encoded users (`UserState`, one per user: models/user_state.py) kept between requests,
bounded in bytes and entries, least recently used first out, each entry dropped after its time to live.

A state is reused only for the same user-side input: the key is the user id, the number of events in the history
and a digest of every user-side value the state depends on (the history's ids and times, the user and dense
features; the request time too, unless the model appends). Under the paper's tokens every behaviour token depends
on the request time (each event's time before the request) and on each event's recency (how many events are
newer): a returning user with new events, or the same history at a later time, changes every token, so their
state is encoded afresh. A model that appends (`model.stream_tokens`) extends the user's newest kept state
(`latest`) when the request's history starts with the one it encodes (the digest of the request's first events
equals its key's): docs/serving.md, "Warm user state".
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc

from ..config import ConfigError

if TYPE_CHECKING:  # annotations only: `longer-serve --help` builds its parser from CacheLimits without torch
    from ..models.user_state import UserState


@dataclass(frozen=True)
class CacheLimits:
    max_mb: float = 256.0  # the states' tensor bytes, in MiB; 0 turns the cache off
    max_entries: int = 10_000
    ttl_s: float = 300.0  # an entry older than this is not used (and is dropped when met)

    def __post_init__(self) -> None:
        for flag, value in (("--cache-mb", self.max_mb), ("--cache-entries", self.max_entries),
                            ("--cache-ttl", self.ttl_s)):
            if not value >= 0:
                raise ConfigError(f"{flag} is {value}; expected a number >= 0")


@dataclass
class CacheCounts:
    hits: int = 0  # the same user side kept: no encoding
    appends: int = 0  # a kept state extended by the request's newer events (a model that appends)
    misses: int = 0  # encoded afresh
    evictions: int = 0  # dropped for room (bytes or entries) or age


UserKey = tuple[int, int, str]  # (user id, events in its history, digest of its user-side values)


def cut_history(users: pa.Table, history: set[str], start: int, stop: int | None = None) -> pa.Table:
    """`users` with every history column (the names in `history`: a list of events per row) cut to its events
    [start, stop), the other columns (multi-valued user features included) as they are."""
    return pa.table({name: pc.list_slice(column, start, stop) if name in history else column
                     for name, column in zip(users.column_names, users.columns)})


def user_keys(users: pa.Table, user_id: str, history: str) -> list[UserKey]:
    """The cache key of each row of `users` (one request's user side each: the columns its state depends on);
    `history`: the column whose length counts the events. The key a state of a history's first n events was
    kept under: `user_keys(cut_history(users, ..., 0, n), ...)`."""
    keys = []
    for row in users.to_batches(max_chunksize=1):
        digest = hashlib.blake2b(digest_size=16)
        for name, column in zip(row.schema.names, row.columns):
            digest.update(name.encode())
            values = column.flatten() if pa.types.is_list(column.type) else column
            digest.update(values.to_numpy(zero_copy_only=False).tobytes())
        keys.append((int(row.column(user_id)[0].as_py()), len(row.column(history)[0]), digest.hexdigest()))
    return keys


class UserStateCache:
    """A thread-safe LRU of single-user states with a byte bound, an entry bound and a time to live."""

    def __init__(self, limits: CacheLimits, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits, self.clock = limits, clock
        self.max_bytes = int(limits.max_mb * 2**20)
        self.counts = CacheCounts()
        self.nbytes = 0
        self._entries: OrderedDict[UserKey, tuple[float, UserState]] = OrderedDict()  # oldest use first
        self._latest: dict[int, UserKey] = {}  # user id -> the key of its most recently kept state
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: UserKey, count: bool = True) -> UserState | None:
        """The state kept under `key` (None: none, or past its time to live), counted as a hit or a miss unless
        `count` is false (the caller then counts the outcome: `record`)."""
        with self._lock:
            entry = self._live(key)
            if count:
                self._record("hits" if entry is not None else "misses")
            return None if entry is None else entry[1]

    def latest(self, user_id: int) -> tuple[UserKey, UserState] | None:
        """The most recently kept state of this user and its key (None: none live); not counted."""
        with self._lock:
            key = self._latest.get(user_id)
            entry = None if key is None else self._live(key)
            return None if entry is None else (key, entry[1])

    def record(self, outcome: str, n: int = 1) -> None:
        """Count `n` requests as hits, appends or misses (after `get(count=False)`)."""
        with self._lock:
            self._record(outcome, n)

    def _record(self, outcome: str, n: int = 1) -> None:
        if outcome not in ("hits", "appends", "misses"):
            raise ValueError(f"UserStateCache.record: unknown outcome {outcome!r}")
        setattr(self.counts, outcome, getattr(self.counts, outcome) + n)

    def _live(self, key: UserKey) -> tuple[float, UserState] | None:
        """The entry of `key`, made the most recently used; dropped (None) past its time to live. Holds the lock."""
        entry = self._entries.get(key)
        if entry is not None and self.clock() - entry[0] > self.limits.ttl_s:
            self._drop(key)
            return None
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    def put(self, key: UserKey, state: UserState) -> None:
        """Keep `state` (one user); a state larger than the whole byte bound is not kept."""
        size = state.nbytes
        if size > self.max_bytes or self.limits.max_entries == 0:
            return
        with self._lock:
            if key in self._entries:
                self._drop(key, evicted=False)
            while self._entries and (self.nbytes + size > self.max_bytes
                                     or len(self._entries) >= self.limits.max_entries):
                self._drop(next(iter(self._entries)))
            self._entries[key] = (self.clock(), state)
            self._latest[key[0]] = key
            self.nbytes += size

    def _drop(self, key: UserKey, evicted: bool = True) -> None:
        self.nbytes -= self._entries.pop(key)[1].nbytes
        self.counts.evictions += evicted
        if self._latest.get(key[0]) == key:
            del self._latest[key[0]]
