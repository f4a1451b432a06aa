"""Warm user state: the cache keeps at most its bytes and entries (least recently used out first) and drops
entries past their time to live; a scorer with it gives the scores of one without, for every Table 1 model, over
requests that repeat a user (hits) and that extend its history one event at a time (misses: under the paper's
tokens every token depends on the request time and on each event's recency, so a longer history is encoded
afresh) — including a LONGER merge group (merge_k events per merged token) filling across requests. Under
model.stream_tokens, LONGER and the Transformer extend the kept state instead (appends), with the same scores."""

import numpy as np
import pyarrow as pa
import pytest
import torch
from serve_models import TABLE1, make_scorer, requests
from test_http import _http
from test_http import _score as _post_score
from test_http_admission import METRICS, _metric

from longer_train.models.user_state import UserState
from longer_train.serve.http import HttpServer
from longer_train.serve.limits import ServeLimits
from longer_train.serve.scorer import Scorer
from longer_train.serve.user_cache import CacheLimits, UserStateCache, cut_history, user_keys


def _state(nbytes: int) -> UserState:
    return UserState({"x": torch.zeros(1, nbytes // 4)})


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def test_cache_bounds_bytes_and_entries_least_recently_used_first():
    cache = UserStateCache(CacheLimits(max_mb=1000 / 2**20, max_entries=3, ttl_s=60))
    for key in range(3):
        cache.put((key, 0, ""), _state(200))
    assert cache.get((0, 0, "")) is not None  # 0 is now the most recent: 1 goes first
    cache.put((3, 0, ""), _state(200))  # a fourth entry: over max_entries
    assert cache.get((1, 0, "")) is None and len(cache) == 3
    cache.put((4, 0, ""), _state(800))  # 1,400 bytes with the three: over 1,000, the two least recent go
    assert [cache.get((k, 0, "")) is not None for k in (2, 0, 3, 4)] == [False, False, True, True]
    assert cache.nbytes == 1000 and cache.counts.evictions == 3
    cache.put((5, 0, ""), _state(4000))  # larger than the whole bound: not kept, nothing evicted for it
    assert cache.get((5, 0, "")) is None and cache.nbytes == 1000


def test_cache_entries_expire_after_their_time_to_live():
    clock = Clock()
    cache = UserStateCache(CacheLimits(max_mb=1, max_entries=10, ttl_s=5), clock=clock)
    cache.put((1, 0, ""), _state(8))
    clock.now = 5.0
    assert cache.get((1, 0, "")) is not None
    clock.now = 5.1
    assert cache.get((1, 0, "")) is None and len(cache) == 0 and cache.nbytes == 0
    assert (cache.counts.hits, cache.counts.misses, cache.counts.evictions) == (1, 1, 1)


def test_latest_is_a_users_most_recently_kept_live_state():
    clock = Clock()
    cache = UserStateCache(CacheLimits(max_mb=1, max_entries=10, ttl_s=5), clock=clock)
    cache.put((1, 5, "a"), _state(8))
    cache.put((2, 5, "b"), _state(8))
    cache.put((1, 9, "c"), _state(8))
    assert cache.latest(1)[0] == (1, 9, "c") and cache.latest(3) is None and len(cache) == 3
    clock.now = 6.0
    assert cache.latest(1) is None and (cache.counts.hits, cache.counts.misses) == (0, 0)  # not counted


def _score(scorer: Scorer, users: pa.Table, pool: pa.Table) -> np.ndarray:
    counts = np.full(users.num_rows, pool.num_rows // users.num_rows)
    return scorer.score_requests(users, pool, counts)


@pytest.mark.parametrize("name", TABLE1)
def test_cached_scores_equal_fresh_ones_across_requests(name, synthetic_root):
    fresh = make_scorer(name, synthetic_root)
    warm = Scorer(fresh.cfg, fresh.lookup, fresh.dense, UserStateCache(CacheLimits()))
    data = fresh.cfg.data
    pool = requests(fresh, synthetic_root, [0] * 6).select(data.columns("candidate"))
    k = fresh.cfg.model.merge_k
    # one user whose history grows an event at a time across a merge group, then two other users with it
    for n in range(40, 40 + k + 2):
        users = requests(fresh, synthetic_root, [n])
        np.testing.assert_allclose(_score(warm, users, pool.slice(0, 3)), _score(fresh, users, pool.slice(0, 3)),
                                   atol=1e-5, rtol=0)
    misses = warm.cache.counts.misses
    users = requests(fresh, synthetic_root, [40 + k + 1, 7, 0])
    np.testing.assert_allclose(_score(warm, users, pool), _score(fresh, users, pool), atol=1e-5, rtol=0)
    assert warm.cache.counts.hits == 1 and warm.cache.counts.misses == misses + 2
    np.testing.assert_allclose(_score(warm, users, pool), _score(fresh, users, pool), atol=1e-5, rtol=0)
    assert warm.cache.counts.hits == 4


def test_the_key_covers_the_request_time_and_every_user_side_value(synthetic_root):
    scorer = make_scorer("longer", synthetic_root)
    data = scorer.cfg.data
    users = requests(scorer, synthetic_root, [20, 20]).select(scorer.user_columns)
    same = pa.concat_tables([users.slice(0, 1)] * 2)
    time_type = users.schema.field(data.timestamp).type
    later = users.slice(0, 1).set_column(users.schema.get_field_index(data.timestamp), data.timestamp,
                                         pa.array([users[data.timestamp][0].as_py() + 1], time_type))
    keys = user_keys(pa.concat_tables([same, later, users.slice(1, 1)]), data.user_id, data.hist_timestamp)
    assert keys[0] == keys[1] and len(set(keys)) == 3 and keys[0][1] == 20


@pytest.mark.parametrize("name", ["longer", "transformer"])
def test_a_returning_user_s_new_events_extend_its_kept_state(name, synthetic_root):
    """Under model.stream_tokens a returning user whose history starts with the kept one's is extended by its new
    events (appends) — one at a time across merge groups, several at once, at a later request time — with the
    scores of a scorer without cache (1e-5); a history that changed an old event, or one longer than
    data.max_len (its window slides), is encoded afresh (a miss)."""
    fresh = make_scorer(name, synthetic_root, ("model.stream_tokens=true", "data.max_len=48"))
    warm = Scorer(fresh.cfg, fresh.lookup, fresh.dense, UserStateCache(CacheLimits()))
    data = fresh.cfg.data
    pool = requests(fresh, synthetic_root, [0] * 6).select(data.columns("candidate")).slice(0, 3)
    full = requests(fresh, synthetic_root, [50])
    time = full.schema.get_field_index(data.timestamp)

    def first(n: int, later: int = 0) -> pa.Table:  # the user's request with its first n events
        cut = {c: pa.array([full[c][0].as_py()[:n]], full.schema.field(c).type)
               for c in (data.hist_timestamp, *data.columns("sequence"))}
        out = full
        for c, v in cut.items():
            out = out.set_column(out.schema.get_field_index(c), c, v)
        return out.set_column(time, data.timestamp, pa.array([full[data.timestamp][0].as_py() + later],
                                                                full.schema.field(time).type))

    steps = [10, 11, 12, 13, 14, 19, 30, 30, 48]  # one at a time, then 5, 11, the same history later, up to max_len
    for i, n in enumerate(steps):
        users = first(n, later=100 * i)
        np.testing.assert_allclose(_score(warm, users, pool), _score(fresh, users, pool), atol=1e-5, rtol=0)
    counts = warm.cache.counts
    assert (counts.misses, counts.appends, counts.hits) == (1, len(steps) - 2, 1)
    changed = first(48)
    item = data.columns("sequence")[0]
    old = changed[item][0].as_py()
    changed = changed.set_column(changed.schema.get_field_index(item), item,
                                 pa.array([[old[0] + 1, *old[1:]] + [old[-1]]], changed.schema.field(item).type))
    for c in (data.hist_timestamp, *data.columns("sequence")[1:]):  # 49 events: one new, the oldest changed
        values = changed[c][0].as_py()
        changed = changed.set_column(changed.schema.get_field_index(c), c,
                                     pa.array([values + values[-1:]], changed.schema.field(c).type))
    np.testing.assert_allclose(_score(warm, changed, pool), _score(fresh, changed, pool), atol=1e-5, rtol=0)
    assert (counts.misses, counts.appends) == (2, len(steps) - 2)  # 49 > max_len and not a prefix: afresh
    np.testing.assert_allclose(_score(warm, first(40), pool), _score(fresh, first(40), pool), atol=1e-5, rtol=0)
    np.testing.assert_allclose(_score(warm, first(41), pool), _score(fresh, first(41), pool), atol=1e-5, rtol=0)
    assert (counts.misses, counts.appends) == (3, len(steps) - 1)  # 40 is no extension of the kept 49: afresh


def test_http_appends_a_returning_user_and_counts_it(synthetic_root):
    """`longer-serve http` with a stream-token LONGER: a user who comes back with new events is appended (counted
    in /metrics), and its scores are the batch scorer's without a cache."""
    fresh = make_scorer("longer", synthetic_root, ("model.stream_tokens=true",))
    warm = Scorer(fresh.cfg, fresh.lookup, fresh.dense, UserStateCache(CacheLimits()))
    data = fresh.cfg.data
    full = requests(fresh, synthetic_root, [30])
    pool = requests(fresh, synthetic_root, [0] * 4).select(data.columns("candidate"))
    user = {k: v for k, v in full.to_pylist()[0].items() if k not in data.columns("candidate")}
    history = [data.hist_timestamp, *data.columns("sequence")]
    srv = HttpServer(warm, "127.0.0.1", 0, ServeLimits()).start()
    try:
        for n in (20, 23):  # the user's first 20 events, then 3 more at a later request
            payload = {"user": {**user, **{c: user[c][:n] for c in history},
                                data.timestamp: user[data.timestamp] + n},
                       "candidates": pool.to_pylist()}
            status, body = _post_score(srv.port, payload)
            assert status == 200
            rows = pa.Table.from_pylist([{**payload["user"], **cand} for cand in payload["candidates"]],
                                        schema=full.schema)
            np.testing.assert_allclose(body["scores"], fresh.score_table(rows), atol=1e-5, rtol=0)
        assert _metric(srv.port, "longer_serve_user_cache_appends_total") == 1
        assert _metric(srv.port, "longer_serve_user_cache_misses_total") == 1
        assert _http(srv.port, METRICS)[0] == 200
    finally:
        srv.stop()


def test_a_prefix_key_cuts_the_history_only():
    """The key of a history's first n events cuts the event lists, not a multi-valued user feature: a user with
    more interests than kept events still matches its kept state."""
    users = pa.table({"user_id": [3], "hist_item_id": [[5, 6, 7]], "hist_timestamp": [[1, 2, 3]],
                      "user_tags": [[9, 8, 7, 6]]})
    kept = pa.table({"user_id": [3], "hist_item_id": [[5, 6]], "hist_timestamp": [[1, 2]], "user_tags": [[9, 8, 7, 6]]})
    prefix = cut_history(users, {"hist_item_id", "hist_timestamp"}, 0, 2)
    assert prefix.equals(kept)
    assert user_keys(prefix, "user_id", "hist_timestamp") == user_keys(kept, "user_id", "hist_timestamp")
    assert cut_history(users, {"hist_item_id", "hist_timestamp"}, 1)["hist_item_id"].to_pylist() == [[6, 7]]
