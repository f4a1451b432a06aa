"""Peer row: FuxiCTR's DIN, a public CTR library's model that this project did not write, trained on this project's
prepared data under this project's protocol and scored by this project's metrics.

    python benchmarks/peer_fuxictr.py CONFIG [CONFIG ...] [key=value ...]     # longer-train's arguments
    longer-sweep SPEC.yaml                                                    # a row with `peer: fuxictr_din`

What it does, for the run the config describes (data.root, data.max_len, data.batch_size, train.epochs,
train.seed, train.runs_table):
1. FuxiCTR (`fuxictr==2.3.10` and this project's torch) is installed from the package registry into its own
   virtual environment, `.venv-fuxictr/` at the repository root (git-ignored; `LONGER_FUXICTR_ENV` names another),
   never into the project's. The model is the one the package ships: `model_zoo.LongCTR.DIN` (FuxiCTR's DIN for
   long behaviour sequences, with its `LongCTRDataLoader`).
2. The adapter (`export`) writes the prepared sequence store in the layout that loader reads: per split a Parquet
   file of rows (label, user_index, item_index, seq_len and the user features), `user_info.parquet` (each user's
   whole event sequence, as rows of item_info) and `item_info.parquet` (one row per event and one per candidate,
   with their item features). A row's history is the first seq_len events of its user — the events strictly
   before the request, as this project's loader builds it — cut by the loader to the newest data.max_len. Every
   sequence feature of the dataset config (item, category, action) is an item feature; a candidate takes the
   value of its candidate feature on the same table (item, category), and a reserved id for a sequence feature
   it has none of (the action). Ids are shifted by one: 0 is FuxiCTR's padding. Dense (float) features are
   left out: the loader stacks every column into one array, and a float column would turn the indices into
   floats.
3. `peer_fuxictr_worker.py` trains the model in that environment with FuxiCTR's own training loop (`fit`: Adam,
   its gradient clipping, its end-of-epoch validation) and the model class's default settings (embedding 10,
   attention MLP [64] with Dice, DNN [512, 128, 64]), for train.epochs epochs with batches of data.batch_size on
   train.seed, and writes its predicted probabilities on the validation and test rows.
4. This project's metrics (components/metrics.py: AUC, GAUC, LogLoss, calibration, the bootstrap over test
   users) score those predictions, and one results line with the trainer's keys, the peer's settings, the commit
   and the resolved config is appended to train.runs_table.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from longer_train.components.metrics import ranking_metrics
from longer_train.config import Config, load_config, to_dict
from longer_train.data.row_groups import resolve_files
from longer_train.data.store import open_event_log
from longer_train.data.vocab import resolve_num_embeddings
from longer_train.provenance import code_state

ROOT = Path(__file__).resolve().parents[1]
FUXICTR_VERSION = "2.3.10"
WORKER = Path(__file__).with_name("peer_fuxictr_worker.py")
SPLITS = ("train", "valid", "test")
CODE = ("benchmarks/peer_fuxictr.py", "benchmarks/peer_fuxictr_worker.py")  # this line's code besides the package


def environment() -> Path:
    """The python of FuxiCTR's own virtual environment, created and installed on first use."""
    env = Path(os.environ.get("LONGER_FUXICTR_ENV", ROOT / ".venv-fuxictr"))
    python = env / "bin" / "python"
    check = [str(python), "-c", f"import fuxictr, torch; assert fuxictr.__version__ == {FUXICTR_VERSION!r}"]
    if python.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return python
    import torch  # the project's torch version, so that both sides compute in the same library

    print(f"peer_fuxictr: installing fuxictr=={FUXICTR_VERSION} into {env}", flush=True)
    subprocess.run([_base_python(), "-m", "venv", str(env)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", f"torch=={torch.__version__.split('+')[0]}",
                    f"fuxictr=={FUXICTR_VERSION}"], check=True)
    subprocess.run(check, check=True)
    return python


