"""The training loop's logging component: the loss of a logging window weighted by rows, samples/s, the
window metrics, peak memory, MFU only where the peak is known, and a non-finite loss stops the run."""

import math

import pytest
import torch

from longer_train.components.metrics_processor import MetricsProcessor, peak_flops


class _Logger:
    def __init__(self):
        self.logged, self.printed, self.advanced = [], [], []

    def log(self, step, metrics):
        self.logged.append((step, metrics))

    def print(self, line):
        self.printed.append(line)

    def advance(self, loss):
        self.advanced.append(loss)


def test_a_logging_window():
    logger = _Logger()
    processor = MetricsProcessor(logger, torch.device("cpu"), 1, log_every=2, window_steps=2, flops_per_sample=1e6)
    labels = [torch.tensor([1.0, 0.0, 1.0, 0.0]), torch.tensor([1.0, 0.0])]
    logits = [torch.tensor([2.0, -1.0, 0.5, 0.0]), torch.tensor([-0.5, 0.3])]
    for step, (y, z, loss) in enumerate(zip(labels, logits, (0.5, 0.8)), start=1):
        processor.step(step, loss, y, z, seconds=0.5)
    assert not processor.due(1, 10) and processor.due(2, 10) and processor.due(3, 3)
    metrics = processor.log(2, 10, {"train/lr": 0.1, "train/grad_norm": 1.0, "train/epoch": 0, "data/skipped_x": 3})
    assert metrics["train/loss"] == pytest.approx((0.5 * 4 + 0.8 * 2) / 6)  # weighted by rows
    assert metrics["train/samples_per_s"] == pytest.approx(6 / 1.0)
    assert 0 < metrics["train/auc"] < 1 and metrics["train/ne"] > 0 and metrics["train/calibration"] > 0
    assert metrics["train/peak_memory_gib"] > 0.01  # this process's peak resident set
    assert "train/mfu" not in metrics and peak_flops(torch.device("cpu")) is None  # no known CPU peak
    assert metrics["data/skipped_x"] == 3 and logger.logged == [(2, metrics)]
    assert logger.printed[0].startswith("step      2/10  train/loss") and "train/auc" in logger.printed[0]
    assert logger.advanced == [0.5, 0.8]
    processor.step(3, 0.7, labels[1], logits[1], seconds=1.0)  # the loss window starts again after a line
    assert processor.log(3, 10, {"train/lr": 0.1, "train/grad_norm": 1.0})["train/loss"] == pytest.approx(0.7)


def test_a_non_finite_loss_stops_the_run():
    processor = MetricsProcessor(_Logger(), torch.device("cpu"), 1, 1, 0, 1.0)
    with pytest.raises(FloatingPointError, match="training loss is nan at step 7"):
        processor.step(7, math.nan, torch.ones(2), torch.zeros(2), 0.1)
