import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from slim.io import columns as C
from slim.data import DataConfig, DataError
from slim.data import stage as prepare
from slim.data import sequences as S
from slim.testing.sources import write_amazon_raw, write_seqrec


def _cands(run_dir):
    t = pq.ParquetDataset(str(run_dir / C.CANDIDATES_DIR)).read().to_pandas()
    return t.sort_values([C.USER_ID, C.SPLIT, C.PROTOCOL]).reset_index(drop=True)


@pytest.fixture(scope="module")
def ml100k(tmp_path_factory, ray_local, cache_dir):
    run_dir = tmp_path_factory.mktemp("ml")
    cfg = DataConfig(run_dir=str(run_dir), source="ml-100k", min_user_interactions=5,
                     min_item_interactions=5, cache_dir=cache_dir)
    return cfg, prepare.run(cfg)


def test_ml100k_counts_and_split(ml100k):
    cfg, m = ml100k
    assert m.counts["users"] == 943 and 1300 < m.counts["items"] <= 1682
    assert m.counts["candidate_rows"] == 4 * 943
    users = pq.read_table(f"{cfg.run_dir}/{C.USERS_FILE}").to_pandas()
    for _, u in users.sample(50, random_state=0).iterrows():
        assert np.all(np.diff(u[C.TIMESTAMPS]) >= 0)  # chronological
        assert u[C.VALID_ITEM] == u[C.ITEM_IDS][-2] and u[C.TEST_ITEM] == u[C.ITEM_IDS][-1]
    items = pq.read_table(f"{cfg.run_dir}/{C.ITEMS_FILE}").to_pandas()
    assert items[C.ITEM_ID].tolist() == list(range(1, len(items) + 1))
    assert items[C.TEXT].str.contains("Category: ").mean() > 0.99  # genres kept as category
    assert "Toy Story (1995)" in set(items[C.TITLE])
    assert set(ML100K_ACCENTED.values()) <= set(items[C.TITLE]) and not items[C.TITLE].str.contains("Ã").any()


# Titles of ml-100k items kept by a 5-core whose bytes are UTF-8 (item id -> title as the data stage writes it)
ML100K_ACCENTED = {"543": "Misérables, Les (1995)",
                   "1005": "Double vie de Véronique, La (Double Life of Veronique, The) (1991)",
                   "1252": "Contempt (Mépris, Le) (1963)"}


def test_ml100k_titles_decoded_as_utf8(cache_dir):
    """The wheel's ml-100k files are UTF-8: decoded as latin-1 these titles came out double-encoded
    ("Double vie de VÃ©ronique"), so an exact title request matched only the garbled form."""
    from slim.data import sources

    text = sources.read_ml100k(cache_dir, sources.Problems()).text()
    assert {i: text[i]["title"] for i in ML100K_ACCENTED} == ML100K_ACCENTED
    assert not [t["title"] for t in text.values() if "Ã" in t["title"] or "Â" in t["title"]]
    assert text["1"]["title"] == "Toy Story (1995)"


def test_candidates_valid_and_fixed(ml100k, ray_local):
    cfg, _ = ml100k
    users = pq.read_table(f"{cfg.run_dir}/{C.USERS_FILE}").to_pandas().set_index(C.USER_ID)
    c = _cands(__import__("pathlib").Path(cfg.run_dir))
    for _, r in c.sample(300, random_state=1).iterrows():
        hist = set(users.loc[r[C.USER_ID], C.ITEM_IDS].tolist())
        neg = r[C.NEGATIVES]
        assert len(neg) == 100 and len(set(neg)) == 100 and not hist & set(neg)
        want = users.loc[r[C.USER_ID], C.VALID_ITEM if r[C.SPLIT] == "valid" else C.TEST_ITEM]
        assert r[C.TARGET] == want
    items = pq.read_table(f"{cfg.run_dir}/{C.ITEMS_FILE}").to_pandas()
    pop = items.set_index(C.ITEM_ID)[C.POPULARITY]
    mean_pop = {p: pop.loc[np.concatenate(c[c[C.PROTOCOL] == p][C.NEGATIVES].values)].mean() for p in C.PROTOCOLS}
    assert mean_pop["pop100"] > 2 * mean_pop["uni100"]
    # A forced rerun writes the very same candidates.
    prepare.run(cfg, force=True)
    again = _cands(__import__("pathlib").Path(cfg.run_dir))
    assert np.array_equal(np.stack(c[C.NEGATIVES]), np.stack(again[C.NEGATIVES]))
    # The recommender stages read them back per protocol and per block of users, as stored.
    from slim.recsys.data import load

    d = load(cfg.run_dir)
    rows = c[(c[C.SPLIT] == "test") & (c[C.PROTOCOL] == "pop100")].set_index(C.USER_ID)
    got = d.candidates.subset(100, 300)[("test", "pop100")]  # [200, 101]
    want = [[rows.loc[u, C.TARGET], *np.asarray(rows.loc[u, C.NEGATIVES]).tolist()] for u in d.user_ids[100:300]]
    assert want == got.tolist()


def test_rerun_is_skipped_by_manifest(ml100k):
    cfg, m = ml100k
    m2 = prepare.run(cfg)
    assert m2.created == pytest.approx(prepare.RunDir(cfg.run_dir).read_manifest("data").created)
    assert m2.counts == m.counts


