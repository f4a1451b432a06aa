"""Every command of README.md's bash blocks that prepares data, trains or launches runs, as written, at tiny
size: its data swapped for tiny files in the same formats (a generated MovieLens ratings.dat and Taobao
UserBehavior.csv for `PATH`, a small synthetic set for `data/synthetic`), its outputs in a temporary folder,
and a few settings appended (steps, batch, history length) where the command leaves them to its config. The
launch lines run by tests/distributed/test_launch.py and the serving lines (tests/serve/) are named here, so a
new README command that nobody runs fails this test."""

import os
import random
import re
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TINY = ["data.max_len=64", "data.batch_size=32", "data.eval_batch_size=256", "train.max_steps=3",
        "train.eval_every=2", "train.log_every=1", "train.progress_bar=false", "logging.wandb_mode=disabled"]
# commands run by other tests (a prefix of the README line -> the test that runs it)
RUN_ELSEWHERE = {
    "NPROC_PER_NODE=2 launch/torchrun.sh": "tests/distributed/test_launch.py",
    "launch/slurm.sbatch": "tests/distributed/test_launch.py",
    ".venv/bin/longer-serve": "tests/serve/",
    "make test": "CI itself (.ci/run)",
    # its experiments x seeds take minutes even on tiny data; its report is tests/test_bench_quality.py
    "make bench-quality": "tests/test_bench_quality.py",
}


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    lines = [line.split(" #")[0].strip() for block in re.findall(r"```bash\n(.*?)```", text, re.S)
             for line in block.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def _write_movielens(folder: Path, users: int = 80, ratings: int = 30) -> None:
    """ML-1M's ratings.dat and movies.dat (UserID::MovieID::Rating::Timestamp)."""
    rng = random.Random(0)
    folder.mkdir(parents=True)
    movies = range(1, 201)
    lines = [f"{u}::{m}::{rng.randint(1, 5)}::{978300000 + 60 * i + u}" for u in range(1, users + 1)
             for i, m in enumerate(rng.sample(movies, ratings))]
    (folder / "ratings.dat").write_text("\n".join(lines) + "\n", encoding="latin-1")
    genres = ["Action", "Comedy", "Drama", "Thriller"]
    (folder / "movies.dat").write_text("".join(f"{m}::Movie {m} (1995)::{genres[m % 4]}\n" for m in movies),
                                       encoding="latin-1")


def _write_taobao(path: Path, users: int = 80, events: int = 40) -> None:
    """UserBehavior.csv (user,item,category,behavior,timestamp) inside the dataset's 9-day window."""
    from longer_train.datasets.sources import TAOBAO_WINDOW

    rng = random.Random(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    behaviors = ["pv"] * 8 + ["fav", "cart", "buy"]
    lines = [f"{u},{rng.randint(1, 300)},{rng.randint(1, 20)},{rng.choice(behaviors)},{TAOBAO_WINDOW[0] + 600 * i + u}"
             for u in range(1, users + 1) for i in range(events)]
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """PATH (raw downloads) and data/ of the README commands, in a temporary folder."""
    root = tmp_path_factory.mktemp("readme")
    _write_movielens(root / "PATH" / "ml-1m")
    _write_taobao(root / "PATH" / "UserBehavior.csv")
    return root


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tiny(line: str, work: Path) -> list[tuple[dict[str, str], list[str]]]:
    """(environment, argv) of each process that runs `line` at tiny size, or [] for a command another test
    runs; an unknown command fails."""
    line = re.sub(r"\[([^\]]+)\]", r"\1", line)  # optional arguments: given
    line = line.replace("PATH/", f"{work}/PATH/")
    line = re.sub(r"(?<![\w./-])data/", f"{work}/data/", line)
    words = shlex.split(line)
    env = dict(w.split("=", 1) for w in words if re.match(r"^[A-Z_]+=", w))
    words = [w for w in words if not re.match(r"^[A-Z_]+=", w)]
    outputs = [f"train.output_dir={work}/runs", f"train.runs_table={work}/runs.jsonl"]
    settings = lambda given: [s for s in TINY + outputs if s.split("=")[0] + "=" not in " ".join(given)]
    if any(line.startswith(prefix) for prefix in RUN_ELSEWHERE):
        return []
    if words[:2] == [".venv/bin/longer-data", "synthetic"]:
        words = [w for w in words]
        for flag, tiny in (("--users", "120"), ("--max-len", "64")):
            words[words.index(flag) + 1] = tiny
        return [(env, words)]
    if words[:2] == [".venv/bin/longer-data", "prepare"]:
        return [(env, words)]
    if words[0] == ".venv/bin/longer-train":
        root = [] if any(w.startswith("data.root=") for w in words) else [_default_root(words, work)]
        return [(env, words + root + settings(words))]
    if words[0] == "launch/torchrun.sh" and "NNODES" in env:  # the same line on each of 2 "nodes" of this host
        nodes = {**env, "NNODES": "2", "NPROC_PER_NODE": "1", "RDZV_ENDPOINT": f"127.0.0.1:{_free_port()}"}
        argv = words + [_default_root(words, work)] + settings(words)
        return [(nodes, argv), (nodes, argv)]
    if words[:2] in (["make", "train"], ["make", "train-paper"]):
        return [(env, [*words, f"DATA_DIR={work}/data/synthetic", f"ARGS={' '.join(settings([]))}"])]
    if words[:2] == ["make", "reproduce"] or words[0] == ".venv/bin/longer-sweep":
        sweep = ["--seeds=1", f"--results={work}/sweeps", f"--runs={work}/sweep-runs", f"--figures={work}/figures",
                 f"data.root={work}/data/synthetic", "data.max_len=64", "data.batch_size=32", "train.max_steps=1"]
        if words[0] == "make":
            return [(env, [*words, f"SWEEP_ARGS={' '.join(sweep)}"])]
        return [(env, words + sweep)]
    raise AssertionError(f"README.md command not run by any test: {line!r} (run it here or in RUN_ELSEWHERE)")


def _default_root(words: list[str], work: Path) -> str:
    """data.root for a command that leaves it to its dataset config: the tiny prepared copy of that dataset."""
    for dataset, folder in (("taobao", "taobao"), ("movielens", "ml-1m"), ("synthetic", "synthetic"),
                            ("quickstart", "synthetic")):
        if any(dataset in w for w in words if w.endswith(".yaml")):
            return f"data.root={work}/data/{folder}"
    raise AssertionError(f"no tiny data for {words}")


def _order(line: str) -> int:
    """Data first (the README's prepare lines come after the lines that train on their output)."""
    return 0 if "longer-data" in line else 1


def test_every_readme_command_runs_at_tiny_size(work):
    commands = sorted(readme_commands(), key=_order)
    assert any("launch/torchrun.sh" in c for c in commands) and any("longer-data prepare" in c for c in commands)
    failures = []
    for line in commands:
        processes = _tiny(line, work)
        if not processes:
            continue
        env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "PYTHON": sys.executable,
               "MAX_RESTARTS": "0", "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
        start = time.monotonic()
        running = [subprocess.Popen(argv, cwd=REPO, env={**env, **extra}, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True) for extra, argv in processes]
        for proc in running:
            out = proc.communicate(timeout=600)[0]
            if proc.returncode != 0:
                failures.append(f"{line}\n  exit {proc.returncode}: {out[-2500:]}")
        print(f"{time.monotonic() - start:5.1f} s  {line}")
    assert not failures, "\n\n".join(failures)
    assert (work / "runs.jsonl").read_text().count("\n") >= 5  # each training command finished with a results line
