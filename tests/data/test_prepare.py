"""`longer-data prepare`: every accepted MovieLens/Taobao format on tiny files, histories (rebuilt from the store's
event log), labels, vocab, time split, sampling with its before/after numbers, skipped-line counts, every unreadable
input as a PrepareError naming the file (issue 15), idempotence and refusal to overwrite."""

import gzip
import json
import os
import zipfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from data_configs import data_config

from longer_train.data.schema import validate_batch, validate_schema
from longer_train.data.store import open_event_log, read_inline
from longer_train.datasets import cli, prepare, sources, text

SPLITS = ("train", "valid", "test")

# user::movie::rating::timestamp; user 10 rates movies 100 and 200 in the same second, and movie 200 is
# listed first, so the stable order (timestamp, then movie id) differs from the file order; every split gets rows
# (a split with none is an error)
ML1M_RATINGS = [
    (10, 200, 3, 1000), (10, 100, 5, 1000), (10, 50, 4, 900), (10, 300, 2, 1100), (10, 400, 4, 1300),
    (20, 100, 1, 950), (20, 300, 4, 1200), (20, 50, 5, 1250), (20, 200, 2, 1260),
    (30, 200, 5, 1050), (30, 400, 3, 1150), (30, 100, 4, 1400),
]
ML1M_MOVIES = {50: ("Heat (1995)", "Action|Crime"), 100: ("Toy Story (1995)", "Animation|Comedy"),
               200: ("Casino (1995)", "Drama|Thriller"), 300: ("Sabrina (1995)", "Comedy|Romance")}  # no 400


def _ml1m_text(rows) -> str:
    return "".join("::".join(map(str, r)) + "\n" for r in rows)


def _movies_dat() -> str:
    return "".join(f"{m}::{title}::{genres}\n" for m, (title, genres) in ML1M_MOVIES.items())


def _write_ml1m(folder, kind: str):
    """ML-1M in one of its accepted forms; returns the --src to pass."""
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "plain":
        (folder / "ratings.dat").write_text(_ml1m_text(ML1M_RATINGS), encoding="latin-1")
        (folder / "movies.dat").write_text(_movies_dat(), encoding="latin-1")
        return folder / "ratings.dat"
    if kind == "gzip":
        with gzip.open(folder / "ratings.dat.gz", "wt", encoding="latin-1") as f:
            f.write(_ml1m_text(ML1M_RATINGS))
        (folder / "movies.dat").write_text(_movies_dat(), encoding="latin-1")
        return folder  # a folder holding the .gz
    with zipfile.ZipFile(folder / "ml-1m.zip", "w") as z:
        z.writestr("ml-1m/ratings.dat", _ml1m_text(ML1M_RATINGS))
        z.writestr("ml-1m/movies.dat", _movies_dat())
        z.writestr("ml-1m/README", "not ratings")
    return folder / "ml-1m.zip"


def _cfg(out, max_len: int = 2000):
    meta = json.loads((out / "meta.json").read_text())
    v = meta["vocab"]
    cfg = data_config({"item": v["items"], "category": v["categories"], "action": v["actions"], "user": v["users"]})
    cfg.root, cfg.max_len = str(out), max_len
    return cfg


def _read(out, split: str, max_len: int = 2000) -> pa.Table:
    """A split in the inline schema: histories rebuilt from the event log."""
    return read_inline(out, split, _cfg(out, max_len))


def _all_rows(out, max_len: int = 2000) -> pa.Table:
    return pa.concat_tables([_read(out, s, max_len) for s in SPLITS])


def _vocab(out, table: str) -> list:
    vocab = pq.read_table(out / "vocab" / f"{table}.parquet").to_pydict()
    assert vocab["id"] == list(range(len(vocab["id"])))  # dense ids, in order
    return vocab["raw"]


def _raw_rows(out, max_len: int = 2000) -> list[dict]:
    """Every row with ids mapped back to raw values through the vocab files."""
    users, items, cats = (_vocab(out, t) for t in ("user", "item", "category"))
    rows = []
    for r in _all_rows(out, max_len).to_pylist():
        rows.append({"user": users[r["user_id"]], "item": items[r["item_id"]], "cat": cats[r["category_id"]],
                     "ts": r["timestamp"], "label": r["label"], "hist_item": [items[i] for i in r["hist_item_id"]],
                     "hist_cat": [cats[c] for c in r["hist_category_id"]], "hist_action": r["hist_action"],
                     "hist_ts": r["hist_timestamp"]})
    return rows


