"""Launch and fault tolerance on 2 CPU ranks, through launch/torchrun.sh, with the pipeline on and validation
every 3 steps: a job killed with SIGKILL and started again with the same command continues from its latest
checkpoint to exactly the losses and metrics of an uninterrupted run (bitwise), and so does a run whose latest
checkpoint was damaged (it falls back to the previous one), a job whose launcher got SIGTERM (preemption: every
rank finishes its step, writes a checkpoint and exits with one line), a worker that got SIGTERM alone
(--max-restarts resumes it), and a job whose launcher was killed (its workers stop instead of running on as
orphans); so does the multi-node form (2 nodes x 1 process on this host); a checkpoint loads at another world
size; --max-restarts restarts a killed worker and the job finishes; a rank that raises ends the job with its
error instead of a hang; a node lost in the multi-node form ends the job, which resumes when launched again.
docs/distributed.md, "Failure and restart", names these tests."""

import fcntl
import json
import re
import shutil
import socket
import subprocess
import time

import pytest
from data_faults import bad_label_copy
from torchrun_launch import REPO, launch, launch_env

STEPS, SAVE_AT = 8, 4


def _command(tiny_data, tmp_path, name, *extra):
    return [
        "configs/quickstart.yaml", f"data.root={tiny_data}", "data.max_len=64",
        "data.batch_size=32", "data.num_workers=1", f"train.max_steps={STEPS}", "train.log_every=1",
        "train.eval_every=3",  # mid-run validation under the pipeline (it must not disturb the next step)
        f"train.checkpoint_every={SAVE_AT}", f"train.output_dir={tmp_path}", f"train.run_name={name}",
        f"train.runs_table={tmp_path}/runs.jsonl", "logging.wandb_mode=disabled", "train.progress_bar=false",
        # the training metrics' window starts empty after a resume (it is not checkpointed); of 1 step it holds
        # the current step only, so its NE / AUC / calibration are compared bitwise too
        "train.metrics_window=1",
        # table-wise: a rank holds no shard (and no optimizer state) of some tables, the case DCP drops
        *[f"data.tables.{t}.sharding_type=table_wise" for t in ("item", "category", "action", "user", "segment")],
        *extra,
    ]


def _metrics(tmp_path, name) -> dict[int, dict]:
    """step -> the metrics logged at that step; a resumed run's lines replace the killed run's."""
    by_step: dict[int, dict] = {}
    for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        by_step.setdefault(row["step"], {}).update(row)
    return by_step


def _comparable(metrics: dict[int, dict]) -> dict[int, dict]:
    drop = ("train/samples_per_s", "train/peak_memory_gib", "train/mfu")  # wall-clock and memory
    return {s: {k: v for k, v in m.items() if k not in drop} for s, m in metrics.items()}


@pytest.fixture(scope="module")
def uninterrupted_run(tiny_data, tmp_path_factory):
    """(output dir, metrics) of the uninterrupted 2-rank run; its checkpoints are steps 4 and 8."""
    out = tmp_path_factory.mktemp("uninterrupted")
    proc = launch(_command(tiny_data, out, "run"), NPROC_PER_NODE="2")
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out, _comparable(_metrics(out, "run"))


@pytest.fixture(scope="module")
def uninterrupted(uninterrupted_run):
    return uninterrupted_run[1]


def test_kill_9_and_restart_continues_bitwise(tiny_data, tmp_path, uninterrupted):
    command = _command(tiny_data, tmp_path, "run", f"train.fault_at_step={SAVE_AT + 1}", "train.fault_rank=1")
    killed = launch(command, NPROC_PER_NODE="2")
    assert killed.returncode != 0 and "SIGKILL" in killed.stderr, killed.stderr[-3000:]
    assert max(_metrics(tmp_path, "run")) == SAVE_AT + 1  # it got past the checkpoint, then died
    restarted = launch(command, NPROC_PER_NODE="2")  # the same command: it finds the checkpoint itself
    assert restarted.returncode == 0, restarted.stderr[-4000:]
    assert f"resumed from {tmp_path}/run/checkpoints/step_{SAVE_AT:08d} at step {SAVE_AT}" in restarted.stdout
    resumed = _comparable(_metrics(tmp_path, "run"))
    assert sorted(resumed) == sorted(uninterrupted) == list(range(1, STEPS + 1))
    for step in uninterrupted:
        assert resumed[step] == uninterrupted[step], step  # bitwise: losses, lr, grad norm, valid/test metrics


