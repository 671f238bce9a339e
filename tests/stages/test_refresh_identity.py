"""Refreshing a run directory (issue 39, items 1, 2 and 6): snapshots cut with `data.until`, ids that survive a
new snapshot (slim.data.identity), and a teacher sample that a few added users barely changes."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from slim.data import DataConfig
from slim.data import stage as prepare
from slim.data.sources import DataError
from slim.io import columns as C
from slim.runtime.config import ConfigError, load_raw, section
from slim.teacher import select
from tests.io.test_storage import s3, s3_endpoint  # noqa: F401  (fixtures: a moto S3 server, a fresh bucket)

T0, DAY = 1_700_000_000, 86_400
PINNED = [3931628386085181628, 5133832855037448800]  # select.key_hashes(["user1", "user2"], 2024)
CUT1, CUT2 = T0 + 20 * DAY, T0 + 40 * DAY  # the two snapshots


def _write_source(root, drop_user: str = "") -> dict:
    """A small interactions table: users u100..u159 with events on days 0..19 (before CUT1) and some on days
    21..39; users a000 (sorts before every u...) and u200 appear only after CUT1, as do items i000 (sorts before
    every other item) and i900. User u159 (the largest id) alone touches item i950. drop_user: leave a user's rows
    out (a deleted account: it vanishes from the second snapshot)."""
    rng = np.random.default_rng(3)
    rows = []
    for k in range(100, 160):
        for d in sorted(rng.choice(20, 6, replace=False)):
            rows.append((f"u{k}", f"i{rng.integers(100, 160)}", T0 + int(d) * DAY))
        if k % 3 == 0:  # existing users with new interactions
            rows += [(f"u{k}", f"i{rng.integers(100, 160)}", T0 + (21 + d) * DAY) for d in range(2)]
    rows.append(("u159", "i950", T0 + 5 * DAY))
    for u in ("a000", "u200"):  # new users
        rows += [(u, f"i{100 + d}", T0 + (22 + d) * DAY) for d in range(4)]
    rows += [("u101", "i000", T0 + 30 * DAY), ("u102", "i900", T0 + 31 * DAY), ("a000", "i000", T0 + 32 * DAY)]
    rows += [("u103", "i130", T0 + 60 * DAY)]  # after both cuts
    inter = root / "inter.csv"
    inter.write_text("user_id,item_id,timestamp\n" + "".join(f"{u},{i},{t}\n" for u, i, t in rows
                                                                if u != drop_user))
    items = sorted({i for _, i, _ in rows})
    (root / "items.csv").write_text("item_id,title\n" + "".join(f"{i},Title of {i}\n" for i in items))
    return {"source": "interactions-table", "interactions": str(inter), "items": str(root / "items.csv"),
            "num_negatives": 20}


def _ids(run_dir) -> tuple[dict, dict, dict]:
    """(raw user -> id, raw item -> id, raw item -> present) of a run directory's data stage."""
    u = pq.read_table(run_dir / C.USERS_FILE)
    i = pq.read_table(run_dir / C.ITEMS_FILE)
    raw_items = i.column(C.RAW_ITEM_ID).to_pylist()
    return (dict(zip(u.column(C.RAW_USER_ID).to_pylist(), u.column(C.USER_ID).to_pylist())),
            dict(zip(raw_items, i.column(C.ITEM_ID).to_pylist())),
            dict(zip(raw_items, i.column(C.PRESENT).to_pylist())))


def test_ids_survive_a_new_snapshot(tmp_path, ray_local):
    src = tmp_path / "src"
    src.mkdir()
    run = tmp_path / "run"
    first = _write_source(src)
    prepare.run(DataConfig(run_dir=str(run), until=CUT1, **first))
    users1, items1, _ = _ids(run)
    assert {"a000", "u200"}.isdisjoint(users1) and {"i000", "i900"}.isdisjoint(items1) and "i950" in items1

    (tmp_path / "src2").mkdir()
    second = _write_source(tmp_path / "src2", drop_user="u159")
    m = prepare.run(DataConfig(run_dir=str(run), until=CUT2, **second))
    users2, items2, present2 = _ids(run)
    assert all(users2[u] == i for u, i in users1.items() if u != "u159")  # every user kept its id
    assert all(items2[r] == i for r, i in items1.items())  # every item too, the absent one included
    assert "u159" not in users2 and not present2["i950"]  # vanished: no users row, its item kept but absent
    top_u, top_i = max(users1.values()), max(items1.values())
    assert users1["u159"] == top_u and max(users2.values()) < top_u + 3
    # new ids after the largest ever given: the vanished user's id is not reused
    assert [users2["a000"], users2["u200"]] == [top_u + 1, top_u + 2]
    assert [items2["i000"], items2["i900"]] == [top_i + 1, top_i + 2]
    assert all(present2[r] for r in items2 if r != "i950")
    assert m.extra["snapshot"]["users_new"] == 2 and m.extra["snapshot"]["items_absent"] == 1
    # the map keeps the vanished user's id reserved; the items table keeps 1..N
    id_map = pq.read_table(run / C.USER_IDS_FILE)
    assert dict(zip(id_map.column(C.RAW_USER_ID).to_pylist(), id_map.column(C.USER_ID).to_pylist())) == \
        {**users1, **users2}
    assert sorted(items2.values()) == list(range(1, len(items2) + 1))
    # the candidates never name the absent item
    cand = pq.ParquetDataset(str(run / C.CANDIDATES_DIR)).read()
    drawn = np.concatenate([np.asarray(v) for v in cand.column(C.NEGATIVES).to_pylist()])
    assert items2["i950"] not in set(drawn.tolist()) and len(drawn) == cand.num_rows * 20
    assert sorted(set(cand.column(C.USER_ID).to_pylist())) == sorted(users2.values())  # keyed by the carried ids

    # a third run on the same snapshot changes nothing: the map is carried onto itself
    prepare.run(DataConfig(run_dir=str(run), until=CUT2, **second), force=True)
    assert _ids(run)[:2] == (users2, items2)

    # a fresh run directory numbers in raw-id order: a000 and i000 sort first and shift everyone's ids
    fresh = tmp_path / "fresh"
    prepare.run(DataConfig(run_dir=str(fresh), until=CUT2, **second))
    users3, items3, _ = _ids(fresh)
    assert users3["a000"] == 0 and items3["i000"] == 1
    assert sum(users3[u] != users2[u] for u in users2) > len(users2) // 2
    assert sum(items3[r] != items2[r] for r in items3) > len(items3) // 2