def _base_python() -> str:
    """The interpreter the project's virtual environment was made from (a venv of a venv works too)."""
    return getattr(sys, "_base_executable", sys.executable)


def _features(cfg: Config) -> tuple[list, dict, list]:
    """(sequence features, candidate feature by table, scalar user features) of the dataset config."""
    features = cfg.data.features
    candidates = {f.table: f for f in features if f.role == "candidate"}
    return ([f for f in features if f.role == "sequence"], candidates, [f for f in features if f.role == "user"])


def export(cfg: Config, out: Path) -> dict[str, dict[str, np.ndarray]]:
    """Write the store under cfg.data.root in LongCTRDataLoader's layout into `out` (skipped when `out` holds the
    export of the same data and features); returns per split the rows' user ids and labels in file order."""
    sequence, candidates, user = _features(cfg)
    tables = cfg.data.tables
    key = hashlib.sha1(json.dumps([cfg.data.root, [to_dict(cfg)["data"]["features"]]], sort_keys=True)
                       .encode()).hexdigest()[:12]
    rows = {split: pq.read_table(resolve_files(cfg.data.root, getattr(cfg.data, split))) for split in SPLITS}
    keys = {split: {"user": pc.fill_null(t.column(cfg.data.user_id), 0).to_numpy().astype(np.int64),
                    "label": t.column(cfg.data.label).to_numpy().astype(np.int64)} for split, t in rows.items()}
    if (out / ".complete").exists() and (out / ".complete").read_text() == key:
        return keys
    out.mkdir(parents=True, exist_ok=True)
    log = open_event_log(cfg.data)
    events = np.arange(log.num_events)
    # item_info: row 0 padding, rows 1..E the events, then one row per candidate (train, valid, test rows)
    item_info = {"item_index": [np.zeros(1, np.int64)]}
    for f in sequence:
        item_info[f.table] = [np.zeros(1, np.int64), log.values(f.name, events).astype(np.int64) + 1]
    first_candidate = 1 + log.num_events
    offset = first_candidate
    for split in SPLITS:
        table, n = rows[split], rows[split].num_rows
        for f in sequence:
            cand = candidates.get(f.table)
            none = tables[f.table].num_embeddings + 1  # the candidate has no value of this feature
            values = (pc.fill_null(table.column(cand.name), 0).to_numpy().astype(np.int64) + 1 if cand is not None
                      else np.full(n, none, np.int64))
            item_info[f.table].append(values)
        lo, end = log.before(keys[split]["user"], pc.fill_null(table.column(cfg.data.timestamp), 0).to_numpy()
                             .astype(np.int64))
        position = np.searchsorted(log.users, keys[split]["user"])
        found = (position < len(log.users)) & (log.users[np.minimum(position, len(log.users) - 1)]
                                               == keys[split]["user"]) if len(log.users) else np.zeros(n, bool)
        columns = {"label": keys[split]["label"], "user_index": np.where(found, position, len(log.users)),
                   "item_index": offset + np.arange(n, dtype=np.int64), "seq_len": (end - lo).astype(np.int64)}
        for f in user:
            if pa.types.is_integer(table.schema.field(f.name).type):
                columns[f.name] = pc.fill_null(table.column(f.name), 0).to_numpy().astype(np.int64) + 1
        pq.write_table(pa.table(columns), out / f"{split}.parquet")
        offset += n
    item_info["item_index"].append(np.arange(1, offset, dtype=np.int64))
    pq.write_table(pa.table({k: np.concatenate(v) for k, v in item_info.items()}), out / "item_info.parquet")
    # user_info: row u holds user u's events (item_info rows, oldest first); one empty row for users without any
    sequences = [np.arange(f, f + c, dtype=np.int64) + 1 for f, c in zip(log.first, log.count)]
    sequences.append(np.zeros(0, np.int64))
    pq.write_table(pa.table({"full_item_seq": pa.array(sequences, type=pa.list_(pa.int64()))}),
                   out / "user_info.parquet")
    scalar_users = [f for f in user if f.name in pq.read_schema(out / "train.parquet").names]
    spec = lambda source, vocab: {"source": source, "type": "categorical", "vocab_size": vocab, "padding_idx": 0}
    features = [{"user_index": {"type": "meta"}}, {"item_index": {"type": "meta"}}, {"seq_len": {"type": "meta"}}]
    features += [{f.name: spec("user", tables[f.table].num_embeddings + 1)} for f in scalar_users]
    features += [{f.table: spec("item", tables[f.table].num_embeddings + 2)} for f in sequence]
    feature_map = {"dataset_id": out.name, "num_fields": len(scalar_users) + len(sequence), "total_features": 0,
                   "input_length": 0, "labels": ["label"], "features": features}
    (out / "feature_map.json").write_text(json.dumps(feature_map, indent=2))
    (out / ".complete").write_text(key)
    return keys


