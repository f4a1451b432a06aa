"""The training loop's logging component, beside the loop (as torchtitan's `MetricsProcessor`): the loop hands
it each step's loss, labels, logits and time; every `train.log_every` steps it reduces over ranks and logs
to `metrics.jsonl` / W&B and the console:

- `train/loss`: the mean over the steps since the last line and over all ranks (weighted by rows);
- `train/lr`, `train/grad_norm`, `train/epoch` (from the loop), `train/samples_per_s` (all ranks);
- `train/ne`, `train/auc`, `train/calibration` over the last `train.metrics_window` steps (`WindowedMetrics`);
- `train/mfu`: model FLOPs (3x the forward's analytic FLOPs per sample: forward + backward) per second over
  the GPU's dense bf16 peak, on the GPUs whose peak is known (components/device_specs.py); not on CPU, whose peak
  depends on the machine and its load;
- `train/peak_memory_gib`: the most memory this rank held: the CUDA caching allocator's peak on GPU, the
  process's peak resident set on CPU.
"""

from __future__ import annotations

import math
import resource
import sys

import torch
import torch.distributed as dist
from torch import Tensor

from .device_specs import peak_flops
from .metrics import WindowedMetrics
from .run_logger import RunLogger


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return kib / (2**30 if sys.platform == "darwin" else 2**20)


class MetricsProcessor:
    def __init__(self, logger: RunLogger, device: torch.device, world_size: int, log_every: int,
                 window_steps: int, flops_per_sample: float) -> None:
        self.logger, self.device, self.world_size, self.log_every = logger, device, world_size, log_every
        self.window = WindowedMetrics(window_steps)
        self.flops_per_sample, self.peak = flops_per_sample, peak_flops(device)
        self.loss, self.samples, self.seconds = 0.0, 0, 0.0  # since the last logged line, this rank

    def step(self, step: int, loss: float, labels: Tensor, logits: Tensor, seconds: float) -> None:
        """Account training step `step` of this rank."""
        if not math.isfinite(loss):
            rank = dist.get_rank() if dist.is_initialized() else 0
            raise FloatingPointError(f"training loss is {loss} at step {step} on rank {rank}")
        size = int(labels.shape[0])
        self.loss += loss * size
        self.samples += size
        self.seconds += seconds
        self.window.update(labels, logits)
        self.logger.advance(loss)

    def due(self, step: int, total_steps: int) -> bool:
        return step % self.log_every == 0 or step == total_steps

    def log(self, step: int, total_steps: int, loop: dict[str, float]) -> dict[str, float]:
        """Reduce over ranks (a collective: every rank calls it at the same steps), log and print one line;
        `loop`: what the loop knows (train/lr, train/grad_norm, train/epoch, data counters)."""
        sums = torch.tensor([self.loss, self.samples], dtype=torch.float64, device=self.device)
        if self.world_size > 1:
            dist.all_reduce(sums)
        samples_per_s = self.samples * self.world_size / max(self.seconds, 1e-9)
        metrics = {
            "train/loss": float(sums[0] / sums[1]),
            **{k: v for k, v in loop.items() if k.startswith("train/")},
            "train/samples_per_s": samples_per_s,
            **{f"train/{k}": v for k, v in self.window.compute().items()},
            "train/peak_memory_gib": peak_memory_gib(self.device),
            **({"train/mfu": 3 * self.flops_per_sample * samples_per_s / (self.world_size * self.peak)}
               if self.peak else {}),
            **{k: v for k, v in loop.items() if not k.startswith("train/")},
        }
        self.logger.log(step, metrics)
        # on the console too (with or without the progress bar): a run stuck at chance shows here
        self.logger.print(
            f"step {step:>6}/{total_steps}  train/loss {metrics['train/loss']:.4f}  lr {metrics['train/lr']:.3g}  "
            f"grad_norm {metrics['train/grad_norm']:.3g}  samples/s {samples_per_s:.0f}"
            + "".join(f"  train/{k} {metrics[f'train/{k}']:.4f}" for k in ("ne", "auc", "calibration")
                      if f"train/{k}" in metrics)
            + (f"  mfu {metrics['train/mfu']:.1%}" if "train/mfu" in metrics else "")
        )
        self.loss, self.samples, self.seconds = 0.0, 0, 0.0
        return metrics