def test_a_run_prepared_before_the_map_is_carried(tmp_path, ray_local):
    """A run directory from before user_ids.parquet and the `present` column: carried from its users.parquet."""
    run, cfg = tmp_path / "run", _write_source(tmp_path)
    prepare.run(DataConfig(run_dir=str(run), until=CUT1, **cfg))
    users1, items1, _ = _ids(run)
    (run / C.USER_IDS_FILE).unlink()
    pq.write_table(pq.read_table(run / C.ITEMS_FILE).drop_columns([C.PRESENT]), run / C.ITEMS_FILE)
    prepare.run(DataConfig(run_dir=str(run), until=CUT2, **cfg))
    users2, items2, _ = _ids(run)
    assert all(users2[u] == i for u, i in users1.items()) and all(items2[r] == i for r, i in items1.items())
    assert users2["a000"] == max(users1.values()) + 1


def test_ids_carried_on_a_bucket(s3, tmp_path, ray_local):
    """The carry's reads and rewrites (previous map, users parts, map slices) on a bucket, as on local disk: the
    stage's build in this process, over a bucket run directory holding the first snapshot."""
    from slim.data import identity, sources, stream
    from slim.io import storage

    uri, _ = s3
    local, cfg = tmp_path / "run", _write_source(tmp_path)
    prepare.run(DataConfig(run_dir=str(local), until=CUT1, **cfg))
    for f in (C.ITEMS_FILE, C.USER_IDS_FILE, C.USERS_FILE):
        storage.upload(local / f, f"{uri}/{f}")
    second = DataConfig(run_dir=uri, until=CUT2, **cfg)
    problems = sources.Problems(second.on_bad_row)
    built = stream.build(second, prepare._read(second, problems), problems, f"{uri}/data/.scratch", parallel=False,
                         prev=identity.load(uri))
    prepare.run(DataConfig(run_dir=str(local), until=CUT2, **cfg))  # the same refresh on local disk
    users, items, _ = _ids(local)
    parts = pa.concat_tables([storage.read_table(p) for p in built["parts"]])
    id_map = pa.concat_tables([storage.read_table(p, columns=[C.RAW_USER_ID, C.USER_ID]) for p in built["ids"]])
    assert dict(zip(parts.column(C.RAW_USER_ID).to_pylist(), parts.column(C.USER_ID).to_pylist())) == users
    assert dict(zip(built["items"].column(C.RAW_ITEM_ID).to_pylist(),
                    built["items"].column(C.ITEM_ID).to_pylist())) == items
    assert id_map.column(C.RAW_USER_ID).to_pylist() == sorted(id_map.column(C.RAW_USER_ID).to_pylist())
    assert built["new_users"] == 2 and built["ids"][0].startswith("s3://")


def test_until_cuts_the_source(tmp_path, ray_local):
    cfg = _write_source(tmp_path)
    run = tmp_path / "run"
    m = prepare.run(DataConfig(run_dir=str(run), until=CUT1, **cfg))
    users = pq.read_table(run / C.USERS_FILE)
    stamps = np.concatenate([np.asarray(t) for t in users.column(C.TIMESTAMPS).to_pylist()])
    before = sum(1 for line in (tmp_path / "inter.csv").read_text().splitlines()[1:]
                 if int(line.split(",")[2]) <= CUT1)
    assert stamps.max() <= CUT1 and m.counts["interactions"] == len(stamps) == before
    iso = section(load_raw(None, ["data.until=2023-11-14T22:13:20Z"]), "data", DataConfig)
    assert iso.until == T0  # an ISO time is read as epoch seconds
    assert section(load_raw(None, ["data.until=2024-01-31"]), "data", DataConfig).until == 1_706_659_200
    assert "until" not in prepare.stage_config(DataConfig(**cfg))  # runs prepared before it stay current
    assert prepare.stage_config(DataConfig(until=CUT1, **cfg))["until"] == CUT1


