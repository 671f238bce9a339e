"""Source formats: the jsonl-sequences layout under both names, the interactions table (CSV / TSV / Parquet), CSV
quoting in text tables, bad rows named by file and line."""

import csv
import datetime
import gzip
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from slim.io import columns as C
from slim.runtime.config import ConfigError
from slim.data import DataConfig, DataError, sources
from slim.data import stage as prepare
from slim.io.rundir import Manifest
from slim.testing.sources import write_seqrec


def _build(cfg):
    """read + build_tables, without Ray (the candidates are the same code for every source)."""
    problems = sources.Problems(cfg.on_bad_row)
    users, items = prepare.build_tables(cfg, prepare._read(cfg, problems), problems)
    return users.to_pandas(), items.to_pandas(), problems


def _seqrec_rows(src):
    with gzip.open(src / "sequences.jsonl.gz", "rt") as f:
        seqs = [json.loads(line) for line in f]
    return [(s["user_id"], i, t) for s in seqs for i, t in zip(s["item_ids"], s["timestamps"])]


def test_old_fingerprints_unchanged():
    """Keys computed by the code before the table source and the `jsonl-sequences` name existed: run dirs prepared
    then stay current whichever name a config now uses."""
    def key(**kw):
        return Manifest("data", prepare.stage_config(DataConfig(**kw)), {}).key()

    assert key(source="amazon2018-games", path="/data/games") == "7d4102ed891ca5de"
    assert key(source="jsonl-sequences", path="/data/games") == "7d4102ed891ca5de"
    assert key(source="ml-100k", min_user_interactions=5, min_item_interactions=5) == "bbf6ae97c36c2b46"
    assert key(source="amazon-raw", reviews="r.json", meta="m.json") == "ba828b4b44171a8e"
    table = dict(source="interactions-table", interactions="i.csv", items="t.csv")
    assert key(**table) != key(**table, time_column="ts")  # the table keys count where they are read


def test_items_tsv_quoted_titles(tmp_path):
    """Standard CSV quoting: a quoted title holding a tab, a newline or doubled quotes is one field."""
    src = write_seqrec(tmp_path / "src", 60, 5)
    titles = {"100": "Tab\there", "101": "Two\nlines", "102": 'Ivan "Ironman" Stewart', "103": "Plain", "104": "x"}
    with open(src / "items.tsv", "w", newline="") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow(["ItemID", "Title"])
        w.writerows(titles.items())
    users, items, _ = _build(DataConfig(source="jsonl-sequences", path=str(src)))
    assert dict(zip(items[C.RAW_ITEM_ID], items[C.TITLE])) == titles and len(users) == 60


def _table_files(tmp_path, src, fmt):
    """The generated seqrec input as an interactions table and an items table with their own column names."""
    rows = _seqrec_rows(src)
    np.random.default_rng(0).shuffle(rows)  # order must not matter: no ties in a user's timestamps here
    iso = fmt == "csv.gz"  # one format carries ISO 8601 dates instead of seconds
    when = [datetime.datetime.fromtimestamp(t, datetime.timezone.utc).isoformat() if iso else t for _, _, t in rows]
    titles = {i: f'Game {i - 100}, "the" one' for i in range(100, 400)}  # commas and quotes: must be quoted
    inter = {"visitor": [str(u) for u, _, _ in rows], "sku": [str(i) for _, i, _ in rows], "when": when}
    items = {"sku": [str(i) for i in titles], "name": list(titles.values()), "genre": ["Action"] * len(titles)}
    if fmt == "parquet":  # a timestamp column, as Parquet exports usually have
        inter["when"] = pa.array(np.asarray(when, "datetime64[s]"), pa.timestamp("s"))
        pq.write_table(pa.table(inter), tmp_path / "inter.parquet")
        pq.write_table(pa.table(items), tmp_path / "items.parquet")
        return tmp_path / "inter.parquet", tmp_path / "items.parquet"
    delim = "," if fmt.startswith("csv") else "\t"
    paths = tmp_path / f"inter.{fmt}", tmp_path / f"items.{fmt.removesuffix('.gz')}"
    for p, table in zip(paths, (inter, items)):
        with (gzip.open(p, "wt", newline="") if p.suffix == ".gz" else open(p, "w", newline="")) as f:
            w = csv.writer(f, delimiter=delim)
            w.writerow(table)
            w.writerows(zip(*table.values()))
    return paths


@pytest.mark.parametrize("fmt", ["csv.gz", "tsv", "parquet"])
def test_interactions_table_matches_jsonl(tmp_path, fmt):
    src = write_seqrec(tmp_path / "src", 200, 300, seed=3)
    ref_users, ref_items, _ = _build(DataConfig(source="jsonl-sequences", path=str(src)))
    inter, items = _table_files(tmp_path, src, fmt)
    cfg = DataConfig(source="interactions-table", interactions=str(inter), items=str(items), user_column="visitor",
                     item_column="sku", time_column="when", title_columns=("name",), category_column="genre")
    users, got_items, _ = _build(cfg)
    assert users.drop(columns=[C.ITEM_IDS, C.TIMESTAMPS]).equals(ref_users.drop(columns=[C.ITEM_IDS, C.TIMESTAMPS]))
    for col in (C.ITEM_IDS, C.TIMESTAMPS):
        assert all(np.array_equal(a, b) for a, b in zip(users[col], ref_users[col]))
    assert got_items[C.RAW_ITEM_ID].tolist() == ref_items[C.RAW_ITEM_ID].tolist()
    assert got_items[C.POPULARITY].tolist() == ref_items[C.POPULARITY].tolist()
    i = int(got_items[C.RAW_ITEM_ID].iloc[0]) - 100
    assert got_items[C.TEXT].iloc[0] == f'Game {i}, "the" one. Category: Action'