def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one_bitwise(tiny_data, tmp_path, uninterrupted_run):
    out, uninterrupted = uninterrupted_run
    shutil.copytree(out / "run", tmp_path / "run")
    latest = tmp_path / "run" / "checkpoints" / f"step_{STEPS:08d}"
    data = latest / "__0_0.distcp"  # rank 0's tensors; rank 1 is the one that verifies this file
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2 : len(raw) // 2 + 256] = bytes(256)
    data.write_bytes(bytes(raw))
    rerun = launch(_command(tiny_data, tmp_path, "run"), NPROC_PER_NODE="2")
    assert rerun.returncode == 0, rerun.stderr[-4000:]
    assert f"checkpoint {latest} skipped: __0_0.distcp does not match its SHA-256" in rerun.stderr
    assert f"resumed from {tmp_path}/run/checkpoints/step_{SAVE_AT:08d} at step {SAVE_AT}" in rerun.stdout
    assert _comparable(_metrics(tmp_path, "run")) == uninterrupted  # steps 5.. trained again, bitwise the same


@pytest.mark.parametrize("saved_ranks, resumed_ranks", [(2, 1), (1, 2)])
def test_resume_on_another_world_size(tiny_data, tmp_path, saved_ranks, resumed_ranks):
    command = _command(tiny_data, tmp_path, "run", f"train.fault_at_step={SAVE_AT}", "train.fault=raise")
    first = launch(command, NPROC_PER_NODE=str(saved_ranks))
    assert first.returncode != 0 and (tmp_path / "run" / "checkpoints" / f"step_{SAVE_AT:08d}").is_dir()
    second = launch(command, NPROC_PER_NODE=str(resumed_ranks))
    assert second.returncode == 0, second.stderr[-4000:]
    assert f"saved with world_size={saved_ranks}, now {resumed_ranks}" in second.stdout
    metrics = _metrics(tmp_path, "run")
    assert max(metrics) == STEPS and "test/auc" in metrics[STEPS]


def test_max_restarts_recovers_a_killed_worker(tiny_data, tmp_path, uninterrupted):
    command = _command(tiny_data, tmp_path, "run", f"train.fault_at_step={SAVE_AT + 2}", "train.fault_rank=1")
    proc = launch(command, NPROC_PER_NODE="2", MAX_RESTARTS="1")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert _comparable(_metrics(tmp_path, "run")) == uninterrupted


def test_a_rank_that_raises_fails_the_job_with_its_error(tiny_data, tmp_path):
    command = _command(tiny_data, tmp_path, "run", "train.fault_at_step=2", "train.fault_rank=1", "train.fault=raise")
    proc = launch(command, timeout=240, NPROC_PER_NODE="2")  # a hang would hit the timeout and fail the test
    assert proc.returncode != 0
    assert "injected fault on rank 1 after step 2" in proc.stderr


def test_a_data_error_is_one_line_in_the_jobs_failure_summary(tiny_data, tmp_path):
    data, part = bad_label_copy(tiny_data, tmp_path)
    proc = launch(_command(data, tmp_path, "run", "data.shuffle_buffer=0"), timeout=240, NPROC_PER_NODE="2")
    assert proc.returncode != 0
    root_cause = proc.stderr.split("Root Cause (first observed failure)")[-1]
    assert re.search(rf"traceback : longer-train: error \(rank \d\): {re.escape(str(part))}: row 3, column 'label'",
                     root_cause), proc.stderr[-3000:]


def _two_nodes(command: list[str]) -> list[subprocess.CompletedProcess]:
    """`launch/torchrun.sh` as on 2 nodes of 1 process each, through the c10d rendezvous on this host."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"NNODES": "2", "NPROC_PER_NODE": "1", "RDZV_ENDPOINT": f"127.0.0.1:{port}", "RDZV_ID": "test"}
    nodes = [
        subprocess.Popen([str(REPO / "launch" / "torchrun.sh"), *command], cwd=REPO, env={**launch_env(), **env},
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    try:
        outputs = [node.communicate(timeout=300) for node in nodes]
    except subprocess.TimeoutExpired:  # a hang: end both nodes and show what each printed, to tell where
        for node in nodes:
            node.kill()
        tails = [f"node {i}: stdout ...{out[-2000:]}\nstderr ...{err[-4000:]}"
                 for i, (out, err) in enumerate(node.communicate() for node in nodes)]
        raise AssertionError("the two nodes did not finish within 300 s:\n" + "\n".join(tails)) from None
    return [subprocess.CompletedProcess(n.args, n.returncode, out, err) for n, (out, err) in zip(nodes, outputs)]


def test_multi_node_form_trains_like_one_node_and_survives_a_node_loss(tiny_data, tmp_path, uninterrupted):
    """The rank of one "node" dies after the step-4 checkpoint (as when its machine goes down): the other
    node's rank fails in its next collective and both launchers end the job (no hang); launched again on both
    nodes, the job resumes from that checkpoint to the uninterrupted run's numbers."""
    lost = _two_nodes(_command(tiny_data, tmp_path, "run", f"train.fault_at_step={SAVE_AT + 1}", "train.fault_rank=1"))
    assert all(node.returncode != 0 for node in lost), [node.stderr[-2000:] for node in lost]
    again = _two_nodes(_command(tiny_data, tmp_path, "run", f"train.fault_at_step={SAVE_AT + 1}", "train.fault_rank=1"))
    assert [node.returncode for node in again] == [0, 0], [node.stderr[-3000:] for node in again]
    assert _comparable(_metrics(tmp_path, "run")) == uninterrupted

