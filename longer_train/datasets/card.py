"""A prepared dataset's statistics and its card (CARD.md): what it is, how it was made, its terms of use, its
numbers and what was skipped, written from its meta.json (`prepare.py`)."""

from __future__ import annotations

import numpy as np

from .writer import SPLITS

TERMS = {
    "movielens": "GroupLens terms: research use only, no commercial use, no endorsement, cite Harper & Konstan "
                 "(2015); the data may not be redistributed without permission. Keep this folder private.",
    "taobao": "Tianchi dataset 649: non-commercial research use; cite Zhu et al., KDD 2018. Do not "
              "redistribute this folder.",
}


def percentiles_of_counts(values: np.ndarray, counts: np.ndarray) -> dict:
    """np.percentile (linear) p50/p90/p99 and max/mean/empty of a multiset given as (value, count) pairs."""
    if not counts.sum():
        return {"p50": 0, "p90": 0, "p99": 0, "max": 0, "mean": 0.0, "empty": 0}
    order = np.argsort(values)
    values, counts = values[order].astype(np.float64), counts[order]
    ends = np.cumsum(counts)  # sorted position after each value
    n = int(ends[-1])

    def at(q: float) -> int:
        pos = q / 100 * (n - 1)
        lo, hi = int(np.floor(pos)), int(np.ceil(pos))
        v_lo, v_hi = values[np.searchsorted(ends, lo, side="right")], values[np.searchsorted(ends, hi, side="right")]
        return int(v_lo + (v_hi - v_lo) * (pos - lo))

    return {"p50": at(50), "p90": at(90), "p99": at(99), "max": int(values[-1]),
            "mean": round(float((values * counts).sum() / n), 1), "empty": int(counts[values == 0].sum())}


def card(meta: dict) -> str:
    """The human-readable dataset card (CARD.md) for a prepared dataset's meta.json."""
    lines = [f"# {meta['dataset']}: {meta['source']['format']}", "",
             "Prepared by `longer-data prepare` (docs/data.md, \"Public datasets\") as a sequence store: each user's "
             "events once in `events/`, sorted by user then time, and one sample row per interaction in the splits.",
             "", "Source: " + ", ".join(f"{k} `{v}`" for k, v in meta["source"].items() if k != "format"), "",
             f"Terms: {TERMS[meta['dataset']]}", "", "## Definitions", ""]
    lines += [f"- {note}" for note in meta["notes"]]
    lines += ["- one row per interaction; its history (rebuilt by the loader) = the same user's events with a strictly "
              "smaller timestamp, oldest first, in (timestamp, item id, file order) order, newest `data.max_len` kept",
              "- ids are dense 0..n-1 in the order of the raw values; vocab/<table>.parquet maps `raw` -> `id`",
              f"- split by time: train < {meta['time_split']['valid_from']} <= valid < "
              f"{meta['time_split']['test_from']} <= test (unix seconds); rows shuffled within a split",
              "", "## Numbers", "", "| split | rows | positive rate |", "|---|---|---|"]
    lines += [f"| {s} | {meta['rows'][s]} | {meta['positive_rate'][s]:.4f} |" for s in SPLITS]
    if "before_sampling" in meta:
        before = meta["before_sampling"]
        lines += ["", "Sampling (" + ", ".join(meta["sampling"]) + ") changed the rows and the label balance; before "
                  "the cut:", "", "| split | rows before | positive rate before | rows after | positive rate after |",
                  "|---|---|---|---|---|"]
        lines += [f"| {s} | {before['rows'][s]} | {before['positive_rate'][s]:.4f} | {meta['rows'][s]} | "
                  f"{meta['positive_rate'][s]:.4f} |" for s in SPLITS]
    lines += ["", "| history length (events before the row) | " + " | ".join(meta["history_length"]) + " |",
              "|---" * (len(meta["history_length"]) + 1) + "|",
              "| rows written | " + " | ".join(str(v) for v in meta["history_length"].values()) + " |",
              "", "Vocabulary sizes (= `num_embeddings: auto`): "
              + ", ".join(f"{k} {v}" for k, v in meta["vocab"].items()), "",
              f"Events: {meta['events']['rows']} in `events/`. Size on disk: {meta['size_mb']} MB of Parquet.", "",
              "## Skipped input", ""]
    lines += [f"- {reason}: {count} (first: {meta['skipped_first'][reason]})"
              for reason, count in meta["skipped"].items()] or ["- none"]
    lines += ["", f"Duplicate rows (the same user, item, category, action, timestamp and label as an earlier line): "
              f"{meta.get('duplicate_rows', 0)}, kept."]
    return "\n".join(lines) + "\n"
