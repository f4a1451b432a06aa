"""The one training loop: build (model -> compute policies -> sharding -> optimizers -> data) from a
Config, resume from the run's latest checkpoint if there is one, then train -> periodic validation and
checkpoints -> final test evaluation -> final checkpoint -> results line.

Every step is fully synchronous: the sparse optimizer runs fused inside the embedding backward, the dense
optimizer right after, on every rank. With `parallel.pipeline` the step is TorchRec's
TrainPipelineSparseDist, which starts the next batch's embedding input all-to-all before this step's
forward; without it, the same step runs batch by batch.

Gradient scale over ranks: each rank's loss is the mean over its batch; DDP/FSDP average the dense
gradients over ranks and TorchRec divides the embedding gradients by the world size in the backward of
its all-to-all (`comm_ops` gradient division), so both equal the gradient of the mean loss over the
global batch, as in one process (tests/distributed/test_sharding_parity.py checks it).
"""

from __future__ import annotations

import logging
import math
import os
import signal
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist
from torch.nn.utils import clip_grad_norm_
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist

from .components.allocator import keep_freed_memory
from .components.checkpoint import CheckpointManager, CheckpointRefused, load_checkpoint, saved_keys
from .components.metrics import RankingMetrics
from .components.metrics_processor import MetricsProcessor
from .components.optimizer import apply_sparse_optimizer, build_lr_scheduler, build_optimizer
from .components.preemption import StopRequests
from .components.profiler import StepProfiler
from .components.run_dir import RunInUse, RunLock, config_changes, default_run_name, move_aside
from .components.run_logger import RunLogger
from .config import Config, ConfigError, to_dict
from .data.batch import Batch
from .data.loader import build_dataloader
from .distributed.parallelize import apply_compute_policies
from .distributed.process_group import DistEnv, Heartbeat, init_distributed, is_collective_timeout
from .distributed.sharding import format_plan, init_tables, plan_summary, shard_model
from .errors import InputError, one_line
from .machine import check_dense_fits, resolve
from .models.ranking import build_model, comparison_flops

log = logging.getLogger(__name__)


class TrainingDiverged(InputError):
    """The training loss became NaN or infinite (exit code EXIT_DIVERGED)."""


class CollectiveTimeout(InputError):
    """A collective waited `parallel.collective_timeout_s` for a rank that did not come (named from heartbeats)."""


class TrainingStopped(Exception):
    """A stop signal ended the run at a step boundary (components/preemption.py); `checkpoint` is the one
    written there, None when checkpoints are off."""

    def __init__(self, step: int, signal_name: str, checkpoint: Path | None) -> None:
        super().__init__(f"stopped at step {step} ({signal_name})")
        self.step, self.signal_name, self.checkpoint = step, signal_name, checkpoint


class ClipThenStep:
    """The optimizer the step calls (plain and pipelined): clips the dense gradients, then steps the combined
    optimizer (sparse and dense). Only the dense gradients are clipped: the sparse ones are applied by
    TorchRec's fused optimizer inside the backward, before this runs."""

    def __init__(self, optimizer: torch.optim.Optimizer, dense_params: list, grad_clip: float):
        self.optimizer, self.dense_params = optimizer, dense_params
        self.max_norm = grad_clip if grad_clip > 0 else float("inf")  # inf: measure only
        self.grad_norm = 0.0

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        norm = clip_grad_norm_(self.dense_params, self.max_norm, foreach=True)  # one kernel per op, not per tensor
        self.grad_norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
        self.optimizer.step()