def _write(p, text):
    p.write_text(text)
    return str(p)


def test_bad_rows_name_file_and_line(tmp_path):
    rows = [f"u{u},{i},{10 * u + k}\n" for u in range(3) for k, i in enumerate("AAB")]
    good = "user_id,item_id,timestamp\n" + "".join(rows)
    inter = _write(tmp_path / "inter.csv", good)
    items = _write(tmp_path / "items.csv", 'item_id,title\nA,"Multi\nline"\nB,Plain\nC,x,extra\n')
    cfg = DataConfig(source="interactions-table", interactions=inter, items=items)
    with pytest.raises(DataError, match=r"items.csv:5: expected 2 fields"):  # line 5: the quoted title spans 2-3
        _build(cfg)
    _write(tmp_path / "items.csv", 'item_id,title\nA,"Multi\nline"\nB,Plain\n')
    _write(tmp_path / "inter.csv", good + "u9,A,yesterday\n")
    with pytest.raises(DataError, match=r"inter.csv:11: bad timestamp 'yesterday' in column 'timestamp'"):
        _build(cfg)
    skip = DataConfig(**{**cfg.__dict__, "on_bad_row": "skip"})
    users, items_t, problems = _build(skip)
    assert problems.counts["bad_timestamp"] == 1 and len(users) == 3
    assert items_t[C.TITLE].tolist() == ["Multi\nline", "Plain"]
    pq.write_table(pa.table({"user_id": ["u1", "u2"], "item_id": ["A", "B"], "timestamp": ["5", "later"]}),
                   tmp_path / "inter.parquet")
    with pytest.raises(DataError, match=r"inter.parquet: row 2: bad timestamp 'later'"):
        _build(DataConfig(**{**cfg.__dict__, "interactions": str(tmp_path / "inter.parquet")}))
    with pytest.raises(DataError, match=r"inter.csv:1: no column 'ts'"):
        _build(DataConfig(**{**cfg.__dict__, "time_column": "ts"}))
    with pytest.raises(DataError, match="items.parquet: not a readable Parquet file"):
        _build(DataConfig(**{**skip.__dict__, "items": _write(tmp_path / "items.parquet", "item_id,title\n")}))
    with pytest.raises(DataError, match="items.xlsx: unknown table format"):
        _build(DataConfig(**{**skip.__dict__, "items": _write(tmp_path / "items.xlsx", "")}))
    with pytest.raises(ConfigError, match="items: must be set"):
        DataConfig(source="interactions-table", interactions=inter)


def test_jsonl_bad_timestamp_names_line(tmp_path):
    bad = json.dumps({"user_id": 4, "item_ids": [100, 101, 102], "timestamps": [1, "2024-13-01", 3]})
    src = write_seqrec(tmp_path / "src", 30, 50, bad_lines={4: bad})
    with pytest.raises(DataError, match=r"sequences.jsonl.gz:5: bad timestamp.*2024-13-01"):
        _build(DataConfig(source="jsonl-sequences", path=str(src)))


def test_table_source_job(tmp_path, ray_local):
    """The whole data job on the table source: both files fingerprinted, candidates written."""
    src = write_seqrec(tmp_path / "src", 120, 200, seed=5)
    inter, items = _table_files(tmp_path, src, "parquet")
    cfg = DataConfig(run_dir=str(tmp_path / "run"), source="interactions-table", interactions=str(inter),
                     items=str(items), user_column="visitor", item_column="sku", time_column="when",
                     title_columns=("name",), num_negatives=20)
    m = prepare.run(cfg)
    assert set(m.inputs) == {str(inter), str(items)} and m.counts["users"] == 120
    assert m.counts["candidate_rows"] == 4 * 120
    assert prepare.run(cfg).created == m.created  # current: skipped


def test_check_names_table_inputs(tmp_path):
    """`pipeline --check` lists the table source's two files and names the missing one by its key (the data
    stage's face says what --check prints)."""
    from slim.data import stage as prepare

    inter = _write(tmp_path / "inter.csv", "user_id,item_id,timestamp\n")
    cfg = DataConfig(source="interactions-table", interactions=inter, items=str(tmp_path / "none.csv"))
    problems = []
    lines = prepare.resources(cfg, problems)
    assert lines[0] == f"data.interactions: {inter}"
    assert problems == [f"data.items: {tmp_path / 'none.csv'} not found (from {os.getcwd()})"]
    assert prepare.resources(DataConfig(source="jsonl-sequences", path=inter), []) == [f"data.path: {inter}"]