def test_until_errors_name_the_setting(tmp_path):
    for bad in ("yesterday", "31/01/2024", "2024-01-31 25:00"):
        with pytest.raises(ConfigError, match=r"^data\.until: cannot read"):
            section({"data": {"until": bad}}, "data", DataConfig)
    with pytest.raises(ConfigError, match=r"^data\.until: cannot read 'yesterday'"):
        section(load_raw(None, ["data.until=yesterday"]), "data", DataConfig)
    table = {"source": "interactions-table", "interactions": "x.csv", "items": "y.csv", "time_column": ""}
    with pytest.raises(ConfigError, match=r"^data\.until: the interactions table has no timestamps"):
        section({"data": {**table, "until": CUT1}}, "data", DataConfig)
    section({"data": table}, "data", DataConfig)  # without the cut the same table is fine
    src = tmp_path / "seq"
    src.mkdir()
    with gzip.open(src / "sequences.jsonl.gz", "wt") as f:
        f.write(json.dumps({"user_id": 1, "item_ids": [1, 2, 3]}) + "\n")
    (src / "items.tsv").write_text("ItemID\tTitle\n1\ta\n2\tb\n3\tc\n")
    with pytest.raises(DataError, match=r"sequences.jsonl.gz:1: no 'timestamps', so data.until"):
        prepare.run(DataConfig(run_dir=str(tmp_path / "run"), source="jsonl-sequences", path=str(src), until=CUT1))


def _positional_sample(history_len, n, seed, strata=5):
    """The sampler select.py had before: rng.choice over row positions within the same strata (for comparison)."""
    edges = np.unique(np.quantile(history_len, np.linspace(0, 1, strata + 1)[1:-1]))
    bins = np.searchsorted(edges, history_len, side="right")
    exact = np.bincount(bins, minlength=len(edges) + 1) / len(history_len) * n
    quota = np.floor(exact).astype(int)
    for b in np.argsort(-(exact - quota))[: n - quota.sum()]:
        quota[b] += 1
    rng = np.random.default_rng(seed)
    return np.sort(np.concatenate([rng.choice(np.flatnonzero(bins == b), q, replace=False)
                                   for b, q in enumerate(quota) if q]))


@pytest.mark.parametrize("added", [0.01, 0.05])
def test_teacher_sample_is_stable_under_growth(added):
    rng = np.random.default_rng(11)
    n_users, n, seed = 20_000, 1_000, 2024
    lens = rng.geometric(0.08, n_users) + 4
    extra = int(added * n_users)
    ids = [f"user{k:07d}" for k in rng.permutation(10_000_000)[:n_users + extra]]
    raw, new_raw = ids[:n_users], ids[n_users:]  # the new users' raw ids fall between the old ones
    new_lens = rng.geometric(0.08, extra) + 4
    # the next snapshot in raw-id order (as the data stage writes users.parquet)
    raw2 = raw + new_raw
    order = np.argsort(raw2, kind="stable")
    raw2, lens2 = [raw2[i] for i in order], np.r_[lens, new_lens][order]

    a = {raw[i] for i in select.stratified_sample(lens, n, seed, keys=raw)}
    b = {raw2[i] for i in select.stratified_sample(lens2, n, seed, keys=raw2)}
    assert len(a) == len(b) == n
    overlap = len(a & b) / n
    print(f"+{added:.0%} users: the hashed sample keeps {overlap:.1%}")
    assert overlap >= 1 - 2 * added, overlap

    # the strata still hold: each history-length quintile bin gets its share of the sample (+-1 for rounding)
    edges = np.unique(np.quantile(lens2, np.linspace(0, 1, 6)[1:-1]))
    pos = {r: k for k, r in enumerate(raw2)}
    got = np.bincount(np.searchsorted(edges, lens2[[pos[r] for r in b]], side="right"), minlength=len(edges) + 1)
    want = np.bincount(np.searchsorted(edges, lens2, side="right"), minlength=len(edges) + 1) / len(lens2) * n
    assert np.all(np.abs(got - want) <= 1), (got, want)

    # the positional sampler it replaced keeps far less of the sample: a new user shifts every row after it
    old_a = {raw[i] for i in _positional_sample(lens, n, seed)}
    old_b = {raw2[i] for i in _positional_sample(lens2, n, seed)}
    print(f"+{added:.0%} users: the positional sample keeps {len(old_a & old_b) / n:.1%}")
    assert len(old_a & old_b) / n < 1 - 2 * added


def test_sample_hash_is_fixed():
    """The hash is pinned: the same in every process (str hash() is salted per process) and Python version."""
    assert select.key_hashes(["user1", "user2"], 2024).tolist() == PINNED
    assert select.key_hashes(["user1"], 2025)[0] != PINNED[0]
