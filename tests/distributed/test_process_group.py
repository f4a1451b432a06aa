"""A collective that times out names the rank it waited for: each rank's last finished step goes to the
rendezvous store (Heartbeat), and the timeout's message is built from it. (End to end, 2 ranks with rank 1
SIGSTOPped by `train.fault=stop` and parallel.collective_timeout_s=10: torchrun's root cause reads
"... rank 1 last finished step 3, 10 s ago; such a rank is stopped, hung or cut off ..."; not in `make test`,
where torchrun's 30 s shutdown of a stopped process would cost a minute.)"""

import time
from types import SimpleNamespace

import torch.distributed as dist

from longer_train.distributed.process_group import Heartbeat, is_collective_timeout


def _heartbeat(rank: int, store) -> Heartbeat:
    beat = Heartbeat(SimpleNamespace(rank=rank, world_size=1))
    beat.world, beat.store = 3, store
    return beat


def test_the_rank_behind_is_named_with_its_last_step_and_how_long_ago():
    store = dist.HashStore()
    ranks = [_heartbeat(r, store) for r in range(3)]
    for step in (1, 2):
        for beat in ranks:
            beat.beat(step)
    ranks[0].beat(3)
    ranks[2].beat(3)
    store.set("heartbeat/1", f"2 {time.time() - 42:.3f}")  # rank 1 stopped 42 s ago, after step 2
    text = ranks[0].describe(timeout_s=30)
    assert text.startswith("rank 0: a collective waited parallel.collective_timeout_s=30 s for the other ranks: ")
    assert "rank 1 last finished step 2, 42 s ago;" in text and "rank 2" not in text


def test_a_rank_that_never_finished_a_step_and_a_hang_within_a_step():
    store = dist.HashStore()
    ranks = [_heartbeat(r, store) for r in range(3)]
    ranks[0].beat(1)
    ranks[1].beat(1)
    assert "rank 2 finished no step" in ranks[0].describe(timeout_s=5)
    ranks[2].beat(1)
    assert "no rank is behind in steps" in ranks[0].describe(timeout_s=5)


def test_gloo_s_timeout_is_recognised():
    gloo = RuntimeError("[third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting 10000ms for "
                        "recv operation to complete")
    assert is_collective_timeout(gloo) and is_collective_timeout(dist.DistBackendError("... timed out after 600 s"))
    assert not is_collective_timeout(RuntimeError("Connection closed by peer"))
    assert not is_collective_timeout(ValueError("timed out"))
