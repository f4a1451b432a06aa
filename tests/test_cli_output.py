"""What the command-line tools print. Bad input (data, paths, requests) is one line naming the file, row and
column with exit code 2 and no traceback (unless --debug / LONGER_DEBUG=1); warnings of the data loader
reach the console; the training loss, lr and samples/s are printed every log_every steps without the
progress bar; logging is rank-aware."""

import logging
import shutil

import pytest
from cli_runs import train_args
from data_faults import bad_label_copy

from longer_train.components.run_logger import setup_logging
from longer_train.data.schema import SchemaError
from longer_train.datasets import cli as data_cli
from longer_train.serve.cli import main as serve_main
from longer_train.train import main as train_main


def _args(data, tmp_path, *extra):
    return train_args(data, tmp_path, "train.checkpoint=false", *extra)


def test_a_bad_row_is_one_line_naming_file_row_and_column(tiny, tmp_path, capsys, monkeypatch):
    data, part = bad_label_copy(tiny, tmp_path)
    args = _args(data, tmp_path, "data.shuffle_buffer=0", "data.num_workers=1")  # raised in a loader worker
    assert train_main(args) == 2
    err = capsys.readouterr().err
    assert f"longer-train: error: {part}: row 3, column 'label'" in err, err
    assert "Traceback" not in err and "DataLoader worker" not in err
    args += ["data.num_workers=0", "parallel.pipeline=false"]  # the same error, sooner
    with pytest.raises(SchemaError, match="column 'label'"):  # --debug: the error with its traceback
        train_main([*args, "--debug"])
    monkeypatch.setenv("LONGER_DEBUG", "1")
    with pytest.raises(SchemaError):
        train_main(args)


