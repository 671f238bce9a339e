"""The server never recommends an item absent from the newest snapshot (`present` false in items.parquet), also
when the request names it among explicit candidates; `/score` (k == 0) answers every candidate it was sent."""

from __future__ import annotations

import numpy as np

from slim.recsys import data as recdata
from slim.recsys.rankable import rankable
from slim.recsys.spec import RunSpec
from slim.serve.model import Query, Ranker
from tests.stages.test_absent_items import GONE, _models, _raw_items, runs  # noqa: F401 (runs: the fixture)


def test_rankable_marks_padding_and_absent_items():
    assert rankable(5, np.array([2, 5])).tolist() == [False, True, False, True, True, False]
    assert rankable(3).tolist() == rankable(3, np.zeros(0, np.int64)).tolist() == [False, True, True, True]


def test_explicit_absent_candidates_are_not_recommended(runs):
    refreshed, fresh = runs
    d = recdata.load(refreshed)
    gone = int(np.flatnonzero(_raw_items(refreshed) == GONE)[0])
    planted, _ = _models(refreshed, fresh, d, gone)  # `gone` scores above every other item for most users
    r = Ranker(refreshed / "models" / "planted", refreshed, model=planted, spec=RunSpec("gru4rec", "id", 0))
    assert not r.rankable[gone] and int(r.rankable.sum()) == d.num_present and gone not in r.popular
    for hist in d.seqs:
        others = np.setdiff1d(np.flatnonzero(r.rankable), hist)[:4]
        cand = np.r_[gone, others].astype(np.int64)
        ids, sc = r.rank([Query(hist, 0, candidates=cand, exclude_history=False)])[0]  # scoring, as /score
        if ids.tolist() == cand.tolist() and sc[0] > sc[1:].max():
            break  # a user for whom the absent item would come first
    else:
        raise AssertionError("the plant failed: the absent item is never the best candidate")
    ids, _ = r.rank([Query(hist, 3, candidates=cand)])[0]
    assert gone not in ids and sorted(ids.tolist()) == sorted(others[np.argsort(-sc[1:])[:3]].tolist())
    assert len(r.rank([Query(hist, 3, candidates=np.array([gone], np.int64))])[0][0]) == 0  # nothing left to rank
    assert gone not in r.rank([Query(hist, 10)])[0][0]  # every item ranked: the same rule
