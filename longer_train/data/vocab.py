"""Embedding table sizes from the data: `num_embeddings: auto` is replaced at startup by the size the prepared
dataset's meta.json records for the table's columns, and a fixed number is checked against it, so a config that
does not fit the data fails before training starts (a ConfigError naming the key), not at the first batch."""

from __future__ import annotations

import json
from pathlib import Path

from ..config import ConfigError, DataConfig

# meta.json "vocab" key of each column the dataset writers produce (datasets/): `num_embeddings: auto` reads
# meta["num_embeddings"], or this mapping for datasets written before it existed
VOCAB_OF_COLUMN = {"user_id": "users", "item_id": "items", "hist_item_id": "items", "category_id": "categories",
                   "hist_category_id": "categories", "hist_action": "actions", "user_segment": "user_segments"}


def dataset_sizes(root: str | Path) -> dict[str, int] | None:
    """Column -> vocabulary size from ROOT/meta.json (`num_embeddings`, or the `vocab` of datasets written
    before it existed); None without a readable meta.json."""
    path = Path(root) / "meta.json"
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict):
        return None
    vocab = meta.get("vocab", {})
    return meta.get("num_embeddings") or {c: vocab[k] for c, k in VOCAB_OF_COLUMN.items() if k in vocab}


def resolve_num_embeddings(data: DataConfig) -> None:
    """Set every `num_embeddings: auto` from the data and check fixed sizes (idempotent)."""
    sizes = None
    for name, table in data.tables.items():
        columns = [f.name for f in data.features if f.table == name]
        if sizes is None:
            sizes = dataset_sizes(data.root) or {}
        known = {c: int(sizes[c]) for c in columns if c in sizes}
        key = f"data.tables.{name}.num_embeddings"
        if table.num_embeddings == "auto":
            if not known:
                where = (f"{Path(data.root) / 'meta.json'} has no size for its columns {', '.join(columns)}" if sizes
                         else f"there is no readable {Path(data.root) / 'meta.json'}")
                raise ConfigError(f"config key '{key}' is auto, but {where}; set the vocabulary size as a number")
            table.num_embeddings = max(known.values())
        elif known and table.oov == "error" and max(known.values()) > table.num_embeddings:
            column = max(known, key=known.get)
            raise ConfigError(
                f"config key '{key}' is {table.num_embeddings}, but the dataset at {data.root} has {known[column]} ids "
                f"in column '{column}' (meta.json): ids {table.num_embeddings}..{known[column] - 1} would be out of "
                "the vocabulary; use num_embeddings: auto (or a number at least that large), or oov: hash / oov_row")