def test_loader_warnings_and_the_training_loss_reach_the_console(tiny, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(tiny, data)
    (data / "train" / "zz-broken.parquet").write_bytes(b"not parquet")
    assert train_main(_args(data, tmp_path, "data.bad_files=skip")) == 0
    out, err = capsys.readouterr()
    assert "WARNING longer_train.data.row_groups: skipping file (data.bad_files=skip)" in err and "zz-broken" in err
    # without the progress bar, every log_every steps: the windowed loss, lr, grad norm and samples/s
    lines = [line for line in out.splitlines() if "train/loss" in line]
    assert [line.split()[1] for line in lines] == ["1/3", "2/3", "3/3"], out
    assert all(" lr " in line and "samples/s" in line for line in lines)


def test_the_progress_bar_shows_on_a_terminal_only(tiny, tmp_path, capsys, monkeypatch):
    args = [*_args(tiny, tmp_path, "train.progress_bar=true"), "train.run_name=bar"]
    assert train_main(args) == 0  # stderr is not a terminal here: no bar, no carriage-return redraws
    err = capsys.readouterr().err
    assert "\r" not in err and "step/s" not in err, err[-500:]
    monkeypatch.setattr("sys.stderr.isatty", lambda: True)
    assert train_main([*args[:-1], "train.run_name=bar-tty"]) == 0
    assert "step/s" in capsys.readouterr().err  # the same run on a terminal draws it


def test_logging_is_rank_aware(monkeypatch, capsys):
    log = logging.getLogger("longer_train.test")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    try:
        setup_logging()
        log.warning("a warning on rank 1")
        log.error("an error on rank 1")
        err = capsys.readouterr().err
        assert "a warning on rank 1" not in err and "[rank 1] ERROR longer_train.test: an error on rank 1" in err
        setup_logging(all_ranks=True)
        log.warning("a warning on rank 1")
        assert "[rank 1] WARNING longer_train.test: a warning on rank 1" in capsys.readouterr().err
    finally:
        monkeypatch.delenv("RANK")
        monkeypatch.delenv("WORLD_SIZE")
        setup_logging()


def test_longer_data_and_longer_serve_report_bad_paths_in_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert data_cli.main(["synthetic", "--out", str(tmp_path / "file" / "data"), "--users", "10"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("longer-data synthetic: error: ") and str(tmp_path / "file") in err
    assert "Traceback" not in err
    assert serve_main(["score", "--checkpoint", str(tmp_path / "nope"), "--requests", "r.parquet", "--out",
                       str(tmp_path / "o.parquet")]) == 2
    err = capsys.readouterr().err
    assert f"longer-serve score: error: {tmp_path / 'nope'}: no such checkpoint" in err and "Traceback" not in err


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("longer-train: error")]


def test_a_diverged_loss_is_one_line_with_its_own_exit_code(tiny, tmp_path, capsys):
    assert train_main(_args(tiny, tmp_path, "optim.lr=1e30", "optim.grad_clip=0")) == 3
    err = capsys.readouterr().err
    (line,) = _error_lines(err)
    assert "rank 0: the training loss is nan (learning rate" in line and "Lower optim.lr" in line, err
    assert "Traceback" not in err


def test_a_dense_model_too_large_for_memory_is_a_config_error(tiny, tmp_path, capsys):
    assert train_main(_args(tiny, tmp_path, "model.token_dim=100000")) == 2
    (line,) = _error_lines(capsys.readouterr().err)
    assert "GiB with their gradients and AdamW state" in line and "model.token_dim" in line


def test_online_wandb_without_a_login_is_one_line(tiny, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))  # no stored login
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    args = [a for a in _args(tiny, tmp_path) if not a.startswith("logging.wandb_mode")] + ["logging.wandb_mode=online"]
    assert train_main(args) == 2
    (line,) = _error_lines(capsys.readouterr().err)
    assert "logging.wandb_mode=online: W&B did not start" in line and "wandb login" in line


def test_unwritable_outputs_are_refused_before_training(tiny, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    args = _args(tiny, tmp_path)
    cases = ((f"train.runs_table={blocker}/runs.jsonl", f"'train.runs_table': {blocker}/runs.jsonl cannot be written"),
             (f"train.output_dir={blocker}/runs", f"train.output_dir: {blocker}/runs"))
    for override, expected in cases:
        assert train_main([*args, override]) == 2
        out, err = capsys.readouterr()
        (line,) = _error_lines(err)
        assert expected in line and "train/loss" not in out, line  # refused before any step


def test_print_config_shows_each_value_with_its_source_and_trains_nothing(tiny, tmp_path, capsys):
    args = [*train_args(tiny, tmp_path, "optim.lr=0.01"), "--print-config"]
    assert train_main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    source = {line.split(":")[0].strip(): line.rsplit("# ", 1)[1] for line in lines if "# " in line}
    assert source["lr"] == "override" and source["name"] == "configs/experiments/longer.yaml"
    assert source["allow_config_change"] == "default"
    assert [line for line in lines if line.startswith("      num_embeddings:")][0].endswith(
        f"# auto: {tiny}/meta.json")  # the vocabulary sizes resolved from the data
    assert not (tmp_path / "runs").exists() and not any(tmp_path.iterdir())  # nothing trained or written


@pytest.mark.parametrize("module, argv", [("longer_train.train", []), ("longer_train.datasets.cli", ["synthetic"]),
                                          ("longer_train.datasets.cli", ["prepare"]), ("longer_train.sweep.cli", []),
                                          ("longer_train.serve.cli", ["http"]), ("longer_train.serve.cli", ["score"])])
def test_help_answers_without_importing_torch_and_shows_defaults(module, argv):
    """`--help` of a console script parses its arguments before importing torch (which takes seconds)."""
    import subprocess
    import sys

    code = (f"import sys\nfrom {module} import main\ntry:\n    main({argv + ['--help']})\nexcept SystemExit:\n"
            "    pass\nprint('torch imported' if 'torch' in sys.modules else 'no torch')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stdout
    assert out.rstrip().endswith("no torch") and "usage:" in out, out[-2000:]
    assert "(default" in out or module.endswith(".train"), out  # longer-train's options are flags


def test_profile_steps_write_a_chrome_trace_of_those_steps(tiny, tmp_path, capsys):
    import json

    args = train_args(tiny, tmp_path, "train.run_name=p", "train.max_steps=5", "train.profile_steps=2",
                      "train.profile_after=1", "data.num_workers=0")
    assert train_main(args) == 0
    assert f"profile: 1 trace(s) of rank 0 in {tmp_path}/runs/p/profile" in capsys.readouterr().out
    (trace,) = (tmp_path / "runs" / "p" / "profile").glob("rank0.*.pt.trace.json")
    steps = {e["name"] for e in json.loads(trace.read_text())["traceEvents"] if e.get("name", "").startswith(
        "ProfilerStep#")}
    assert steps == {"ProfilerStep#2", "ProfilerStep#3"}  # after 1 skipped and 1 warm-up step: the next 2


def test_tensorboard_gets_the_logged_metrics_beside_the_jsonl(tiny, tmp_path):
    import json

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    args = train_args(tiny, tmp_path, "train.run_name=tb", "logging.tensorboard=true", "data.num_workers=0")
    assert train_main(args) == 0
    events = EventAccumulator(str(tmp_path / "runs" / "tb" / "tensorboard"))
    events.Reload()
    lines = [json.loads(line) for line in (tmp_path / "runs" / "tb" / "metrics.jsonl").read_text().splitlines()]
    logged = {(line["step"], key): value for line in lines for key, value in line.items() if key != "step"
              and isinstance(value, (int, float))}
    scalars = {(e.step, tag): e.value for tag in events.Tags()["scalars"] for e in events.Scalars(tag)}
    assert {tag for _, tag in scalars} >= {"train/loss", "valid/auc", "test/auc"}
    assert scalars.keys() == logged.keys()
    assert all(abs(scalars[k] - logged[k]) <= 1e-6 * max(1.0, abs(logged[k])) for k in logged)  # float32 in TB


def test_a_collective_timeout_is_one_line_naming_the_wait(tiny, tmp_path, capsys, monkeypatch):
    """A collective that waited its whole timeout (gloo's RuntimeError) ends in one line from the heartbeats
    (tests/distributed/test_process_group.py: which rank fell behind), exit 2, no traceback."""
    from longer_train.trainer import Trainer

    def hung(self):
        raise RuntimeError("[third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting 600000ms "
                           "for recv operation to complete")

    monkeypatch.setattr(Trainer, "_train", hung)
    assert train_main(_args(tiny, tmp_path, "parallel.collective_timeout_s=600")) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("longer-train")]
    assert len(lines) == 1 and "a collective waited parallel.collective_timeout_s=600 s" in lines[0], err
    assert "Traceback" not in err