def _expected_history(events: list[tuple], user, ts, max_len: int) -> list[tuple]:
    """Brute force: the user's events (user, item, cat, action, ts) with a smaller timestamp, in
    (timestamp, item, file order) order, newest max_len."""
    mine = sorted((e for e in events if e[0] == user and e[4] < ts), key=lambda e: (e[4], e[1]))
    return mine[-max_len:]


def _check_rows(out, events: list[tuple], labels: list[float], max_len: int = 2000) -> None:
    """Stored rows are exactly the interactions, with brute-force histories and labels."""
    rows = _raw_rows(out, max_len)
    assert sorted((r["user"], r["item"], r["ts"], r["label"]) for r in rows) == sorted(
        (e[0], e[1], e[4], lab) for e, lab in zip(events, labels))
    for r in rows:
        hist = _expected_history(events, r["user"], r["ts"], max_len)
        assert r["hist_item"] == [e[1] for e in hist]
        assert r["hist_cat"] == [e[2] for e in hist]
        assert r["hist_action"] == [e[3] for e in hist]
        assert r["hist_ts"] == [e[4] for e in hist]
        assert all(t < r["ts"] for t in r["hist_ts"])


def _validate(out, meta: dict) -> None:
    cfg = _cfg(out)
    events = open_event_log(cfg)  # sorted by user then time; every value column memory-mapped
    assert events.num_events == meta["events"]["rows"] and len(events.plain) == 4 * len(events.chunks)
    for split in SPLITS:
        for path in sorted((out / split).glob("*.parquet")):
            parquet = pq.ParquetFile(path)
            validate_schema(parquet.schema_arrow, cfg, str(path), history=False)
            for group in range(parquet.num_row_groups):
                for batch in events.rebuild(parquet.read_row_group(group))[0].to_batches():
                    validate_batch(batch, cfg, str(path))


def _ml_events(ratings, genres: dict) -> tuple[list[tuple], list[float]]:
    events = [(u, m, genres.get(m, "unknown"), int(max(np.floor(r), 1)) - 1, t) for u, m, r, t in ratings]
    return events, [float(r >= 4) for _, _, r, _ in ratings]


ML1M_GENRES = {m: g.split("|")[0] for m, (_, g) in ML1M_MOVIES.items()}


@pytest.mark.parametrize("kind", ["plain", "gzip", "zip"])
def test_ml1m_forms_give_valid_rows_with_strictly_earlier_histories(tmp_path, kind):
    src = _write_ml1m(tmp_path / "src", kind)
    out = tmp_path / "out"
    meta = prepare.prepare("movielens", src, out)
    assert meta["source"]["format"] == "ML-1M" and meta["source"]["genres"].endswith("movies.dat")
    assert meta["vocab"] == {"items": 5, "categories": 5, "actions": 5, "users": 3}
    assert meta["source"]["items_without_genre"] == 1  # movie 400
    _validate(out, meta)
    _check_rows(out, *_ml_events(ML1M_RATINGS, ML1M_GENRES))
    # equal timestamps: user 10's two ratings at t=1000 both see only movie 50, not each other
    tie = [r for r in _raw_rows(out) if r["user"] == 10 and r["ts"] == 1000]
    assert len(tie) == 2 and all(r["hist_item"] == [50] for r in tie)
    later = next(r for r in _raw_rows(out) if r["user"] == 10 and r["ts"] == 1100)
    assert later["hist_item"] == [50, 100, 200]  # same-second events ordered by movie id


def test_the_store_keeps_every_event_and_data_max_len_keeps_the_newest(tmp_path):
    out = tmp_path / "out"
    meta = prepare.prepare("movielens", _write_ml1m(tmp_path / "src", "plain"), out)
    _check_rows(out, *_ml_events(ML1M_RATINGS, ML1M_GENRES), max_len=2)
    assert meta["history_length"]["max"] == 4 and meta["events"]["rows"] == len(ML1M_RATINGS)


