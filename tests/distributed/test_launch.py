"""The launch commands as users type them, at tiny size: README.md's 2-process line run as written (its data
swapped for a tiny set) and with every sharding type, 4 processes on one node, and launch/slurm.sbatch under a
stand-in Slurm (fake_slurm/). Every run has the pipeline on, validation every few steps, checkpoints and an
uneven last batch (the ranks' last batches differ in size), and trains a whole epoch; the pipelined step gives
bitwise the losses of the plain one across validation passes at 2 ranks (a pipeline left holding batches over
an evaluation made the first step after it fail in the embedding all-to-all)."""

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from torchrun_launch import REPO, launch_env

from longer_train.config import load_config
from longer_train.data.loader import build_dataloader
from longer_train.datasets import synthetic
from longer_train.machine import resolve

README_TWO_PROCESSES = "NPROC_PER_NODE=2 launch/torchrun.sh"
README_SLURM = "launch/slurm.sbatch"
FAKE_SLURM = Path(__file__).parent / "fake_slurm"
EVAL_EVERY, SAVE_EVERY = 5, 4


def readme_line(prefix: str) -> str:
    """The line of a README.md bash block that starts with `prefix`, without its comment."""
    text = (REPO / "README.md").read_text()
    lines = [line.split("#")[0].strip() for block in re.findall(r"```bash\n(.*?)```", text, re.S)
             for line in block.splitlines()]
    found = [line for line in lines if line.startswith(prefix)]
    assert len(found) == 1, f"README.md has {len(found)} lines starting {prefix!r}"
    return found[0]


def as_written(line: str, data: Path, out: Path, *extra: str) -> tuple[dict[str, str], list[str]]:
    """(environment, argv) of a README launch line, with its data.root pointing at `data` and the tiny-size
    settings, outputs in `out`, appended."""
    words = shlex.split(line)
    env = dict(w.split("=", 1) for w in words if re.match(r"^[A-Z_]+=", w))
    argv = [w for w in words if not re.match(r"^[A-Z_]+=", w)]
    argv = [f"data.root={data}" if w.startswith("data.root=") else w for w in argv]
    if not any(w.startswith("data.root=") for w in argv):
        argv.append(f"data.root={data}")
    argv += [
        "data.max_len=64", "data.batch_size=32", f"train.eval_every={EVAL_EVERY}",
        f"train.checkpoint_every={SAVE_EVERY}", "train.log_every=1", f"train.output_dir={out}/runs",
        f"train.runs_table={out}/runs.jsonl", "logging.wandb_mode=disabled", *extra,
    ]
    return env, argv


@pytest.fixture(scope="module")
def uneven_data(tmp_path_factory) -> Path:
    """1,167 training rows: at 2 ranks 19 batches of 32 with last batches of 7 and 8 rows, at 4 ranks 10 with
    last batches of 3, 4, 4, 4."""
    root = tmp_path_factory.mktemp("uneven")
    synthetic.generate(root, users=100, max_len=64, seed=1)
    cfg = resolve(load_config(REPO / "configs" / "quickstart.yaml", [f"data.root={root}", "data.batch_size=32"]))
    for world in (2, 4):
        loaders = [build_dataloader(cfg.data, "train", True, 0, rank, world) for rank in range(world)]
        last = [loader.stream.batch_sizes(0)[-1] for loader in loaders]
        assert len({loader.num_batches() for loader in loaders}) == 1 and len(set(last)) > 1, (world, last)
    return root


def _run(env: dict[str, str], argv: list[str], timeout: int = 400) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=REPO, env={**launch_env(), **env}, capture_output=True, text=True,
                          timeout=timeout)


def _run_dir(out: Path) -> Path:
    (run,) = [p for p in (out / "runs").iterdir() if p.is_dir()]
    return run


def _metrics(run: Path) -> dict[int, dict]:
    by_step: dict[int, dict] = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        by_step.setdefault(row["step"], {}).update(row)
    return by_step


def _check_trained_to_the_end(proc: subprocess.CompletedProcess, out: Path, steps: int) -> dict[int, dict]:
    assert proc.returncode == 0, proc.stderr[-4000:]
    run = _run_dir(out)
    metrics = _metrics(run)
    assert max(metrics) == steps and "test/auc" in metrics[steps]
    validated = sorted(s for s, m in metrics.items() if "valid/auc" in m)
    assert validated == [*range(EVAL_EVERY, steps, EVAL_EVERY), steps], validated  # mid-run validation
    saved = sorted(int(p.name[5:]) for p in (run / "checkpoints").glob("step_*"))
    assert saved[-1] == steps and all(s % SAVE_EVERY == 0 for s in saved[:-1]), saved
    return metrics


MEASURED = ("train/samples_per_s", "train/peak_memory_gib", "train/mfu")  # wall-clock and memory, not results
EVERY_PLAN = {"item": "row_wise", "category": "column_wise", "action": "table_wise", "user": "table_wise",
              "segment": "column_wise"}  # each sharding type (a user-role table has no row-wise on CPU)


@pytest.fixture(scope="module")
def readme_run(uneven_data, tmp_path_factory) -> dict[int, dict]:
    """README's 2-process line as written (the planner's plan, the pipeline on): its metrics by step."""
    out = tmp_path_factory.mktemp("readme-2proc")
    env, argv = as_written(readme_line(README_TWO_PROCESSES), uneven_data, out)
    assert env == {"NPROC_PER_NODE": "2"}
    metrics = _check_trained_to_the_end(_run(env, argv), out, steps=19)
    return {s: {k: v for k, v in m.items() if k not in MEASURED} for s, m in metrics.items()}


