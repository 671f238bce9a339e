import math

import numpy as np
import pytest

from slim.recsys import metrics as M


def test_ranks_and_pessimistic_ties():
    scores = np.array([[0.9, 0.1, 0.5], [0.2, 0.3, 0.1], [1.0, 1.0, 1.0]])
    assert M.target_rank(scores).tolist() == [0, 1, 2]  # constant scorer: the target ranks last


def test_metrics_hand_computed():
    ranks = np.array([0, 1, 9, 10, 25])
    m = M.metrics_from_ranks(ranks)
    ndcg10 = (1 + 1 / math.log2(3) + 1 / math.log2(11)) / 5
    assert m["NDCG@10"] == pytest.approx(100 * ndcg10)
    assert m["Hit@10"] == pytest.approx(60.0)
    assert m["Hit@20"] == pytest.approx(80.0)
    assert m["MRR"] == pytest.approx(100 * (1 + 1 / 2 + 1 / 10 + 1 / 11 + 1 / 26) / 5)


def test_chance_uni100_matches_design():
    c = M.chance_for("uni100", num_items=10_000)
    assert round(c["NDCG@10"], 2) == 4.50
    assert round(c["Hit@10"], 2) == 9.90
    assert round(c["Hit@20"], 2) == 19.80


def test_random_scores_reach_chance():
    rng = np.random.default_rng(0)
    ranks = M.target_rank(rng.random((200_000, 101)))
    m, c = M.metrics_from_ranks(ranks), M.chance(101)
    for k in ("NDCG@10", "Hit@10", "Hit@20"):
        assert m[k] == pytest.approx(c[k], abs=0.3)


def test_full_rank_excludes_history_but_not_target():
    scores = np.array([[9.0, 0.5, 0.9, 0.8, 0.1]])  # column 0 is padding, never ranked
    assert M.full_rank(scores, np.array([3])).tolist() == [1]  # item 2 scores higher
    assert M.full_rank(scores, np.array([3]), exclude=[[2, 3]]).tolist() == [0]
    assert M.full_rank(np.ones((1, 5)), np.array([1])).tolist() == [3]  # ties count against the target


def test_nan_target_ranks_last_and_scores_zero():
    # Before: NaN >= x is False, so a NaN target had rank -1: NDCG = inf and Hit = 100%.
    s = np.array([[np.nan, 0.1, 0.5], [0.9, np.nan, 0.1], [0.9, 0.2, 0.1]])
    assert M.target_rank(s).tolist() == [2, 1, 0]  # a NaN negative counts as ranked above the target
    m = M.metrics_from_ranks(M.target_rank(np.full((4, 101), np.nan)))
    assert m["NDCG@10"] == 0.0 and m["Hit@20"] == 0.0
    full = np.array([[0.0, np.nan, 0.3, 0.2]])
    assert M.full_rank(full, np.array([1])).tolist() == [2]
    assert M.full_rank(np.array([[0.0, 0.5, np.nan, 0.2]]), np.array([1])).tolist() == [1]


def test_chance_from_actual_candidate_counts():
    assert M.chance_for("uni100", 500, num_negatives=50)["Hit@10"] == pytest.approx(100 * 10 / 51)
    # full ranking: each user ranks N minus their distinct history (the target stays)
    sizes = M.full_sizes(100, [np.array([1, 2, 2, 3]), np.array([5])], np.array([3, 7]))
    assert sizes.tolist() == [98, 99]
    c = M.chance_mean(sizes)
    assert c["Hit@10"] == pytest.approx(100 * (10 / 98 + 10 / 99) / 2)
    assert M.full_sizes(100, [np.array([1, 2])], np.array([3]), exclude_history=False).tolist() == [100]


def test_early_stopping_never_picks_a_diverged_epoch():
    import torch

    from slim.train.loop import EarlyStop

    m = torch.nn.Linear(2, 2)
    es = EarlyStop(patience=2, valid_protocol="uni100")
    es.update(m, 0, 0.9, 10.0)
    best = {k: v.clone() for k, v in m.state_dict().items()}
    with torch.no_grad():
        m.weight.fill_(float("nan"))
    # a diverged epoch: NaN loss; before, its metrics could still win (a NaN target scored NDCG inf)
    assert not es.update(m, 1, float("nan"), 99.0)
    assert es.best == 10.0 and torch.equal(es.best_state["weight"], best["weight"])
    assert es.update(m, 2, float("inf"), 50.0)  # patience 2: two epochs without a usable improvement stop it


def test_one_top_k_rule_for_evaluate_explain_and_serve():
    """evaluate's per-user lists (top_items) and serve's answer (top_k) are one function: best first, ties by item id,
    never padding, a history item or a NaN score; and explain and serve import that function rather than a copy."""
    import inspect

    from slim.recsys import explain, ranking
    from slim.serve import model

    sc = np.array([[0.0, 0.5, 0.9, 0.5, np.nan, 0.9, 0.1, 0.5]])  # [1, N+1]; items 2 and 5 tie, so do 1, 3, 7
    assert ranking.top_items(sc, [[]], 5).tolist() == [[2, 5, 1, 3, 7]]
    assert ranking.top_items(sc, [[2, 3]], 4).tolist() == [[5, 1, 7, 6]]  # history out; NaN item 4 never listed
    ids, s = ranking.top_k(np.arange(1, 8), sc[0, 1:], 3)
    assert ids.tolist() == [2, 5, 1] and s.tolist() == [0.9, 0.9, 0.5]
    assert ranking.top_items(sc, [[1, 2, 3, 5, 6, 7]], 3).tolist() == [[0, 0, 0]]  # nothing left: padded, not history
    perm = np.random.default_rng(0).permutation(np.arange(1, 8))  # ties by id whatever order the candidates come in
    assert ranking.top_k(perm, sc[0, perm], 3)[0].tolist() == [2, 5, 1]
    assert model.top_k is ranking.top_k
    assert "top_items(" in inspect.getsource(explain.Explainer.recommend)
