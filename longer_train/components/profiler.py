"""`train.profile_steps = N`: a torch.profiler trace of N training steps of every rank, written to
`<run>/profile/` (Chrome trace JSON, one file per rank: open it in https://ui.perfetto.dev, chrome://tracing or
TensorBoard's profiler plugin). The first `train.profile_after` steps of the job and one warm-up step are left
out, so that start-up (first allocations, compilation, the loader's first batches) does not fill the trace."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, schedule


class StepProfiler:
    """Steps through `torch.profiler.profile` (its `step()` after each training step); does nothing when
    `steps` is 0. `traces` lists the files written once `close()` has run."""

    def __init__(self, steps: int, after: int, out: Path, rank: int) -> None:
        self.out, self.rank, self.traces = out, rank, []
        self.profiler = None
        if steps:
            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
            self.profiler = profile(
                activities=activities, schedule=schedule(skip_first=after, wait=0, warmup=1, active=steps, repeat=1),
                on_trace_ready=self._write, record_shapes=True,
            )
            self.profiler.start()

    def _write(self, prof: profile) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / f"rank{self.rank}.step{prof.step_num}.pt.trace.json"
        prof.export_chrome_trace(str(path))
        self.traces.append(path)

    def step(self) -> None:
        if self.profiler is not None:
            self.profiler.step()

    def close(self) -> None:
        if self.profiler is not None:
            self.profiler.stop()
            self.profiler = None