def test_ids_are_dense_and_vocab_files_match_meta(tmp_path):
    out = tmp_path / "out"
    meta = prepare.prepare("movielens", _write_ml1m(tmp_path / "src", "plain"), out)
    rows = _all_rows(out)
    assert _vocab(out, "user") == [10, 20, 30] and _vocab(out, "item") == [50, 100, 200, 300, 400]
    assert _vocab(out, "category") == ["Action", "Animation", "Comedy", "Drama", "unknown"]
    assert _vocab(out, "action") == ["1", "2", "3", "4", "5"]
    for table, column in (("user", "user_id"), ("item", "item_id"), ("category", "category_id")):
        assert sorted(set(rows[column].to_pylist())) == list(range(len(_vocab(out, table))))
    assert meta["vocab"]["categories"] == len(_vocab(out, "category"))


def test_split_is_by_time_and_meta_counts_rows(tmp_path):
    ratings = [(u, m, 1 + (u + m) % 5, 1000 + 7 * i) for i, (u, m) in enumerate(
        (u, m) for m in range(1, 21) for u in range(1, 6))]
    (tmp_path / "ratings.dat").write_text(_ml1m_text(ratings))
    out = tmp_path / "out"
    meta = prepare.prepare("movielens", tmp_path / "ratings.dat", out)
    times = {s: _read(out, s)["timestamp"].to_numpy() for s in SPLITS}
    assert times["train"].max() < times["valid"].min() <= times["valid"].max() < times["test"].min()
    # cut points are numpy "lower" quantiles of the 100 distinct times: t[79] and t[89]
    assert [meta["rows"][s] for s in SPLITS] == [79, 10, 11] == [len(times[s]) for s in SPLITS]
    for split in SPLITS:
        assert meta["positive_rate"][split] == pytest.approx(_read(out, split)["label"].to_numpy().mean(), abs=1e-4)
    assert meta["time_split"]["valid_from"] == times["valid"].min()
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def _ten_users_prepared(tmp_path) -> dict:
    """ratings.dat of 10 users x 20 movies in tmp_path, prepared whole into tmp_path/full; its meta."""
    ratings = [(u, m, 1 + (u + m) % 5, 1000 + 7 * i) for i, (u, m) in enumerate(
        (u, m) for m in range(1, 21) for u in range(1, 11))]
    (tmp_path / "ratings.dat").write_text(_ml1m_text(ratings))
    return prepare.prepare("movielens", tmp_path / "ratings.dat", tmp_path / "full")


def test_sample_users_keeps_whole_users_with_the_full_data_ids_and_cut_points(tmp_path):
    full = _ten_users_prepared(tmp_path)
    meta = prepare.prepare("movielens", tmp_path / "ratings.dat", tmp_path / "some", sample_users=3)
    def rows_of(out):  # every row as a tuple of its values, sorted
        return sorted(tuple(map(str, row.values())) for row in _all_rows(out).to_pylist())

    rows = rows_of(tmp_path / "some")
    users = {row["user_id"] for row in _all_rows(tmp_path / "some").to_pylist()}
    assert len(users) == 3 and meta["params"]["sample_users"] == {"users": 3, "of": 10, "seed": 0}
    assert meta["vocab"] == full["vocab"] and meta["time_split"] == full["time_split"]
    full_rows = _all_rows(tmp_path / "full").to_pylist()
    expected = sorted(tuple(map(str, r.values())) for r in full_rows if r["user_id"] in users)
    assert len(rows) == 60 and rows == expected  # every row of the kept users, identical to the full data's


def test_rows_per_user_caps_each_user_in_each_split_and_keeps_whole_histories(tmp_path):
    full = _ten_users_prepared(tmp_path)
    meta = prepare.prepare("movielens", tmp_path / "ratings.dat", tmp_path / "capped", rows_per_user=2)
    full_rows = {(r["user_id"], r["timestamp"]): r for r in _all_rows(tmp_path / "full").to_pylist()}
    for split in SPLITS:
        users = [r["user_id"] for r in _read(tmp_path / "full", split).to_pylist()]
        kept = _read(tmp_path / "capped", split).to_pylist()
        # min(2, rows the user has in this split) rows per user, every one identical to the full data's row
        expected = sorted(u for u in set(users) for _ in range(min(2, users.count(u))))
        assert sorted(r["user_id"] for r in kept) == expected
        assert all(r == full_rows[(r["user_id"], r["timestamp"])] for r in kept)
    assert meta["params"]["rows_per_user"] == {"rows": 2, "seed": 0} and meta["vocab"] == full["vocab"]
    assert sum(meta["rows"].values()) == 60


