"""Dynamic batching: requests that arrive together are scored in one model call.

One worker thread owns the model. It takes the oldest waiting request, then keeps taking requests until
the batch is full or `max_wait_s` has passed since it took the first (Triton's `max_queue_delay`,
TorchServe's `maxBatchDelay`, LitServe's `batch_timeout`). Under load the queue fills while the model is
busy, so batches form without waiting at all. A batch is full at `max_requests` requests or when adding
the next would make `requests x widest request's candidates` (the padded candidate slots the model
computes) exceed `max_slots`; requests are taken in arrival order, a request that does not fit starts the
next batch. A request whose caller has gone (its future cancelled) is dropped before it is scored.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Callable, Generic, Sequence, TypeVar

_STOP = object()
Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass
class _Pending(Generic[Item]):
    item: Item
    size: int  # candidates of the request
    future: Future


@dataclass
class BatchStats:
    batches: int = 0
    requests: int = 0
    largest: int = 0  # requests in the largest batch


class DynamicBatcher(Generic[Item, Result]):
    def __init__(self, run: Callable[[Sequence[Item]], Sequence[Result]], max_requests: int = 32,
                 max_slots: int = 2048, max_wait_s: float = 0.002, name: str = "batcher") -> None:
        if max_requests < 1 or max_slots < 1 or max_wait_s < 0:
            raise ValueError("max_requests and max_slots must be >= 1 and max_wait_s >= 0")
        self.run, self.max_requests, self.max_slots, self.max_wait_s = run, max_requests, max_slots, max_wait_s
        self.stats = BatchStats()
        self._queue: queue.SimpleQueue = queue.SimpleQueue()  # _Pending, or _STOP
        self._worker = threading.Thread(target=self._loop, name=name, daemon=True)
        self._worker.start()

    def submit(self, item: Item, size: int) -> Future:
        """Queue `item` (a request of `size` candidates); the future gets its result or the batch's error."""
        future: Future = Future()
        self._queue.put(_Pending(item, size, future))
        return future

    def close(self, timeout: float | None = None) -> None:
        """Score what is queued, then stop the worker."""
        self._queue.put(_STOP)
        self._worker.join(timeout)

    def _loop(self) -> None:
        carried = None  # what did not fit the previous batch (or the stop marker that ended it)
        while True:
            first = carried if carried is not None else self._queue.get()
            carried = None
            if first is _STOP:
                return
            batch, widest = [first], first.size
            deadline = time.monotonic() + self.max_wait_s
            while len(batch) < self.max_requests:
                try:
                    nxt = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if nxt is _STOP or (len(batch) + 1) * max(widest, nxt.size) > self.max_slots:
                    carried = nxt
                    break
                batch.append(nxt)
                widest = max(widest, nxt.size)
            self._run([p for p in batch if p.future.set_running_or_notify_cancel()])

    def _run(self, batch: list[_Pending]) -> None:
        if not batch:
            return
        self.stats.batches += 1
        self.stats.requests += len(batch)
        self.stats.largest = max(self.stats.largest, len(batch))
        try:
            results = list(self.run([p.item for p in batch]))
            if len(results) != len(batch):
                raise RuntimeError(f"batch of {len(batch)} requests returned {len(results)} results")
        except BaseException as err:  # noqa: B036 -- every waiting caller must get an answer
            for p in batch:
                p.future.set_exception(err)
            return
        for p, result in zip(batch, results):
            p.future.set_result(result)