def test_candidates_do_not_depend_on_batching():
    rng = np.random.default_rng(0)
    seqs = [rng.choice(np.arange(1, 301), size=rng.integers(3, 150), replace=False) for _ in range(40)]
    batch = {C.USER_ID: np.arange(40), C.ITEM_IDS: seqs}
    cdf = np.cumsum(np.full(300, 1 / 300))
    whole = S.candidates_batch(batch, 7, 300, 100, cdf)
    part = S.candidates_batch({C.USER_ID: np.arange(5, 9), C.ITEM_IDS: seqs[5:9]}, 7, 300, 100, cdf)
    pick = np.isin(whole[C.USER_ID], np.arange(5, 9))
    assert np.array_equal(whole[C.NEGATIVES][pick], part[C.NEGATIVES])
    other = S.candidates_batch(batch, 8, 300, 100, cdf)
    assert not np.array_equal(whole[C.NEGATIVES], other[C.NEGATIVES])  # the seed matters


def _fresh_reference(draw, hist_rows, hist_items):
    out = np.zeros(draw.shape, bool)
    for r, row in enumerate(draw):
        seen = set(hist_items[hist_rows == r].tolist())
        for c, x in enumerate(row.tolist()):
            out[r, c] = x not in seen
            seen.add(x)
    return out


@pytest.mark.parametrize("num_items", [50, 1 << 50])  # 2^50: keys overflow int64 unless rows go in slices
def test_fresh_draws_rejects_history_and_repeats(num_items):
    rng = np.random.default_rng(3)
    draw = rng.integers(1, 40, (300, 60)) + (num_items - 50)  # [300, 60], many repeats and history hits
    lens = rng.integers(0, 20, 300)
    hist_rows = np.repeat(np.arange(300), lens)
    hist_items = rng.integers(1, 40, lens.sum()) + (num_items - 50)
    got = S.fresh_draws(draw, hist_rows, hist_items, num_items)
    assert np.array_equal(got, _fresh_reference(draw, hist_rows, hist_items))
    assert 0.1 < got.mean() < 0.9  # both kinds occur
    assert not S.fresh_draws(draw, np.arange(300), draw[:, 0], num_items)[:, 0].any()  # its own history


def test_k_core():
    users = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    items = np.array([0, 1, 2, 0, 1, 0, 1, 3])
    keep = S.k_core(users, items, min_user=3, min_item=2)
    # item 2 and 3 have one interaction -> dropped -> users 0 and 2 fall to 2 -> everyone dropped
    assert not keep.any()
    assert S.k_core(users, items, 2, 2).tolist() == [True, True, False, True, True, True, True, False]


def test_seqrec_bad_inputs(tmp_path, ray_local):
    src = write_seqrec(tmp_path / "src", 300, 400, bad_lines={7: "{not json", 9: json.dumps(
        {"user_id": 9, "item_ids": [100], "timestamps": [1]})})
    cfg = DataConfig(run_dir=str(tmp_path / "run"), source="amazon2018-games", path=str(src))
    with pytest.raises(DataError, match=r"sequences.jsonl.gz:8: malformed JSON"):
        prepare.run(cfg)
    assert not (tmp_path / "run" / "data" / "manifest.json").exists()
    m = prepare.run(DataConfig(**{**cfg.__dict__, "on_bad_row": "skip"}))
    assert m.extra["skipped"]["malformed_json"]["count"] == 1
    assert m.extra["skipped"]["short_history"]["count"] == 1  # user 9 has one item
    assert m.counts["users"] == 298
    with pytest.raises(DataError, match="user 9"):
        prepare.run(DataConfig(**{**cfg.__dict__, "path": str(write_seqrec(
            tmp_path / "s2", 50, 400, bad_lines={9: json.dumps({"user_id": 9, "item_ids": [], "timestamps": []})}))}))
    with pytest.raises(DataError, match="input not found: .*nowhere"):
        prepare.run(DataConfig(**{**cfg.__dict__, "path": str(tmp_path / "nowhere")}))


def test_item_without_text(tmp_path, ray_local):
    src = write_seqrec(tmp_path / "src", 200, 300, items_without_title=(100,))
    cfg = DataConfig(run_dir=str(tmp_path / "run"), source="amazon2018-games", path=str(src),
                     missing_text="error")
    with pytest.raises(DataError, match=r"no text \(e.g. 100\)"):
        prepare.run(cfg)
    m = prepare.run(DataConfig(**{**cfg.__dict__, "missing_text": "skip", "on_bad_row": "skip"}))
    items = pq.read_table(tmp_path / "run" / C.ITEMS_FILE).to_pandas()
    assert "100" not in set(items[C.RAW_ITEM_ID]) and m.extra["skipped"]["item_without_text"]["count"] == 1


def test_amazon_raw_kcore_and_text(tmp_path, ray_local):
    rng = np.random.default_rng(0)
    reviews = [(f"U{u}", f"A{i}", 1_400_000_000 + int(rng.integers(0, 10**7)))
               for u in range(120) for i in rng.choice(60, size=8, replace=False)]
    reviews.append(("LONER", "A1", 1))  # one review: removed by the 5-core filter
    meta = {f"A{i}": {"title": f"Item {i}", "category": ["Video Games", "PC", "Games"], "brand": f"B{i % 4}"}
            for i in range(150)}
    rp, mp = write_amazon_raw(tmp_path / "src", reviews, meta)
    cfg = DataConfig(run_dir=str(tmp_path / "run"), source="amazon-raw", reviews=str(rp), meta=str(mp),
                     min_user_interactions=5, min_item_interactions=5, num_negatives=20)
    m = prepare.run(cfg)
    users = pq.read_table(tmp_path / "run" / C.USERS_FILE).to_pandas()
    items = pq.read_table(tmp_path / "run" / C.ITEMS_FILE).to_pandas()
    assert "LONER" not in set(users[C.RAW_USER_ID]) and m.counts["users"] == 120
    assert items[C.TEXT].iloc[0].startswith("Item ") and "Category: PC > Games" in items[C.TEXT].iloc[0]
    assert "Brand: B" in items[C.TEXT].iloc[0]
