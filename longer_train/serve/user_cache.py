"""Warm user state: the encoded users (`UserState`, one per user: models/user_state.py) kept between requests,
bounded in bytes and entries, least recently used first out, each entry dropped after its time to live.

A state is reused only for the same user-side input: the key is the user id, the number of events in the history
and a digest of every user-side value (the history's ids and times, the request time, the user and dense
features). The request time is part of it because every model's behaviour tokens depend on it (each event's
time before the request) and on each event's recency (how many events are newer): a returning user with new
events, or the same history at a later time, changes every token, so their state is encoded afresh
(docs/serving.md, "Warm user state").
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
    hits: int = 0
    misses: int = 0
    evictions: int = 0  # dropped for room (bytes or entries) or age


UserKey = tuple[int, int, str]  # (user id, events in its history, digest of its user-side values)


def user_keys(users: pa.Table, user_id: str, history: str) -> list[UserKey]:
    """The cache key of each row of `users` (one request's user side each; candidate columns not included)."""
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
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: UserKey) -> UserState | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and self.clock() - entry[0] > self.limits.ttl_s:
                self._drop(key)
                entry = None
            if entry is None:
                self.counts.misses += 1
                return None
            self._entries.move_to_end(key)
            self.counts.hits += 1
            return entry[1]

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
            self.nbytes += size

    def _drop(self, key: UserKey, evicted: bool = True) -> None:
        self.nbytes -= self._entries.pop(key)[1].nbytes
        self.counts.evictions += evicted