def _logits(probabilities: np.ndarray) -> np.ndarray:
    p = np.clip(probabilities.astype(np.float64), 1e-12, 1 - 1e-12)
    return np.log(p / (1 - p))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    configs, overrides = [a for a in args if "=" not in a], [a for a in args if "=" in a]
    if not configs:
        print(__doc__.splitlines()[2].strip(), file=sys.stderr)
        return 2
    cfg = load_config(configs, overrides)
    resolve_num_embeddings(cfg.data)
    code = code_state(CODE)  # before training: a commit made meanwhile is not credited with this line
    python = environment()
    run_dir = Path(cfg.train.output_dir) / (cfg.train.run_name or f"fuxictr_din-seed{cfg.train.seed}")
    run_dir.mkdir(parents=True, exist_ok=True)
    data = Path(f"{cfg.data.root.rstrip('/')}-fuxictr")
    keys = export(cfg, data)
    predictions = run_dir / "predictions.npz"
    settings = {"epochs": cfg.train.epochs, "batch_size": cfg.data.batch_size, "max_len": cfg.data.max_len,
                "seed": cfg.train.seed}
    command = [str(python), str(WORKER), "--data", str(data), "--out", str(predictions), "--checkpoints",
               str(run_dir / "checkpoints"), *[f"--{k.replace('_', '-')}={v}" for k, v in settings.items()]]
    print("$ " + " ".join(command), flush=True)
    subprocess.run(command, check=True)
    result = np.load(predictions)
    metrics = {split: ranking_metrics(keys[split]["user"], keys[split]["label"], _logits(result[split]),
                                      replicates=cfg.train.test_bootstrap if split == "test" else 0)
               for split in ("valid", "test")}
    rows = len(keys["train"]["label"])
    line = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "run": run_dir.name, "model": "fuxictr_din",
        "max_len": cfg.data.max_len, "seed": cfg.train.seed, "steps": int(result["steps"]), "world_size": 1,
        "train_samples_per_s": rows * cfg.train.epochs / float(result["seconds"]),
        **{f"{split}_{k}": v for split, m in metrics.items() for k, v in m.items()},
        "data_root": cfg.data.root, "dense_params": int(result["dense_params"]),
        "peer": {"library": f"fuxictr {FUXICTR_VERSION}", "model": "model_zoo.LongCTR.DIN (class defaults)",
                 "embedding_params": int(result["embedding_params"]), **settings},
        **code, "config": to_dict(cfg),
    }
    table = Path(cfg.train.runs_table)
    table.parent.mkdir(parents=True, exist_ok=True)
    with table.open("a") as f:
        f.write(json.dumps(line) + "\n")
    print(f"fuxictr_din: test auc {metrics['test']['auc']:.4f} gauc {metrics['test']['gauc']:.4f} "
          f"logloss {metrics['test']['logloss']:.4f}; valid auc {metrics['valid']['auc']:.4f}")
    return 0 if math.isfinite(metrics["test"]["auc"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
