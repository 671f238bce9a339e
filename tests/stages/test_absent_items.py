"""Items gone from the newest snapshot (issue 39 item 1, follow-up): a refreshed run directory keeps their ids
(`present` false in items.parquet), and full ranking, top-k lists and training negatives leave them out, so it
ranks what a fresh run directory over the same snapshot ranks."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from slim.data import DataConfig
from slim.data import stage as prepare
from slim.io import columns as C
from slim.models import Recommender
from slim.recsys import data as D
from slim.recsys.ranking import ranks
from slim.recsys.spec import RunSpec
from slim.train.loop import batch_loss, negatives
from tests.stages.test_refresh_identity import CUT1, CUT2, _write_source

GONE = "i950"  # touched only by user u159, whom the second snapshot drops
FULL = ("full", "full_keep")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, ray_local):
    """(refreshed run directory: i950 kept, absent; fresh run directory over the same second snapshot)."""
    tmp = tmp_path_factory.mktemp("absent")
    for name in ("src1", "src2"):
        (tmp / name).mkdir()
    refreshed, fresh = tmp / "refreshed", tmp / "fresh"
    prepare.run(DataConfig(run_dir=str(refreshed), until=CUT1, **_write_source(tmp / "src1")))
    second = _write_source(tmp / "src2", drop_user="u159")
    prepare.run(DataConfig(run_dir=str(refreshed), until=CUT2, **second))
    prepare.run(DataConfig(run_dir=str(fresh), until=CUT2, **second))
    return refreshed, fresh


def _raw_items(run) -> np.ndarray:
    """raw item id of each item id (index 0: padding)."""
    t = pq.read_table(run / C.ITEMS_FILE, columns=[C.ITEM_ID, C.RAW_ITEM_ID])
    out = np.empty(t.num_rows + 1, dtype=object)
    out[t.column(C.ITEM_ID).to_numpy()] = t.column(C.RAW_ITEM_ID).to_pylist()
    return out


def _models(refreshed, fresh, d: D.SeqData, gone: int):
    """A GRU4Rec on the refreshed ids whose absent item scores above every other item for most users (planted:
    its vector along the users' mean state, long), and the same model on the fresh run's ids (item rows moved by raw
    id, the absent one left out)."""
    torch.manual_seed(0)
    a = Recommender("gru4rec", d.num_items, 16, max_len=50).eval()
    raw_a, raw_b = _raw_items(refreshed), _raw_items(fresh)
    b = Recommender("gru4rec", len(raw_b) - 1, 16, max_len=50).eval()
    with torch.no_grad():
        x, lens = D.pad_right(d.inputs("test"), 50)
        s = a.encode(torch.from_numpy(x), torch.from_numpy(lens))
        a.items.id_emb.weight[gone] = 50 * s.mean(0) / s.mean(0).norm()
        state = {k: v.clone() for k, v in a.state_dict().items()}
        row_of = {r: i for i, r in enumerate(raw_a) if i}
        state["items.id_emb.weight"] = a.items.id_emb.weight[[0] + [row_of[r] for r in raw_b[1:]]].clone()
        b.load_state_dict(state)
    return a, b


def test_absent_item_never_ranked_and_metrics_match_a_fresh_run(runs):
    refreshed, fresh = runs
    d, e = D.load(refreshed), D.load(fresh)
    raw_a, raw_b = _raw_items(refreshed), _raw_items(fresh)
    gone = int(np.flatnonzero(raw_a == GONE)[0])
    assert d.absent.tolist() == [gone] and len(e.absent) == 0 and d.num_present == e.num_items
    a, b = _models(refreshed, fresh, d, gone)

    unmasked = D.SeqData(d.user_ids, d.seqs, d.num_items, d.candidates)  # the same users, the item not marked
    top_plain = ranks(a, unmasked, "test", FULL, 50, top=10)["top"]
    assert (top_plain[:, 0] == gone).mean() > 0.5  # the plant works: without the mask it comes first for most

    got, want = ranks(a, d, "test", FULL, 50, top=10), ranks(b, e, "test", FULL, 50, top=10)
    assert gone not in got["top"]
    assert not np.array_equal(got["full"], ranks(a, unmasked, "test", FULL, 50)["full"])
    raw_uid = lambda run: pq.read_table(run / C.USERS_FILE, columns=[C.USER_ID, C.RAW_USER_ID]).to_pydict()
    ua, ub = raw_uid(refreshed), raw_uid(fresh)
    order_a = {r: i for i, r in enumerate(ua[C.RAW_USER_ID])}
    perm = np.array([order_a[r] for r in ub[C.RAW_USER_ID]])  # fresh row -> refreshed row of the same user
    for p in FULL:
        assert np.array_equal(got[p][perm], want[p])  # the same ranks, so the same metrics
    assert np.array_equal(raw_a[got["top"][perm]], raw_b[want["top"]])  # the same lists, in raw ids


def test_absent_item_never_a_negative():
    n, absent = 40, np.array([7, 40])
    present = D.present_ids(n, absent)
    tgt = torch.randint(1, n + 1, (500,), generator=torch.Generator().manual_seed(1))
    tgt = torch.where(torch.isin(tgt, torch.from_numpy(absent)), torch.tensor(1), tgt)
    neg = negatives(tgt, 50, n, torch.Generator().manual_seed(0), present)
    assert not torch.isin(neg, torch.from_numpy(absent)).any() and not (neg == tgt[:, None]).any()
    assert set(neg.unique().tolist()) == set(present.tolist())  # every present item is drawn
    plain = negatives(tgt, 50, n, torch.Generator().manual_seed(0))
    assert torch.isin(plain, torch.from_numpy(absent)).any()  # without the mask they are drawn
    g = torch.Generator().manual_seed(0)  # every item present: the draws of the code before absent items
    old = torch.randint(1, n + 1, (len(tgt), 50), generator=g)
    assert torch.equal(plain, torch.where(old == tgt[:, None], old % n + 1, old))
    assert D.present_ids(n, np.zeros(0, np.int64)) is None


@pytest.mark.parametrize("loss", ["bce", "ce"])
def test_absent_item_gets_no_gradient(loss):
    """The loss never touches an absent item's vector: no gradient reaches its row; without the mask it does."""
    n, gone = 30, 13
    spec = RunSpec("gru4rec", "id", 0, hidden=8, loss=loss, num_negatives=20)
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.choice(np.setdiff1d(np.arange(1, n + 1), [gone]), (16, 6)))
    y = torch.roll(x, -1, 1)
    lens = torch.full((16,), 6)
    for present, moved in ((D.present_ids(n, np.array([gone])), False), (None, True)):
        torch.manual_seed(0)
        m = Recommender("gru4rec", n, 8, max_len=50)
        loss_v, _ = batch_loss(m, spec, x, y, lens, torch.Generator().manual_seed(0), present=present)
        loss_v.backward()
        assert bool(m.items.id_emb.weight.grad[gone].abs().sum() > 0) is moved


def test_serve_never_recommends_an_absent_item(runs):
    """serve's full ranking (slim.serve.model.Ranker) and its popular list leave the absent item out too."""
    from slim.serve.model import Query, Ranker

    refreshed, fresh = runs
    d = D.load(refreshed)
    gone = int(d.absent[0])
    a, _ = _models(refreshed, fresh, d, gone)
    r = Ranker(refreshed / "models" / "planted", refreshed, model=a, spec=RunSpec("gru4rec", "id", 0, hidden=16))
    queries = [Query(history=np.asarray(s[:-1], dtype=np.int64), k=10) for s in d.seqs]
    tops = [ids for ids, _ in r.rank(queries)]
    assert all(len(t) == 10 and gone not in t for t in tops) and gone not in r.popular
    plain = D.SeqData(d.user_ids, d.seqs, d.num_items, d.candidates)  # what serve listed before the mask
    assert (ranks(a, plain, "test", ("full",), 50, top=1)["top"][:, 0] == gone).mean() > 0.5