def _stopped_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if "stopped at step" in line]
    assert len(lines) == 1, stderr[-3000:]  # one line, from rank 0
    return lines[0]


def test_sigterm_to_the_launcher_checkpoints_and_the_same_command_resumes_bitwise(tiny_data, tmp_path, uninterrupted):
    command = _command(tiny_data, tmp_path, "run", f"train.fault_at_step={SAVE_AT + 1}", "train.fault=term_launcher",
                       "train.fault_rank=1", "logging.wandb_mode=offline")
    stopped = launch(command, NPROC_PER_NODE="2")
    assert stopped.returncode == 128 + 15, stopped.stderr[-3000:]  # the launcher: ended by SIGTERM
    line = _stopped_line(stopped.stderr)
    step = int(re.search(r"stopped at step (\d+) by SIGTERM, checkpoint saved \((.*)\); run the same command to "
                         "resume", line).group(1))
    assert SAVE_AT < step < STEPS and "Traceback" not in stopped.stderr, stopped.stderr[-3000:]
    assert (tmp_path / "run" / "checkpoints" / f"step_{step:08d}" / "manifest.json").is_file()
    assert not list((tmp_path / "run" / "checkpoints").glob(".*"))  # no half-written save left
    resumed = launch(command, NPROC_PER_NODE="2")
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert f"resumed from {tmp_path}/run/checkpoints/step_{step:08d} at step {step}" in resumed.stdout
    assert _comparable(_metrics(tmp_path, "run")) == uninterrupted
    # the resumed job continued the same W&B run
    ids = {p.name.rsplit("-", 1)[1] for p in (tmp_path / "run" / "wandb").glob("offline-run-*")}
    assert len(list((tmp_path / "run" / "wandb").glob("offline-run-*"))) == 2 and len(ids) == 1


def test_sigterm_to_one_worker_is_restarted_by_max_restarts_bitwise(tiny_data, tmp_path, uninterrupted):
    command = _command(tiny_data, tmp_path, "run", f"train.fault_at_step={SAVE_AT + 1}", "train.fault=term",
                       "train.fault_rank=1")
    proc = launch(command, NPROC_PER_NODE="2", MAX_RESTARTS="1")
    assert proc.returncode == 0, proc.stderr[-4000:]
    _stopped_line(proc.stderr)  # the first attempt stopped with a checkpoint, the restart resumed it
    assert _comparable(_metrics(tmp_path, "run")) == uninterrupted


def _wait_for_unlock(run_dir, timeout: float = 120) -> None:
    """Until no process holds the run folder's lock (the job's rank 0 has exited)."""
    deadline = time.monotonic() + timeout
    with open(run_dir / "lock", "r+") as f:
        while True:
            try:
                fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.lockf(f, fcntl.LOCK_UN)
                return
            except OSError:
                assert time.monotonic() < deadline, "the workers outlived their launcher"
                time.sleep(0.5)


def test_a_killed_launcher_stops_its_workers_with_a_checkpoint(tiny_data, tmp_path, uninterrupted):
    command = _command(tiny_data, tmp_path, "run", f"train.fault_at_step={SAVE_AT + 1}", "train.fault=kill_launcher",
                       "train.fault_rank=1")
    killed = launch(command, NPROC_PER_NODE="2")
    assert killed.returncode == -9, killed.stderr[-3000:]  # launch.sh exec'd torchrun, which got SIGKILL
    _wait_for_unlock(tmp_path / "run")
    saved = sorted((tmp_path / "run" / "checkpoints").glob("step_*"))
    assert int(saved[-1].name[5:]) > SAVE_AT  # the orphaned workers wrote a checkpoint as they stopped
    resumed = launch(command, NPROC_PER_NODE="2")
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert _comparable(_metrics(tmp_path, "run")) == uninterrupted