def test_missing_genre_file_gives_one_unknown_category(tmp_path):
    (tmp_path / "ratings.dat").write_text(_ml1m_text(ML1M_RATINGS))
    out = tmp_path / "out"
    meta = prepare.prepare("movielens", tmp_path, out)
    assert meta["source"]["genres"] is None and meta["vocab"]["categories"] == 1
    assert _vocab(out, "category") == ["unknown"]
    assert "no movies.dat" in (out / "CARD.md").read_text()


def test_ml100k_u_data_with_u_item_first_flagged_genre(tmp_path):
    ratings = [(1, 10, 4, 500), (1, 20, 2, 400), (2, 10, 1, 450), (2, 30, 5, 600), (1, 30, 3, 700),
               (2, 20, 3, 800), (3, 10, 5, 900), (3, 20, 4, 1000)]
    (tmp_path / "u.data").write_text("".join("\t".join(map(str, r)) + "\n" for r in ratings))
    flags = {10: [0, 0, 1, 0, 0, 1] + [0] * 13, 20: [0] * 8 + [1] + [0] * 10, 30: [0] * 19}  # none set
    (tmp_path / "u.item").write_text("".join(
        f"{m}|Movie {m} (1995)|01-Jan-1995||http://x|" + "|".join(map(str, f)) + "\n" for m, f in flags.items()),
        encoding="latin-1")
    out = tmp_path / "out"
    meta = prepare.prepare("movielens", tmp_path, out)
    assert meta["source"]["format"] == "ML-100K"
    genres = {10: "Adventure", 20: "Drama", 30: "unknown"}
    _validate(out, meta)
    _check_rows(out, *_ml_events(ratings, genres))


def test_ml20m_csv_with_half_stars_and_quoted_titles(tmp_path):
    ratings = [(1, 7, 3.5, 100), (1, 8, 4.5, 200), (1, 9, 0.5, 300), (2, 7, 4.0, 150), (2, 9, 5.0, 250),
               (3, 8, 3.0, 350), (3, 7, 2.5, 400), (2, 8, 1.5, 450)]
    (tmp_path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n"
                                          + "".join(f"{u},{m},{r},{t}\n" for u, m, r, t in ratings))
    (tmp_path / "movies.csv").write_text('movieId,title,genres\n7,"American President, The (1995)",Comedy|Drama\n'
                                         '8,Heat (1995),Action\n9,"Foo, Bar",(no genres listed)\n')
    out = tmp_path / "out"
    meta = prepare.prepare("movielens", tmp_path / "ratings.csv", out)
    assert meta["source"]["format"] == "ML-20M / ml-latest"
    genres = {7: "Comedy", 8: "Action", 9: "(no genres listed)"}
    events, labels = _ml_events(ratings, genres)
    assert [e[3] for e in events] == [2, 3, 0, 3, 4, 2, 1, 0] and labels == [0, 1, 0, 1, 1, 0, 0, 0]
    _validate(out, meta)
    _check_rows(out, events, labels)