def test_readme_two_process_example_trains_an_epoch(readme_run):
    assert len(readme_run) == 19


def test_the_pipelined_step_trains_like_the_plain_one_across_validation(uneven_data, readme_run, tmp_path):
    env, argv = as_written(readme_line(README_TWO_PROCESSES), uneven_data, tmp_path, "parallel.pipeline=false")
    metrics = _check_trained_to_the_end(_run(env, argv), tmp_path, steps=19)
    plain = {s: {k: v for k, v in m.items() if k not in MEASURED} for s, m in metrics.items()}
    assert plain == readme_run  # bitwise: losses, grad norms, validation and test metrics


def test_every_sharding_type_in_one_job(uneven_data, tmp_path):
    """Also the step profiler and TensorBoard as a 2-process job uses them: a trace of every rank, one
    TensorBoard writer (rank 0's)."""
    extra = [f"data.tables.{t}.sharding_type={p}" for t, p in EVERY_PLAN.items()]
    extra += ["train.profile_steps=1", "train.profile_after=2", "logging.tensorboard=true"]
    env, argv = as_written(readme_line(README_TWO_PROCESSES), uneven_data, tmp_path, *extra)
    proc = _run(env, argv)
    _check_trained_to_the_end(proc, tmp_path, steps=19)
    for table, plan in EVERY_PLAN.items():
        assert re.search(rf"sharding sparse\.\w+\.{table}: {plan}/fused", proc.stdout), proc.stdout
    run = _run_dir(tmp_path)
    assert sorted(p.name.split(".")[0] for p in (run / "profile").glob("*.pt.trace.json")) == ["rank0", "rank1"]
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 1


def test_four_processes_on_one_node(uneven_data, tmp_path):
    env, argv = as_written(readme_line(README_TWO_PROCESSES), uneven_data, tmp_path, "data.num_workers=0")
    proc = _run({**env, "NPROC_PER_NODE": "4"}, argv, timeout=600)
    _check_trained_to_the_end(proc, tmp_path, steps=10)
    assert "world_size=4" in proc.stdout


def _slurm_workspace(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A submit folder holding the repo's launch/ and configs/ (a job runs in the folder it was submitted
    from), and the environment with the stand-in Slurm commands first on PATH."""
    work = tmp_path / "submit"
    work.mkdir()
    for name in ("launch", "configs"):
        (work / name).symlink_to(REPO / name)
    state = tmp_path / "slurm-state"
    state.mkdir()
    env = {**launch_env(), "PATH": f"{FAKE_SLURM}{os.pathsep}{os.environ['PATH']}", "FAKE_SLURM": str(state),
           "NPROC_PER_NODE": "2", "MAX_RESTARTS": "0"}
    return work, env


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_slurm_script_submits_itself_and_requeues_on_a_preemption_notice(tiny_data, tmp_path):
    """Run directly, the script creates logs/ and submits itself (Slurm needs the log folder before the job
    starts); SIGUSR1 (the --signal notice) makes the workers checkpoint and the script requeue the job; the
    requeued job resumes from that checkpoint and finishes."""
    work, env = _slurm_workspace(tmp_path)
    line = readme_line(README_SLURM)
    words = shlex.split(line)[1:]  # the config and overrides
    words = [w for w in words if not w.startswith("train.run_name=")]
    config = {"configs/taobao.yaml": "configs/quickstart.yaml"}  # the README trains Taobao; tiny synthetic here
    args = [config.get(w, w) for w in words] + [
        "train.run_name=slurm-run", f"data.root={tiny_data}", "data.max_len=64", "data.batch_size=16",
        "train.log_every=1", "train.max_steps=40", f"train.output_dir={tmp_path}/runs",
        f"train.runs_table={tmp_path}/runs.jsonl", "logging.wandb_mode=disabled",
    ]
    state = Path(env["FAKE_SLURM"])
    submitted = subprocess.run(["launch/slurm.sbatch", *args], cwd=work, env=env, capture_output=True, text=True,
                               timeout=60)
    assert submitted.returncode == 0 and "Submitted batch job 1001" in submitted.stdout, submitted.stderr
    log = work / "logs" / "longer-train-1001.out"
    metrics = tmp_path / "runs" / "slurm-run" / "metrics.jsonl"
    _wait(lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 2, 300, "training to start")
    job = int((state / "job-1001.pid").read_text())
    os.kill(job, signal.SIGUSR1)  # Slurm's notice before the time limit
    _wait(lambda: (state / "requeued").exists(), 300, "the job to be requeued")
    text = log.read_text()
    assert "slurm.sbatch: SIGUSR1 received" in text, text[-3000:]
    stopped = re.search(r"longer-train: stopped at step (\d+) by SIGTERM, checkpoint saved", text)
    assert stopped and "Traceback" not in text, text[-3000:]
    assert (state / "requeued").read_text().split() == ["1001"]

    # the requeued job: Slurm runs the same script again, under the same job id, appending to the same log
    rerun = subprocess.run(["bash", "launch/slurm.sbatch", *args], cwd=work, capture_output=True, text=True,
                           timeout=400, env={**env, "SLURM_JOB_ID": "1001", "SLURM_NNODES": "1",
                                             "SLURM_JOB_NODELIST": "localhost", "SLURM_CPUS_PER_TASK": "2"})
    assert rerun.returncode == 0, rerun.stderr[-4000:]
    step = int(stopped.group(1))
    assert f"resumed from {tmp_path}/runs/slurm-run/checkpoints/step_{step:08d} at step {step}" in rerun.stdout
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert max(r["step"] for r in rows) == 40 and any("test/auc" in r for r in rows)
    shutil.rmtree(work / "logs")
