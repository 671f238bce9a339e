"""SLIM end to end on a planted signal: rationale fusion and text matching must find it, and must not when the
rationales are shuffled across users; no training target is ever fused with a rationale that saw it."""

import json

import numpy as np
import pytest

from slim.recsys import data as D
from slim.recsys import usertext as UT
from slim.testing import planted as G
from slim.testing.planted import FAST
from slim.testing.planted import train as _train  # the settings and figures bench/planted_figures.py prints


@pytest.fixture(scope="module")
def planted(tmp_path_factory, ray_local):
    root = tmp_path_factory.mktemp("planted")
    G.write(root)
    return root, _train(root, ("id", "id_text", "slim_teacher", "slim", "text_match"))


def test_slim_and_text_match_find_the_planted_signal(planted, tmp_path):
    _, got = planted
    # the cluster of 10 items holds the target: ~40 NDCG@10 when found; IDs alone see noise (chance ~1.5)
    assert got["id"] < 8
    assert got["slim"] > got["id"] + 15 and got["text_match"] > got["id"] + 15, got
    G.write(tmp_path, shuffle_rationales=True)
    shuffled = _train(tmp_path, ("slim", "text_match"))
    assert shuffled["text_match"] < 8 and shuffled["slim"] < got["id"] + 5, shuffled


def test_no_rationale_is_fused_into_a_target_it_saw(planted):
    from slim.recsys.checkpoint import load_model
    from slim.train.loop import examples

    root, _ = planted
    d = D.load(root)
    lens = np.array([len(s) for s in d.seqs])
    ut = UT.load(root, d.user_ids, lens, "slim", "whole")
    assert ut.cut == 3 and ut.present.all()
    for ex in (D.train_windows(d.seqs, 12), D.train_prefixes(d.seqs, 12)):
        use = D.rationale_positions(ex.tpos, ex.user, lens, ut.cut)
        y, pos = ex.y[use], ex.tpos[use]
        users = ex.user[np.nonzero(use)[0]]
        # the rationale saw item_ids[:len-3]; every fused target sits at index len-3 or later: never named in it
        assert (pos >= lens[users] - 3).all() and (pos <= lens[users] - 3).all()
        assert all(d.seqs[u][p] == t for u, p, t in zip(users, pos, y))
        assert sorted(users.tolist()) == list(range(len(d.seqs)))  # exactly one fused training target per user
        # every other training target lies inside the prefix: those get the missing vector
        other = (ex.tpos >= 0) & ~use
        assert (ex.tpos[other] < np.broadcast_to(lens[ex.user][:, None] if ex.tpos.ndim == 2 else lens[ex.user],
                                                  ex.tpos.shape)[other] - 3).all()
    # rationales an older version wrote from item_ids[:-2] name every training target: refused, not fused
    from slim.io.rundir import Manifest, RunDir

    RunDir(root).write_manifest(Manifest("student", {"history_cut": 2}))
    with pytest.raises(UT.UserTextError, match=r"item_ids\[:-2\].*look-ahead"):
        UT.load(root, d.user_ids, lens, "slim", "whole")
    RunDir(root).write_manifest(Manifest("student", {"history_cut": 3}))
    # the model's batches carry the same mask
    for name in ("gru4rec-slim-ce-s0", "text_match-whole-ce-s0"):
        model, _ = load_model(root / "models" / name)
        b = examples(model, d, 12, ut)
        want = len(d.seqs) if name.startswith("text_match") else int(b.use.sum())
        assert int(b.use.sum()) == want == len(d.seqs)


def test_report_gains_paired_tests_and_plots(planted):
    from slim.evaluate import stage as evaluate

    root, got = planted
    evaluate.run(evaluate.EvaluateConfig(run_dir=str(root), protocols=("uni100", "full", "full_keep")))
    res = json.loads((root / "reports" / "results.json").read_text())
    g = {(x["model"], x["baseline"], x["protocol"]): x for x in res["gains"]}
    full = g[("slim", "id_text", "full")]
    assert full["gain_pct"] > 100 and full["p_wilcoxon"] < 1e-6 and full["n"] == G.U
    assert full["mean_a"] == pytest.approx(got["slim"], abs=1e-6)  # the reloaded model ranks as it did in training
    # chance from the candidates users actually rank: full ranking excludes each user's distinct history
    lens = [len(s) for s in D.load(root).seqs]
    assert res["chance"]["full_keep"]["Hit@10"] == pytest.approx(100 * 10 / G.N)
    assert 100 * 10 / (G.N - 1) < res["chance"]["full"]["Hit@10"] < 100 * 10 / (G.N - max(lens))
    assert res["teacher_users"] == G.U and res["teacher_rows"]["ce"]["gru4rec-slim_teacher"]["full"]["NDCG@10"][0] > 20
    md = (root / "reports" / "results.md").read_text()
    assert "p Wilcoxon" in md and "text_match (whole)" in md and "chance" in md
    for f in ("long_tail_ce.png", "sparse_users_ce.png", "text_match_steps_ce.png", "ndcg10_full_ce.png"):
        assert (root / "reports" / "plots" / f).stat().st_size > 5000 and f in md


def test_explain_ranks_with_the_rationale_and_shows_its_steps(planted):
    from slim.recsys.explain import Explainer, pick_run

    root, _ = planted
    assert pick_run(root, variant="slim").name.startswith("gru4rec-slim")
    ex = Explainer.load(root, "gru4rec-slim-ce-s0")
    d = D.load(root)
    hits = 0
    for u in range(20):
        out = ex.explain(u, k=5)
        scores = [it["score"] for it in out["items"]]
        assert len(out["items"]) == 5 and scores == sorted(scores, reverse=True)
        assert not {it["item_id"] for it in out["items"]} & set(d.seqs[u].tolist())  # history excluded
        assert out["rationale_used"] and out["rationale"]["steps"][2].startswith("items of cluster")
        assert out["history"][-1]["title"] == f"item {d.seqs[u][-1]}"
        c = (int(d.seqs[u][-1]) - 1) % G.K  # the user's cluster: item id i is in cluster (i - 1) % K
        hits += sum((it["item_id"] - 1) % G.K == c for it in out["items"])
    assert hits >= 0.6 * 20 * 5  # the rationale steers the top-5 into the user's cluster
    with pytest.raises(KeyError, match="user_id 99999"):
        ex.explain(99999)


def test_new_rationales_retrain_the_slim_rows_only(tmp_path, ray_local):
    from slim.train import stage as job
    from slim.io.rundir import RunDir

    G.write(tmp_path)
    cfg = job.TrainConfig(run_dir=str(tmp_path), variants=("id", "id_text", "slim"), **{**FAST, "epochs": 1})
    assert job.run(cfg).counts["trained_now"] == 3
    rd = RunDir(tmp_path)
    before, items = rd.upstream("encode"), np.load(rd.path("encode/items.npy"))
    # the encode stage reruns after a new student run: new rationale vectors, the item vectors rewritten unchanged
    rng = np.random.default_rng(1)
    G._embeddings(rd, rng.normal(size=(G.N, G.D)), rng.normal(size=(G.U, G.D)))
    np.save(rd.path("encode/items.npy"), items)
    assert rd.upstream("encode") != before  # same manifest key, new outputs
    m = job.run(cfg)
    assert m.counts["trained_now"] == 1, "only the slim run reads the rationales"
    assert job.run(cfg).counts["trained_now"] == 1  # the stage manifest matches now: skipped, counts as written