class Trainer:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        resolve(cfg)  # num_embeddings: auto -> the dataset's sizes (meta.json); then the machine checks
        self.env = env = init_distributed(cfg.train.device, cfg.parallel.collective_timeout_s)
        _check_fault_drill(cfg, env.world_size)
        # installed when training starts: from then on SIGTERM / SIGINT stop it at a step boundary with a checkpoint
        self.stops = StopRequests(cfg.train.checkpoint_every_minutes)
        self.heartbeat = Heartbeat(env)
        self.run_dir = Path(cfg.train.output_dir) / (cfg.train.run_name or default_run_name(cfg, env.world_size))
        self.lock = RunLock(self.run_dir)
        try:
            self._lock_run_dir()
            self._build(cfg, env)
        except BaseException:
            self.lock.release()
            raise

    def _build(self, cfg: Config, env: DistEnv) -> None:
        """Model -> compute policies -> sharding -> optimizers -> data -> reporting, then resume or start."""
        if env.device.type == "cpu":
            keep_freed_memory()  # a step's large buffers come back from the heap, not from the kernel
        torch.manual_seed(cfg.train.seed)  # identical dense init on every rank

        check_dense_fits(cfg, env.device)
        model = build_model(cfg)
        self.flops_per_sample = model.dense.flops([cfg.data.max_len])
        # the paper's comparison (LONGER: about half the FLOPs of the Transformer of the same d and depth)
        comparison = comparison_flops(cfg, model.dense, [cfg.data.max_len])
        apply_compute_policies(model.dense, cfg.parallel, env.device.type)
        apply_sparse_optimizer(model.sparse, cfg.optim, env.device)
        self.model, plan = shard_model(model, cfg, env)
        init_tables(self.model, cfg.data, cfg.train.seed)  # the same tables at every world size and plan
        self.plan = plan_summary(plan, cfg)
        self.optimizer, dense_optimizer = build_optimizer(self.model, cfg.optim)
        dense_params = [p for group in dense_optimizer.param_groups for p in group["params"]]
        self.step_optimizer = ClipThenStep(self.optimizer, dense_params, cfg.optim.grad_clip)

        self.train_loader = build_dataloader(
            cfg.data, "train", train=True, seed=cfg.train.seed, rank=env.rank, world_size=env.world_size
        )
        self.steps_per_epoch = self.train_loader.num_batches()  # equal on every rank
        total = cfg.train.epochs * self.steps_per_epoch
        self.total_steps = min(total, cfg.train.max_steps) if cfg.train.max_steps > 0 else total
        self.scheduler = build_lr_scheduler(dense_optimizer, cfg.optim, self.total_steps)
        self.pipeline = (
            TrainPipelineSparseDist(self.model, self.step_optimizer, env.device)
            if cfg.parallel.pipeline else None
        )
        # what a checkpoint restores besides the model and optimizers (the same on every rank)
        self.progress: dict[str, Any] = {
            "step": 0, "epoch": 0, "batch_in_epoch": 0, "train_time": 0.0, "train_samples": 0, "valid": {},
        }

        self.resolved = to_dict(cfg)
        self.checkpoints = CheckpointManager(self.run_dir / "checkpoints", cfg.train.keep_checkpoints, env.is_main)
        self.logger = RunLogger(cfg, self.run_dir, self.resolved, enabled=env.is_main)
        dense_count = sum(p.numel() for p in dense_params)
        flops = f"{self.flops_per_sample / 1e9:.3g} GFLOPs/sample (forward, max_len={cfg.data.max_len}"
        if comparison is not None:
            flops += f"; {comparison[0]}: {comparison[1] / 1e9:.3g}"
        self.logger.print(
            f"longer-train: world_size={env.world_size} device={env.device} backend={env.backend} "
            f"dense={cfg.parallel.dense} pipeline={cfg.parallel.pipeline} | dense params {dense_count / 1e6:.2f}M | "
            f"{flops}) | {self.total_steps} steps | run {self.run_dir}"
        )
        for line in format_plan(self.plan):
            self.logger.print(line)
        self.resumed_from: Path | None = None  # the checkpoint this run continued from (_resume_or_start)
        self.finished: dict[str, Any] | None = None  # the summary of a run that had finished (_load)
        self._resume_or_start()

    def _lock_run_dir(self) -> None:
        """Rank 0 checks that the run's outputs can be written and takes the run folder's lock for the job;
        every rank stops with rank 0's one-line reason if either fails."""
        problem = None
        if self.env.is_main:
            try:
                _check_writable(Path(self.cfg.train.runs_table), "train.runs_table")
                holder = self.lock.acquire()
                if holder is not None:
                    problem = (f"{self.run_dir} is being written by another job ({holder}); wait for it to end or "
                               "stop it, or give this one another train.run_name")
            except OSError as err:  # an unwritable or full output folder, named
                problem = f"train.output_dir: {one_line(err)}"
            except InputError as err:
                problem = str(err)
        if self.env.world_size > 1:
            box = [problem]
            dist.broadcast_object_list(box, src=0)
            problem = box[0]
        if problem is not None:
            raise RunInUse(problem)

    @property
    def step(self) -> int:
        return self.progress["step"]

    # ------------------------------------------------------------------------------------------------
    def _plain_step(self, batches: Iterator[Batch]):
        batch = next(batches).to(self.env.device, non_blocking=True)
        self.step_optimizer.zero_grad()
        loss, output = self.model(batch)
        loss.backward()  # the sparse optimizer steps inside this backward
        self.step_optimizer.step()
        return output

    def train(self) -> dict[str, Any]:
        """Train to the end and return the run's summary; raises TrainingStopped when a stop signal ends it
        early (a checkpoint is written first). A run that had finished only reports its summary again."""
        try:
            if self.finished is not None:
                self.logger.print(
                    f"run {self.run_dir} had finished at step {self.step}: nothing to train (its results are "
                    "below); train.resume=never trains it again, another train.run_name starts a separate run"
                )
                self.logger.print(results_table(self.finished))
                self.logger.record(self.finished)  # only if the runs table lost its line
                return self.finished
            self.stops.install()
            try:
                return self._train()
            except RuntimeError as err:
                if not is_collective_timeout(err):
                    raise
                raise CollectiveTimeout(self.heartbeat.describe(self.cfg.parallel.collective_timeout_s)) from None
        finally:
            self.stops.uninstall()
            self.lock.release()

    def _train(self) -> dict[str, Any]:
        cfg, env, progress = self.cfg, self.env, self.progress
        self.logger.open()
        eval_every = cfg.train.eval_every or self.steps_per_epoch
        step_fn: Callable = self.pipeline.progress if self.pipeline is not None else self._plain_step
        self.model.train()
        self.logger.start_progress(self.total_steps, initial=progress["step"])
        metrics = MetricsProcessor(self.logger, env.device, env.world_size, cfg.train.log_every,
                                   cfg.train.metrics_window, self.flops_per_sample)
        self.profiler = StepProfiler(cfg.train.profile_steps, cfg.train.profile_after, self.run_dir / "profile",
                                     env.rank)
        try:
            self._train_epochs(step_fn, metrics, eval_every)
        finally:
            self.profiler.close()
        if self.profiler.traces:
            self.logger.print(f"profile: {len(self.profiler.traces)} trace(s) of rank 0 in {self.run_dir / 'profile'}")
        return self._finish()

    def _train_epochs(self, step_fn: Callable, metrics: MetricsProcessor, eval_every: int) -> None:
        progress = self.progress
        while progress["step"] < self.total_steps:
            # The data position comes from `progress` (the trained steps), not from the loader's own count:
            # with TorchRec's pipeline (parallel.pipeline) the loader has handed out batches ahead of the
            # step (the pipeline's prefetched ones), so its `delivered` runs ahead of what was trained and a
            # checkpoint taking it would skip those batches on resume. The checkpoint keeps this position in
            # `progress`; the loader gets it back here. Its `readers` guard cannot fire (the value is its own):
            # a resume at another world size continues at the same fraction of the epoch (`_load`).
            position = {"epoch": progress["epoch"], "batches": progress["batch_in_epoch"]}
            self.train_loader.load_state_dict({**self.train_loader.state_dict(), **position})
            ended = self._train_steps(iter(self.train_loader), step_fn, metrics, eval_every)
            if ended == "epoch":
                progress["epoch"] += 1
                progress["batch_in_epoch"] = 0
            # "emptied": evaluation emptied the pipeline; a new iterator continues at the trained position

    def _finish(self) -> dict[str, Any]:
        """After the last step: test, the final checkpoint (with the summary), the runs table line."""
        cfg, env, progress = self.cfg, self.env, self.progress
        skipped = self.train_loader.skipped_on_all_ranks()  # a collective: every rank calls it
        if skipped:
            counts = ", ".join(f"{k} {v}" for k, v in sorted(skipped.items()))
            self.logger.print(f"data: skipped on all ranks (rows per reason; files): {counts}")
        test = self.evaluate("test")
        self.logger.log(self.step, {f"test/{k}": v for k, v in test.items()})
        checkpoint = self.checkpoints.path(self.step) if cfg.train.checkpoint else None
        summary = {
            "run": self.run_dir.name, "model": cfg.model.name, "max_len": cfg.data.max_len,
            "seed": cfg.train.seed, "steps": self.step, "world_size": env.world_size,
            "train_samples_per_s": progress["train_samples"] / max(progress["train_time"], 1e-9),
            "gflops_per_sample": self.flops_per_sample / 1e9,
            **{f"valid_{k}": v for k, v in progress["valid"].items()}, **{f"test_{k}": v for k, v in test.items()},
            "checkpoint": str(checkpoint) if checkpoint else None, "data_root": cfg.data.root,
        }
        if checkpoint:
            self.save(summary)  # the summary marks the run finished: a re-run reports it instead of training
        self.logger.finish(summary)
        self.logger.print(results_table(summary))
        return summary

    def _train_steps(self, batches: Iterator[Batch], step_fn: Callable, metrics: MetricsProcessor,
                     eval_every: int) -> str:
        """Train on `batches` until the epoch ends ("epoch"), the last step is done ("done") or an evaluation
        under the pipeline emptied it ("emptied")."""
        cfg, env, progress = self.cfg, self.env, self.progress
        while progress["step"] < self.total_steps:
            start = time.perf_counter()
            try:
                loss, logits, labels = step_fn(batches)
            except StopIteration:
                return "epoch"
            self.scheduler.step()
            elapsed = time.perf_counter() - start
            progress["step"] += 1
            progress["batch_in_epoch"] += 1
            value = loss.item()
            if not math.isfinite(value):
                self._diverged(value)
            metrics.step(self.step, value, labels, logits, elapsed)
            progress["train_time"] += elapsed
            progress["train_samples"] += int(labels.shape[0]) * env.world_size
            self.heartbeat.beat(self.step)
            self.profiler.step()
            if metrics.due(self.step, self.total_steps):
                metrics.log(self.step, self.total_steps, {
                    "train/lr": self.scheduler.get_last_lr()[0], "train/grad_norm": self.step_optimizer.grad_norm,
                    "train/epoch": progress["epoch"],
                    **{f"data/skipped_{k}": v for k, v in self.train_loader.skipped.items()},
                })
            evaluated = self.step % eval_every == 0 or self.step == self.total_steps
            if evaluated:
                progress["valid"] = self.evaluate("valid")
                self.logger.print(f"step {self.step:>6}  " + _format(progress["valid"], "valid"))
                self.logger.log(self.step, {f"valid/{k}": v for k, v in progress["valid"].items()})
                self.model.train()
            every = cfg.train.checkpoint_every
            saved = cfg.train.checkpoint and every and self.step % every == 0 and self.step < self.total_steps
            if saved:
                self.save()
            self._maybe_inject_fault()
            if self.step < self.total_steps:
                self._stop_or_save(already_saved=saved)
            if evaluated and self.pipeline is not None:
                return "emptied"
        return "done"

    def _diverged(self, loss: float) -> None:
        """The loss is NaN or infinite: stop at once (no checkpoint of the diverged weights) and say where."""
        newest = self.checkpoints.latest()
        kept = f"the newest checkpoint, {newest}, is kept" if newest else "no checkpoint was written"
        raise TrainingDiverged(
            f"step {self.step}, rank {self.env.rank}: the training loss is {loss} (learning rate "
            f"{self.scheduler.get_last_lr()[0]:.3g}); {kept}. Lower optim.lr or raise optim.warmup_steps, keep "
            "optim.grad_clip on, or look for extreme values in the data"
        )

    def _stop_or_save(self, already_saved: bool) -> None:
        """At a step boundary, with every rank: save if `train.checkpoint_every_minutes` has passed or a stop
        signal came, then stop (TrainingStopped) if one came."""
        stop, save = self.stops.poll(self.env.device)
        checkpoint = None
        if save and self.cfg.train.checkpoint:
            checkpoint = self.checkpoints.path(self.step) if already_saved else self.save()
        if stop:
            self.logger.close(stopped=True)
            received = self.stops.received.name if self.stops.received else "a stop signal on another rank"
            raise TrainingStopped(self.step, received, checkpoint)

    def _maybe_inject_fault(self) -> None:
        cfg = self.cfg.train
        # only in a job's first life: not after torchrun restarted it, not once it resumed from a checkpoint
        first_attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0" and self.resumed_from is None
        if not (cfg.fault_at_step and self.step == cfg.fault_at_step and self.env.rank == cfg.fault_rank
                and first_attempt):
            return
        if cfg.fault == "raise":
            raise RuntimeError(f"injected fault on rank {self.env.rank} after step {self.step} (train.fault_at_step)")
        target = os.getppid() if cfg.fault.endswith("_launcher") else os.getpid()
        sig = {"kill": signal.SIGKILL, "term": signal.SIGTERM, "stop": signal.SIGSTOP}[cfg.fault.split("_")[0]]
        os.kill(target, sig)

    def _empty_pipeline(self) -> None:
        """Finish the input all-to-alls in flight, give the sharded modules their plain forwards back and
        drop the batches the pipeline fetched ahead; the next `progress()` rewrites the model and refills the
        pipeline from the iterator the loop makes at the trained position (`progress`).

        Why not TorchRec's detach() -> attach(): attach() with batches in flight re-runs the input
        distribution of batch i+1, whose all-to-alls already ran, and replaces its module contexts with
        fresh ones; the next forward then waits on the old tensors with the new, never-filled contexts. At
        world size 1 nothing crosses ranks and the result was the same; at 2 ranks the embedding output
        all-to-all got buffers of different sizes (gloo: `in->size == out->size`) on the first step after
        every mid-run evaluation."""
        pipeline = self.pipeline
        for context in pipeline.contexts:
            for _, awaitable in context.fused_splits_awaitables:
                for request in awaitable.wait():
                    request.wait()
            for request in context.input_dist_tensors_requests.values():
                request.wait()
        pipeline.detach()
        # no batch in flight: the next progress() attaches with no context, which makes it rewrite the model
        # again when it fills the pipeline from the new iterator
        pipeline.reset()

    # ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, split: str) -> dict[str, float]:
        """Metrics on a whole split: every rank scores its shard; the metrics are those of the union, without
        any rank holding every prediction (components/metrics.py)."""
        if self.pipeline is not None:
            self._empty_pipeline()
        self.model.eval()
        loader = build_dataloader(
            self.cfg.data, split, train=False, seed=0, rank=self.env.rank, world_size=self.env.world_size
        )
        metrics = RankingMetrics(self.cfg.train.test_bootstrap if split == "test" else 0)
        for batch in loader:
            batch = batch.to(self.env.device)
            _, (_, logits, labels) = self.model(batch)
            metrics.update(batch.user_ids, labels.float(), logits.float())
        return metrics.compute()

    # ------------------------------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        """The tensors of a checkpoint (DCP): model, both optimizers' state and each rank's RNG state under
        `rank<r>` (the RNG drives dropout; the loader seeds its own generators)."""
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state(self.env.device)
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            f"rank{self.env.rank}": rng,
        }

    def save(self, summary: dict[str, Any] | None = None) -> Path:
        """Write a checkpoint of this step (all ranks); `summary`: the finished run's results, which mark it
        finished."""
        # the small, rank-independent state goes into meta.json, written inside the checkpoint before it
        # becomes visible: schedule and progress (step, data position, counters, last validation metrics)
        meta = {
            "step": self.step, "world_size": self.env.world_size, "plan": self.plan, "config": self.resolved,
            "progress": self.progress, "scheduler": self.scheduler.state_dict(),
            **({"summary": summary} if summary is not None else {}),
        }
        path = self.checkpoints.save(self.step, self._state(), meta)
        self.stops.saved()
        self.logger.print(f"checkpoint: {path}")
        return path

    def _resume_or_start(self) -> None:
        if self.cfg.train.resume == "never":
            moved = move_aside(self.run_dir) if self.env.is_main else None
            if self.env.world_size > 1:
                dist.barrier()
            if moved is not None:
                self.logger.print(f"train.resume=never: the previous files of {self.run_dir} (checkpoints, "
                                  f"metrics, W&B) moved to {moved}; delete that folder if you do not need it")
            return
        # the newest checkpoint that verifies against its manifest and loads; those passed over are reported
        self.resumed_from = self.checkpoints.load_newest(self._load, log.warning)
        if self.resumed_from is not None and self.finished is None:
            line = f"resumed from {self.resumed_from} at step {self.step}"
            if self._saved_world_size != self.env.world_size:
                line += (f" (saved with world_size={self._saved_world_size}, now {self.env.world_size}: tables and "
                         "optimizer state resharded, the epoch continues at the same fraction in another order)")
            self.logger.print(line)

    def _load(self, path: Path, meta: dict[str, Any]) -> None:
        """Load a verified checkpoint into the model, optimizers, schedule, progress and RNG (all ranks). A
        checkpoint of another config is refused (CheckpointRefused) unless `train.allow_config_change`."""
        changes = config_changes(meta.get("config", {}), self.cfg)
        if changes and not self.cfg.train.allow_config_change:
            raise CheckpointRefused(
                f"{path} was saved by a run with another config ({'; '.join(changes)}): give this config "
                "another train.run_name, or resume under it with train.allow_config_change=true"
            )
        if changes:
            log.warning("resuming %s under a changed config: %s", path, "; ".join(changes))
        self.optimizer.init_state()  # creates the dense optimizer's state tensors to load into
        state = self._state()
        rank_key = f"rank{self.env.rank}"
        if not any(key.startswith(rank_key + ".") for key in saved_keys(path)):
            del state[rank_key]  # this rank did not exist in the saved run (world size changed)
        load_checkpoint(path, state, verify=False)  # load_newest verified it on all ranks
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(meta["scheduler"])
        for group, lr in zip(self.scheduler.optimizer.param_groups, self.scheduler.get_last_lr()):
            group["lr"] = lr  # param_groups are not in the optimizer state dict; the schedule knows the lr
        self.progress.update(meta["progress"])
        # finished: its last step trained and evaluated (a run extended under an allowed change goes on)
        self.finished = meta.get("summary") if self.step >= self.total_steps else None
        if rank_key in state:
            torch.set_rng_state(state[rank_key]["torch"])
            if "cuda" in state[rank_key] and torch.cuda.is_available():
                torch.cuda.set_rng_state(state[rank_key]["cuda"], self.env.device)
        self._saved_world_size = saved_world = meta["world_size"]
        if saved_world != self.env.world_size:
            # the rows of an epoch are split over a different number of ranks: continue at the same fraction
            # of the epoch (exact resume needs the same world size)
            done = self.progress["batch_in_epoch"] * saved_world
            self.progress["batch_in_epoch"] = min(math.ceil(done / self.env.world_size), self.steps_per_epoch)

def _check_writable(path: Path, key: str) -> None:
    """`path` (a file to append to) can be created or written, before the run spends any time."""
    existing = path if path.exists() else next(p for p in path.parents if p.exists())
    if existing == path:
        ok, why = path.is_file() and os.access(path, os.W_OK), "is not a writable file"
    else:
        ok, why = existing.is_dir() and os.access(existing, os.W_OK | os.X_OK), "is not a writable folder"
    if not ok:
        raise InputError(f"config key '{key}': {path} cannot be written ({existing} {why})")


def _check_fault_drill(cfg: Config, world_size: int) -> None:
    """A fault drill that cannot happen in this job is a config error, not a run without the drill."""
    train = cfg.train
    if not train.fault_at_step:
        return
    if train.fault_rank >= world_size:
        raise ConfigError(f"config key 'train.fault_rank' ({train.fault_rank}) names no rank of this job "
                          f"(world size {world_size})")
    if train.fault.endswith("_launcher") and "TORCHELASTIC_RUN_ID" not in os.environ:
        raise ConfigError(f"config key 'train.fault' ({train.fault}) needs a torchrun launcher "
                          "(launch/torchrun.sh); this process has none")


def _format(metrics: dict[str, float], split: str) -> str:
    keys = ("auc", "gauc", "logloss", "calibration")
    return "  ".join(f"{split}/{k} {metrics[k]:.4f}" for k in keys)


def results_table(summary: dict[str, Any]) -> str:
    """The final metrics as a small fixed-width table."""
    rows = [("metric", "valid", "test")]
    for key in ("auc", "gauc", "logloss", "calibration", "samples"):
        fmt = (lambda v: f"{v:.0f}") if key == "samples" else (lambda v: f"{v:.4f}")
        rows.append((key, fmt(summary.get(f"valid_{key}", float("nan"))), fmt(summary[f"test_{key}"])))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    tail = (
        f"steps {summary['steps']}  train samples/s {summary['train_samples_per_s']:.0f}  "
        f"GFLOPs/sample {summary['gflops_per_sample']:.3g}"
    )
    return "\n".join(["", *lines, tail])