def test_wrong_header_and_missing_source_name_the_file(tmp_path):
    (tmp_path / "ratings.csv").write_text("user,movie,rating,time\n1,2,3,4\n")
    with pytest.raises(text.PrepareError, match=r"ratings\.csv:1: header"):
        prepare.prepare("movielens", tmp_path, tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(text.PrepareError, match="found none of ratings.dat"):
        prepare.prepare("movielens", tmp_path / "empty", tmp_path / "out")


TAOBAO_START = sources.TAOBAO_WINDOW[0]
TAOBAO_LINES = [
    (1, 500, 7, "pv", TAOBAO_START + 10), (1, 501, 7, "fav", TAOBAO_START + 20),
    (1, 502, 8, "pv", TAOBAO_START + 20), (1, 500, 7, "buy", TAOBAO_START + 90),
    (100, 501, 7, "cart", TAOBAO_START + 5), (100, 503, 9, "pv", TAOBAO_START + 60),
    (2, 502, 8, "pv", TAOBAO_START + 30), (2, 500, 7, "pv", TAOBAO_START + 40),
]


def _write_taobao(path) -> None:
    """TAOBAO_LINES with an unknown behavior (line 4) and an out-of-window row (line 5) after the first three,
    and a cut-off last line without a newline."""
    lines = [",".join(map(str, r)) for r in TAOBAO_LINES]
    lines[3:3] = [f"1,600,7,click,{TAOBAO_START + 15}", "2,600,7,pv,1505117799"]
    path.write_text("\n".join(lines) + "\n3,1968385,1875258,pv")


def test_taobao_counts_skipped_lines_and_labels_engagement(tmp_path, capsys):
    _write_taobao(tmp_path / "UserBehavior.csv")
    out = tmp_path / "out"
    assert cli.main(["prepare", "taobao", "--src", str(tmp_path), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    meta = json.loads((out / "meta.json").read_text())
    assert meta["skipped"] == {"malformed_lines": 2, "out_of_window": 1}
    assert "UserBehavior.csv:4, column 4: unknown behavior 'click'" in meta["skipped_first"]["malformed_lines"]
    assert "skipped malformed_lines: 2" in printed and "skipped out_of_window: 1" in printed
    card_text = (out / "CARD.md").read_text()
    assert "malformed_lines: 2" in card_text and "out_of_window: 1" in card_text
    assert meta["vocab"] == {"items": 4, "categories": 3, "actions": 4, "users": 3}
    _validate(out, meta)
    actions = {b: i for i, b in enumerate(sources.TAOBAO_ACTIONS)}
    events = [(u, i, c, actions[b], t) for u, i, c, b, t in TAOBAO_LINES]
    _check_rows(out, events, [float(b in ("fav", "cart", "buy")) for *_, b, _ in TAOBAO_LINES])


def test_idempotent_force_and_refusal_to_overwrite(tmp_path, capsys):
    src = _write_ml1m(tmp_path / "src", "plain")
    out = tmp_path / "out"
    args = ["prepare", "movielens", "--src", str(src), "--out", str(out)]
    assert cli.main(args) == 0
    stamp = (out / "meta.json").stat().st_mtime_ns
    capsys.readouterr()
    assert cli.main(args) == 0
    assert "already there" in capsys.readouterr().out and (out / "meta.json").stat().st_mtime_ns == stamp
    (out / "meta.json").write_text("{}")
    assert cli.main([*args, "--force"]) == 0
    assert json.loads((out / "meta.json").read_text())["dataset"] == "movielens"

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    for extra, says in (([], "pass --force"), (["--force"], "refusing to replace it even with --force")):
        assert cli.main(["prepare", "movielens", "--src", str(src), "--out", str(foreign), *extra]) == 2
        assert says in capsys.readouterr().err
        assert (foreign / "notes.txt").read_text() == "keep me" and not (foreign / ".complete").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main(["prepare", "movielens", "--src", str(src), "--out", str(empty)]) == 0
    assert (empty / ".complete").is_file()


def test_sampling_prints_and_records_rows_and_positive_rate_before_and_after_the_cut(tmp_path, capsys):
    _ten_users_prepared(tmp_path)
    out = tmp_path / "capped"
    args = ["prepare", "movielens", "--src", str(tmp_path / "ratings.dat"), "--out", str(out), "--rows-per-user", "1",
            "--sample-users", "4"]
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    meta = json.loads((out / "meta.json").read_text())
    full = json.loads((tmp_path / "full" / "meta.json").read_text())
    assert meta["before_sampling"] == {"rows": full["rows"], "positive_rate": full["positive_rate"]}
    assert sum(meta["rows"].values()) == 12  # 4 users x 3 splits x 1 row
    assert "rows before" in printed and "--rows-per-user 1" in printed and "--sample-users 4" in printed
    train_line = next(line for line in printed.splitlines() if line.strip().startswith("train") and
                      str(full["rows"]["train"]) in line)
    assert str(meta["rows"]["train"]) in train_line
    card = (out / "CARD.md").read_text()
    assert f"| train | {full['rows']['train']} | {full['positive_rate']['train']:.4f} | 4 |" in card


# ------------------------------------------------------------------------------------------------------
# unreadable input, overflow, empty results and unwritable output: a PrepareError naming the file (issue 15)
# ------------------------------------------------------------------------------------------------------
def _fails(args: list[str], capsys, *fragments: str) -> str:
    assert cli.main(["prepare", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("longer-data prepare: error: ") and "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, err
    return err


def test_truncated_and_garbage_gzip_name_the_file(tmp_path, capsys):
    text = _ml1m_text(ML1M_RATINGS * 50).encode()
    data = gzip.compress(text)
    (tmp_path / "cut").mkdir()
    (tmp_path / "cut" / "ratings.dat.gz").write_bytes(data[: len(data) // 2])
    _fails(["movielens", "--src", str(tmp_path / "cut"), "--out", str(tmp_path / "o1")], capsys,
           "cut/ratings.dat.gz: cannot read", "truncated")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "ratings.dat.gz").write_bytes(b"this is not gzip data at all\n" * 10)
    _fails(["movielens", "--src", str(tmp_path / "junk"), "--out", str(tmp_path / "o2")], capsys,
           "junk/ratings.dat.gz: cannot read", "gzip")
    assert not (tmp_path / "o1").exists() and not [p for p in tmp_path.iterdir() if ".work-" in p.name]


def test_bad_zip_and_corrupt_member_name_the_archive(tmp_path, capsys):
    (tmp_path / "ml-1m.zip").write_bytes(b"PK\x03\x04 not really a zip")
    _fails(["movielens", "--src", str(tmp_path / "ml-1m.zip"), "--out", str(tmp_path / "o")], capsys,
           "ml-1m.zip: cannot read", "zip")
    good = tmp_path / "good.zip"
    with zipfile.ZipFile(good, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("ml-1m/ratings.dat", _ml1m_text(ML1M_RATINGS * 200))
    data = bytearray(good.read_bytes())
    data[200:260] = b"\x00" * 60  # inside the deflated member
    (tmp_path / "bad.zip").write_bytes(bytes(data))
    _fails(["movielens", "--src", str(tmp_path / "bad.zip"), "--out", str(tmp_path / "o")], capsys,
           "bad.zip!ml-1m/ratings.dat: cannot read")


def test_ids_and_timestamps_beyond_int64_are_counted_malformed_lines(tmp_path, capsys):
    rows = [",".join(map(str, r)) for r in TAOBAO_LINES]
    rows[2] = f"1,{2**63},8,pv,{TAOBAO_START + 20}"
    rows[5] = f"100,503,9,pv,{10**30}"
    rows.append(f"-{2**63},500,7,pv,{TAOBAO_START + 1}")  # the int64 minimum itself is fine
    (tmp_path / "UserBehavior.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    assert cli.main(["prepare", "taobao", "--src", str(tmp_path), "--out", str(out)]) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["skipped"] == {"malformed_lines": 2}
    assert meta["skipped_first"]["malformed_lines"].endswith(f"UserBehavior.csv:3, column 2: {2**63} is beyond the "
                                                             "int64 range")
    assert sum(meta["rows"].values()) == len(TAOBAO_LINES) - 1


def test_taobao_with_every_line_outside_the_window_names_the_file(tmp_path, capsys):
    (tmp_path / "UserBehavior.csv").write_text("".join(f"{u},5,6,pv,{1505117799 + u}\n" for u in range(20)))
    _fails(["taobao", "--src", str(tmp_path), "--out", str(tmp_path / "out")], capsys,
           "UserBehavior.csv: no valid interaction", "out_of_window 20")


def test_all_events_in_one_second_give_an_empty_split_and_a_non_zero_exit(tmp_path, capsys):
    (tmp_path / "UserBehavior.csv").write_text("".join(f"{u},{i},6,pv,{TAOBAO_START + 5}\n"
                                                       for u in range(5) for i in range(4)))
    _fails(["taobao", "--src", str(tmp_path), "--out", str(tmp_path / "out")], capsys,
           "UserBehavior.csv: split train, valid would get 0 rows", "nothing was written")
    assert not (tmp_path / "out").exists()


def test_output_under_a_file_names_the_path(tmp_path, capsys):
    src = _write_ml1m(tmp_path / "src", "plain")
    (tmp_path / "a_file").write_text("x")
    _fails(["movielens", "--src", str(src), "--out", str(tmp_path / "a_file" / "out")], capsys,
           "a_file/out: cannot create the output folder", "is a file")


def test_undecodable_movies_csv_names_the_file_and_line(tmp_path, capsys):
    ratings = "".join(f"{u},{m},4.0,{100 * u + m}\n" for u in range(1, 5) for m in (7, 8))
    (tmp_path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n" + ratings)
    (tmp_path / "movies.csv").write_bytes(b"movieId,title,genres\n7,Heat,Action\n8,Caf\xe9 \xff\xfe,Drama\n")
    _fails(["movielens", "--src", str(tmp_path), "--out", str(tmp_path / "out")], capsys,
           "movies.csv:3: cannot decode the text as UTF-8")


def test_a_memory_budget_is_parsed_and_bounded(tmp_path):
    assert text.parse_size("1.5GB") == 3 * 2**29 and text.parse_size("512MiB") == 2**29
    with pytest.raises(text.PrepareError, match="expected a size"):
        text.parse_size("lots")
    with pytest.raises(text.PrepareError, match="at least 256MB"):
        prepare.prepare("movielens", _write_ml1m(tmp_path / "src", "plain"), tmp_path / "o", memory_budget="100MB")
    meta = prepare.prepare("movielens", _write_ml1m(tmp_path / "src", "plain"), tmp_path / "o", memory_budget="300MB")
    assert sum(meta["rows"].values()) == len(ML1M_RATINGS)


def _ml1m_with(tmp_path, *extra_lines: str):
    folder = tmp_path / "ml"
    _write_ml1m(folder, "plain")
    with (folder / "ratings.dat").open("a", encoding="latin-1") as f:
        f.write("".join(line + "\n" for line in extra_lines))
    return folder / "ratings.dat"


def test_extreme_values_are_counted_lines_naming_file_and_line(tmp_path, capsys):
    """A negative timestamp (the loader takes int64 differences), an id of 4,301 digits (Python refuses to parse
    it) and a duplicate of an earlier line: each counted, none aborts the prepare."""
    n = len(ML1M_RATINGS)
    src = _ml1m_with(tmp_path, "1" * 4301 + "::100::5::1200", "10::100::5::-9000000000000000000",
                     "::".join(map(str, ML1M_RATINGS[0])))
    out = tmp_path / "out"
    assert cli.main(["prepare", "movielens", "--src", str(src), "--out", str(out)]) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["skipped"] == {"malformed_lines": 2} and meta["duplicate_rows"] == 1
    first = f"ratings.dat:{n + 1}, column 1: {'1' * 24}...{'1' * 24} (4301 characters) is beyond the int64 range"
    assert meta["skipped_first"]["malformed_lines"].endswith(first), meta["skipped_first"]
    assert "duplicate rows (kept): 1" in capsys.readouterr().out
    assert "Duplicate rows" in (out / "CARD.md").read_text()


def test_a_line_longer_than_the_cap_is_skipped_in_bounded_memory(tmp_path, monkeypatch):
    monkeypatch.setattr(text, "MAX_LINE_BYTES", 4096)
    monkeypatch.setattr(text, "BLOCK_BYTES", 1024)
    src = _ml1m_with(tmp_path, "1" * 100_000, "30::300::4::1500")
    held = []
    lines = text._lines

    def watched(text, skipped):
        for data, ends, first in lines(text, skipped):
            held.append(len(data))
            yield data, ends, first

    monkeypatch.setattr(text, "_lines", watched)
    meta = prepare.prepare("movielens", src, tmp_path / "out")
    n = len(ML1M_RATINGS)
    assert meta["skipped"] == {"malformed_lines": 1}
    assert meta["skipped_first"]["malformed_lines"].endswith(f"ratings.dat:{n + 1}: longer than 4096 bytes")
    assert max(held) <= 4096 + 1024  # never the whole 100 kB line
    assert meta["rows"]["train"] + meta["rows"]["valid"] + meta["rows"]["test"] == n + 1  # the line after it counts


def test_leftovers_of_a_killed_prepare_are_removed(tmp_path, capsys):
    src = _write_ml1m(tmp_path / "ml", "plain")
    out = tmp_path / "out"
    gone = tmp_path / ".out.work-4194303"  # above the default pid_max: no such process
    gone_tmp = tmp_path / ".out.tmp-4194303"
    alive = tmp_path / f".out.tmp-{os.getppid()}"  # a running process's (this one's parent)
    for folder in (gone, gone_tmp, alive):
        (folder / "spill").mkdir(parents=True)
    assert cli.main(["prepare", "movielens", "--src", str(src), "--out", str(out)]) == 0
    assert not gone.exists() and not gone_tmp.exists() and alive.exists()
    assert f"removed {gone}, left by a prepare that did not finish" in capsys.readouterr().out
