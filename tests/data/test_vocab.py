"""`num_embeddings: auto`: table sizes read from the dataset's meta.json when a loader or the trainer starts, so one
dataset config serves every copy of a dataset; a fixed size is checked against the data before any batch."""

import json
from pathlib import Path

import pytest

from longer_train.config import ConfigError, load_config
from longer_train.data.loader import build_dataloader
from longer_train.data.vocab import resolve_num_embeddings
from longer_train.datasets import prepare

MOVIELENS = Path(__file__).resolve().parents[2] / "configs" / "datasets" / "movielens.yaml"


@pytest.fixture(scope="module")
def copies(tmp_path_factory):
    """Two MovieLens copies of different vocabulary sizes, prepared: an ML-1M-like and an ML-100K-like one."""
    root = tmp_path_factory.mktemp("copies")
    (root / "ml-1m").mkdir()
    (root / "ml-1m" / "ratings.dat").write_text("".join(
        f"{u}::{m}::{1 + (u * m) % 5}::{1000 + 7 * (u * 40 + m)}\n" for u in range(1, 9) for m in range(1, 30)))
    (root / "ml-1m" / "movies.dat").write_text("".join(f"{m}::Movie {m}::{'Drama' if m % 3 else 'Comedy'}\n"
                                                       for m in range(1, 30)))
    (root / "ml-100k").mkdir()
    (root / "ml-100k" / "u.data").write_text("".join(
        f"{u}\t{m}\t{1 + (u + m) % 5}\t{5000 + 11 * (u * 60 + m)}\n" for u in range(1, 14) for m in range(1, 51)))
    for name in ("ml-1m", "ml-100k"):
        prepare.prepare("movielens", root / name, root / f"{name}-prepared")
    return root


@pytest.mark.parametrize("copy", ["ml-1m", "ml-100k"])
def test_one_dataset_config_serves_every_copy(copies, copy):
    data = load_config(MOVIELENS, [f"data.root={copies / f'{copy}-prepared'}"]).data
    assert {t.num_embeddings for t in data.tables.values()} == {"auto"}
    resolve_num_embeddings(data)
    loader = build_dataloader(data, "train", train=True, seed=0)
    vocab = json.loads((copies / f"{copy}-prepared" / "meta.json").read_text())["vocab"]
    sizes = {name: t.num_embeddings for name, t in data.tables.items()}
    assert sizes == {"item": vocab["items"], "category": vocab["categories"], "action": 5, "user": vocab["users"]}
    assert sum(b.size for b in loader) == loader.num_rows() > 0


def test_a_fixed_size_smaller_than_the_data_fails_before_any_batch(copies):
    root = copies / "ml-100k-prepared"
    data = load_config(MOVIELENS, [f"data.root={root}", "data.tables.item.num_embeddings=10"]).data
    with pytest.raises(ConfigError, match=r"'data.tables.item.num_embeddings' is 10, but the dataset at .* has 50 ids "
                                          r"in column 'item_id'.*use num_embeddings: auto"):
        resolve_num_embeddings(data)
    bigger = load_config(MOVIELENS, [f"data.root={root}", "data.tables.item.num_embeddings=64"]).data
    resolve_num_embeddings(bigger)
    assert bigger.tables["item"].num_embeddings == 64 and bigger.tables["user"].num_embeddings == 13
    hashed = load_config(MOVIELENS, [f"data.root={root}", "data.tables.item.num_embeddings=10",
                                     "data.tables.item.oov=hash"]).data
    resolve_num_embeddings(hashed)  # ids beyond the table are hashed: a smaller table is a choice, not an error
    assert hashed.tables["item"].num_embeddings == 10


def test_auto_without_meta_json_and_bad_values_are_config_errors(tmp_path):
    data = load_config(MOVIELENS, [f"data.root={tmp_path}"]).data
    with pytest.raises(ConfigError, match=r"'data.tables.item.num_embeddings' is auto, but there is no readable "):
        resolve_num_embeddings(data)
    with pytest.raises(ConfigError, match=r"num_embeddings' must be a positive integer or 'auto', got 'many'"):
        load_config(MOVIELENS, ["data.tables.item.num_embeddings=many"])
    with pytest.raises(ConfigError, match=r"num_embeddings' must be of type int or str, got 1.5"):
        load_config(MOVIELENS, ["data.tables.item.num_embeddings=1.5"])
