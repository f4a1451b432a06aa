"""DynamicBatcher: requests that wait together are run together, within the request and slot budgets,
in arrival order; an error reaches every caller of its batch; a cancelled request is not run."""

import threading
import time

import pytest

from longer_train.serve.batching import DynamicBatcher


class Model:
    """Records each batch; the first call blocks until released, so that later requests pile up."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.release = threading.Event()
        self.started = threading.Event()

    def __call__(self, items):
        self.batches.append(list(items))
        self.started.set()
        self.release.wait(10)
        if "bad" in items:
            raise ValueError("bad item")
        return [item.upper() for item in items]


def test_requests_waiting_together_are_run_together_within_the_budgets():
    model = Model()
    batcher = DynamicBatcher(model, max_requests=3, max_slots=100, max_wait_s=0.0)
    first = batcher.submit("a", 10)
    assert model.started.wait(10)  # the model is busy with "a"; the rest queue up
    sizes = {"b": 10, "c": 10, "d": 10, "e": 10, "f": 40, "g": 10}
    futures = {name: batcher.submit(name, size) for name, size in sizes.items()}
    model.release.set()
    assert first.result(10) == "A"
    assert {name: f.result(10) for name, f in futures.items()} == {name: name.upper() for name in sizes}
    batcher.close(10)
    # b c d: three requests (max_requests); e then f: 2 x 40 slots fit 100, with g 3 x 40 would not
    assert model.batches == [["a"], ["b", "c", "d"], ["e", "f"], ["g"]]
    assert batcher.stats.batches == 4 and batcher.stats.requests == 7 and batcher.stats.largest == 3


def test_max_wait_gathers_requests_that_arrive_soon_after():
    seen = []
    batcher = DynamicBatcher(lambda items: seen.append(list(items)) or list(items), max_wait_s=0.5)
    futures = [batcher.submit(i, 1) for i in range(3)]
    assert [f.result(10) for f in futures] == [0, 1, 2]
    batcher.close(10)
    assert seen == [[0, 1, 2]]


def test_an_error_reaches_every_request_of_its_batch_and_the_worker_goes_on():
    model = Model()
    model.release.set()
    batcher = DynamicBatcher(model, max_wait_s=0.2)
    bad, good = batcher.submit("bad", 1), batcher.submit("x", 1)
    for future in (bad, good):
        with pytest.raises(ValueError, match="bad item"):
            future.result(10)
    assert batcher.submit("y", 1).result(10) == "Y"
    batcher.close(10)


def test_a_cancelled_request_is_not_run():
    model = Model()
    batcher = DynamicBatcher(model, max_wait_s=0.0)
    batcher.submit("a", 1)
    assert model.started.wait(10)
    gone, kept = batcher.submit("gone", 1), batcher.submit("kept", 1)
    assert gone.cancel()
    model.release.set()
    assert kept.result(10) == "KEPT"
    batcher.close(10)
    assert all("gone" not in batch for batch in model.batches)


def test_close_runs_what_is_queued():
    seen = []
    batcher = DynamicBatcher(lambda items: (time.sleep(0.05), seen.extend(items), list(items))[2], max_requests=1)
    futures = [batcher.submit(i, 1) for i in range(4)]
    batcher.close(10)
    assert seen == [0, 1, 2, 3] and all(f.done() for f in futures)
