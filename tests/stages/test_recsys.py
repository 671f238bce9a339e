"""Recommender training/evaluation stages on a small generated run dir with a learnable pattern."""

import json
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from slim.io import columns as C
from slim.recsys import data as D
from slim.recsys import itemtext as T
from slim.testing.planted import candidates, users_table

U, N = 80, 130


def _write_run(root, seed=0, users=U, jump=0.0):
    """Users walk the item ids in order (i -> i+1) from a random start: next items are learnable. jump: the chance
    of each step going to a random item instead (harder data: accuracy off its ceiling)."""
    rng = np.random.default_rng(seed)
    (root / "data" / "candidates").mkdir(parents=True)
    seqs = []
    for _ in range(users):
        start, n = rng.integers(1, N + 1), rng.integers(6, 14)
        steps = np.where(rng.random(n) < jump, rng.integers(1, N, n), 1) if jump else np.ones(n, np.int64)
        steps[0] = 0  # (no draw without jump: the other tests' data stay as they were)
        seqs.append(((start - 1 + np.cumsum(steps)) % N + 1).astype(np.int32))
    pq.write_table(users_table(seqs), root / C.USERS_FILE)
    pq.write_table(pa.table({C.ITEM_ID: pa.array(np.arange(1, N + 1, dtype=np.int32)),
                             C.TEXT: [f"game {i} series {i // 10}" for i in range(1, N + 1)]}), root / C.ITEMS_FILE)
    pq.write_table(candidates(seqs, N, rng), root / C.CANDIDATES_DIR / "part-0.parquet")
    from slim.io.rundir import Manifest, RunDir

    RunDir(root).write_manifest(Manifest("data", {"generated": seed}))
    return seqs


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("recsys")
    _write_run(root)
    return root


def test_leave_one_out_split(run_dir):
    d = D.load(run_dir)
    s = d.seqs[3]
    assert d.targets("valid")[3] == s[-2] and d.targets("test")[3] == s[-1]
    assert np.array_equal(d.inputs("valid")[3], s[:-2]) and np.array_equal(d.inputs("test")[3], s[:-1])
    assert d.candidates[("test", "uni100")].shape == (U, 101)
    assert np.array_equal(d.candidates[("test", "uni100")][:, 0], d.targets("test"))
    # training uses item_ids[:-2] only: every target once, never the valid/test items
    w = D.train_windows(d.seqs, max_len=4)
    assert (w.y > 0).sum() == sum(len(q) - 3 for q in d.seqs)
    p = D.train_prefixes(d.seqs, max_len=4)
    assert len(p.y) == sum(len(q) - 3 for q in d.seqs) and p.lens.max() == 4
    last = [int(p.y[i]) for i in range(len(p.y))]
    assert set(last) <= set(np.concatenate([q[1:-2] for q in d.seqs]).tolist())
    # tpos/user say where each target sits in its user's full sequence
    for ex in (w, p):
        t = ex.tpos if ex.tpos.ndim == 1 else ex.tpos[ex.y > 0]
        u = ex.user if ex.tpos.ndim == 1 else np.broadcast_to(ex.user[:, None], ex.y.shape)[ex.y > 0]
        y = ex.y if ex.tpos.ndim == 1 else ex.y[ex.y > 0]
        assert all(d.seqs[a][b] == c for a, b, c in zip(u, t, y))


def test_subsample_is_fixed(run_dir):
    a, b = D.load(run_dir, max_users=20, seed=1), D.load(run_dir, max_users=20, seed=1)
    assert len(a.seqs) == 20 and np.array_equal(a.user_ids, b.user_ids)
    assert np.array_equal(a.candidates[("valid", "pop100")][:, 0], a.targets("valid"))


def test_candidates_are_read_when_ranked_and_per_block(run_dir, tmp_path):
    """`load` reads no candidates; a protocol is read for exactly the loaded users (a subsample, a block) and
    equals the stored rows; a block pickles without the rows (a Ray task reads its own); a user without rows is
    an error naming the folder and the protocol, raised when that protocol is read."""
    import pickle
    import shutil

    import pyarrow.compute as pc

    stored = pq.read_table(run_dir / C.CANDIDATES_DIR).to_pandas()
    stored = stored[(stored[C.SPLIT] == "valid") & (stored[C.PROTOCOL] == "pop100")].set_index(C.USER_ID)
    want = {u: [r[C.TARGET], *r[C.NEGATIVES]] for u, r in stored.iterrows()}
    d = D.load(run_dir)
    assert not d.candidates._cache
    got = d.candidates[("valid", "pop100")]
    assert got.shape == (U, 101) and all(got[i].tolist() == want[u] for i, u in enumerate(d.user_ids))
    assert set(d.candidates._cache) == {("valid", "pop100")}
    blk = pickle.loads(pickle.dumps(d.candidates.subset(30, 50)))
    assert not blk._cache and len(pickle.dumps(blk)) < len(pickle.dumps(got[30:50])) / 4
    assert np.array_equal(blk[("valid", "pop100")], got[30:50]) and blk.width(("test", "uni100")) == 101
    sub = D.load(run_dir, max_users=20, seed=1)
    assert all(r.tolist() == want[u] for r, u in zip(sub.candidates[("valid", "pop100")], sub.user_ids))
    bad = tmp_path / "bad"
    shutil.copytree(run_dir, bad)
    t = pq.read_table(bad / C.CANDIDATES_DIR)
    hit = pc.and_(pc.equal(t[C.USER_ID], 7), pc.equal(t[C.PROTOCOL], "uni100"))  # user 7's uni100 rows
    shutil.rmtree(bad / C.CANDIDATES_DIR)
    (bad / C.CANDIDATES_DIR).mkdir()
    pq.write_table(t.filter(pc.invert(hit)), bad / C.CANDIDATES_DIR / "part-0.parquet")
    with pytest.raises(D.RecDataError, match=r"candidates: 318 rows for 80 users in users.parquet, expected 4"):
        D.load(bad)  # a missing row is found by counting, before any is read
    uid = pc.if_else(hit, 8, t[C.USER_ID])  # user 8 twice instead: the count is right
    pq.write_table(t.set_column(t.schema.get_field_index(C.USER_ID), C.USER_ID, uid),
                   bad / C.CANDIDATES_DIR / "part-0.parquet")
    d = D.load(bad)
    assert d.candidates[("valid", "pop100")].shape == (U, 101)  # the other protocol is whole
    with pytest.raises(D.RecDataError, match=r"candidates: 80 rows for split=test protocol=uni100 over 80 users"):
        d.candidates[("test", "uni100")]


def test_bad_input_names_file_and_user(tmp_path):
    with pytest.raises(D.RecDataError, match="users.parquet not found"):
        D.load(tmp_path)
    _write_run(tmp_path)
    t = pq.read_table(tmp_path / C.USERS_FILE)
    bad = t.set_column(t.schema.get_field_index(C.VALID_ITEM), C.VALID_ITEM,
                       pa.array([N + 5 if i == 7 else v for i, v in enumerate(t.column(C.VALID_ITEM).to_pylist())],
                                pa.int32()))
    pq.write_table(bad, tmp_path / C.USERS_FILE)
    with pytest.raises(D.RecDataError, match="user_id 7: valid_item"):
        D.load(tmp_path)


def test_item_text_minilm_then_encode_stage_file(tmp_path):
    _write_run(tmp_path)
    emb = T.item_text(tmp_path)
    assert emb.shape == (N + 1, 384) and not emb[0].any()
    np.testing.assert_allclose(np.linalg.norm(emb[1:], axis=1), 1.0, atol=2e-3)
    assert (tmp_path / T.CACHE_FILE).exists()
    sims = emb[1:] @ emb[1:].T
    assert sims[0, 1] > sims[0, 100]  # "game 1 series 0" is closer to "game 2 series 0" than to series 10
    enc = np.zeros((N + 1, 8), np.float16)
    enc[1:, 0] = 1
    (tmp_path / C.ENCODE_DIR).mkdir()
    np.save(tmp_path / C.ITEM_EMB_FILE, enc)
    (tmp_path / C.ENCODE_DIR / C.MANIFEST).write_text(json.dumps({"config": {"model": "all-MiniLM-L6-v2"}}))
    assert T.item_text(tmp_path).shape == (N + 1, 8)  # the encode stage's file wins (same encoder, finished)


def test_fixed_seed_gives_identical_metrics(run_dir):
    from slim.recsys.spec import RunSpec
    from slim.train.loop import fit

    d = D.load(run_dir)
    spec = RunSpec("sasrec", "id", 3, hidden=16, max_len=10, epochs=2, batch_size=32)
    _, a = fit(spec, d, None, "uni100", ("uni100", "full"))
    _, b = fit(spec, d, None, "uni100", ("uni100", "full"))
    _, c = fit(replace(spec, seed=4), d, None, "uni100", ("uni100", "full"))
    drop = (lambda h: [{k: v for k, v in e.items() if k != "valid_s"} for e in h])  # valid_s: wall time
    assert a["test"] == b["test"] and drop(a["history"]) == drop(b["history"])
    assert a["history"] != c["history"]
    # measured with the fan-out loop before it was shared with Ray Train (commit 52b6aca): the same seed still
    # trains the same weights (identical metrics.json there). Against another CPU's float rounding only approx: on
    # this AMD EPYC host the second epoch's loss differs by 4.5e-9 relative, at the base commit too (2026-12-07);
    # another seed moves it by percents
    assert [h["loss"] for h in a["history"]] == pytest.approx([1.3770221360946742, 1.3457823568774807], rel=1e-7)
    assert [h["valid_ndcg10"] for h in a["history"]] == pytest.approx([11.128767869110956, 24.68720207563791],
                                                                       rel=1e-9)


def test_train_fanout_resume_evaluate(run_dir, ray_local):
    from slim.evaluate import stage as evaluate
    from slim.train import stage as job

    cfg = job.TrainConfig(run_dir=str(run_dir), backbones=("gru4rec", "srgnn"), variants=("id", "id_text"),
                          seeds=(0,), hidden=32, max_len=10, epochs=6, patience=6, batch_size=32, lr=5e-3,
                          cpus_per_run=1.0)
    m = job.run(cfg)
    assert m.counts == {"runs": 4, "trained_now": 4, "users": U}
    recs = [json.loads(p.read_text()) for p in (run_dir / "models").glob("*/metrics.json")]
    assert m.extra["trained_targets"] == sum(r["train_targets"] for r in recs) > 0  # every run trained now
    assert m.extra["rows_per_s"] == pytest.approx(m.extra["trained_targets"] / m.timings["total_s"])
    assert 100 < m.extra["driver_peak_rss_mb"] < 64_000  # MB (a KiB/bytes mix-up is off by 1000x)
    rec = json.loads((run_dir / "models" / "gru4rec-id-bce-s0" / "metrics.json").read_text())
    assert rec["test"]["uni100"]["NDCG@10"] > 3 * 4.50  # the i -> i+1 pattern is learnt, far above chance
    assert (run_dir / "models" / "srgnn-id_text-bce-s0" / "model.pt").exists()
    # a rerun with one more seed trains only the new runs; the same config again is a no-op
    (run_dir / "train" / "manifest.json").unlink()
    m2 = job.run(replace(cfg, seeds=(0, 1), backbones=("gru4rec",), variants=("id",)))
    assert m2.counts == {"runs": 2, "trained_now": 1, "users": U}
    assert m2.extra["trained_targets"] == json.loads(
        (run_dir / "models" / "gru4rec-id-bce-s1" / "metrics.json").read_text())["train_targets"]  # the new run only
    ev = evaluate.run(evaluate.EvaluateConfig(run_dir=str(run_dir), protocols=("uni100", "full"), block_users=30))
    assert ev.counts["runs"] == 2
    assert ev.extra["rows_per_s"] == pytest.approx(2 * U / ev.timings["rank_s"])  # 3 blocks of users per run
    assert 100 < ev.extra["driver_peak_rss_mb"] < 64_000
    res = json.loads((run_dir / "reports" / "results.json").read_text())
    row = res["rows"]["bce"]["gru4rec-id"]
    assert row["seeds"] == [0, 1] and row["uni100"]["NDCG@10"][2] == 2
    assert res["chance"]["uni100"]["NDCG@10"] == pytest.approx(4.50, abs=0.01)
    md = (run_dir / "reports" / "results.md").read_text()
    assert "chance" in md and "gru4rec-id" in md
    assert (run_dir / "reports" / "plots" / "ndcg10_uni100_bce.png").stat().st_size > 1000
    assert (run_dir / "reports" / "plots" / "long_tail_bce.png").stat().st_size > 1000
    # the reloaded weights reproduce the training run's test metrics
    assert res["runs"][0]["eval"]["uni100"]["NDCG@10"] == pytest.approx(
        json.loads((run_dir / "models" / res["runs"][0]["run"] / "metrics.json").read_text())["test"]["uni100"]["NDCG@10"])


def _popularity_ndcg10(d, split="test", protocol="uni100") -> float:
    """NDCG@10 of ranking the candidates by training-part popularity: what a model that learnt nothing beats."""
    from slim.recsys import metrics as M

    counts = np.bincount(np.concatenate([s[:-2] for s in d.seqs]), minlength=d.num_items + 1).astype(float)
    return M.metrics_from_ranks(M.target_rank(counts[d.candidates[(split, protocol)]]))["NDCG@10"]


EPOCHS, TOL_SHARDS = 12, 5.0  # the Ray Train over shards vs fan-out runs below


@pytest.fixture(scope="module")
def sharded(tmp_path_factory, ray_local):
    """One Ray Train run through the train stage (ddp, 2 gloo workers, 12 epochs) over Ray Data shards, on 400 users
    whose walks jump to a random item 30% of the time (accuracy well off its ceiling), every rank writing the
    example ids it trained on per epoch."""
    from functools import partial

    from slim.train import distributed
    from slim.train import stage as job

    root = tmp_path_factory.mktemp("sharded")
    _write_run(root, seed=1, users=400, jump=0.3)
    trace = root / "trace"
    trace.mkdir()
    cfg = job.TrainConfig(run_dir=str(root), backbones=("sasrec",), variants=("id",), seeds=(0,), hidden=16,
                          max_len=10, epochs=EPOCHS, patience=EPOCHS, batch_size=32, lr=5e-3, strategy="ddp",
                          num_workers=2, cpus_per_run=1.0, test_protocols=("uni100",))
    with pytest.MonkeyPatch.context() as mp:  # the stage's own call, with the trace switched on
        mp.setattr(distributed, "train_distributed", partial(distributed.train_distributed, trace=str(trace)))
        m = job.run(cfg)
    return root, trace, m, json.loads((root / "models" / "sasrec-id-bce-s0" / "metrics.json").read_text())


def test_ray_train_shards_see_every_example_once_per_epoch(sharded):
    """Over the 2 workers every training example is trained on exactly once per epoch, each worker sees only part of
    them, both take the same number of steps (collectives in step although Ray Data's shards are uneven), and the
    order changes from epoch to epoch."""
    root, trace, _, rec = sharded
    d = D.load(root)
    w = D.train_windows(d.seqs, 10)  # sasrec: per-position windows; an example is (user, its last target's index)
    every = sorted(zip(w.user.tolist(), w.tpos.max(axis=1).tolist()))
    assert len(set(every)) == len(every) == rec["train_examples"]
    rows = max(1, round(32 / ((w.y > 0).sum() / len(w.y))))  # train.batch_rows: 32 targets per rank and step
    firsts = []
    for epoch in range(EPOCHS):
        z = [np.load(trace / f"rank{r}-epoch{epoch}.npz") for r in range(2)]
        ids = [list(map(tuple, x["ids"].tolist())) for x in z]
        assert sorted(ids[0] + ids[1]) == every, epoch  # each example once: none dropped, none repeated
        assert all(0 < len(i) < len(every) for i in ids), [len(i) for i in ids]  # a part each, not the whole set
        assert int(z[0]["steps"]) == int(z[1]["steps"]) >= -(-len(every) // (2 * rows))
        firsts.append(ids[0][:20])
    assert len({tuple(f) for f in firsts}) > 1  # reshuffled between epochs


def test_ray_train_over_shards_matches_fanout(sharded):
    """Ray Train over shards reaches the fan-out path's accuracy within seed noise. Measured on this data (400
    users, 12 epochs, uni100 NDCG@10): fan-out seeds 0-4 test 60.9-63.9, valid 64.1-66.1 (seeds 0-2, the
    reference here: test 62.8-63.9, valid 65.6-66.1); Ray Train over shards, 8 runs while this was written (its
    runs are not bit-reproducible, see recsys.ingest): test 59.6-63.6, valid 62.8-66.5, i.e. down to 3.2 points
    below the reference. The strided DDP path this replaced scored test 59.6 / 60.7, valid 62.6 / 61.7. So
    TOL_SHARDS is 5 points, a little over Ray Train's own seed spread (4 points); popularity ranking scores 4.3."""
    from slim.recsys.spec import RunSpec
    from slim.train.loop import fit

    root, _, m, rec = sharded
    assert rec["workers"] == 2 and rec["strategy"] == "ddp" and rec["epochs_run"] == EPOCHS
    d = D.load(root)
    # the same global batch (2 ranks x 32) and so the same number of optimizer steps
    spec = RunSpec("sasrec", "id", 0, hidden=16, max_len=10, epochs=EPOCHS, patience=EPOCHS, batch_size=64, lr=5e-3)
    fan = [fit(replace(spec, seed=s), d, None, "uni100", ("uni100",))[1] for s in (0, 1, 2)]
    assert rec["train_targets"] == fan[0]["train_targets"]  # every target once per epoch over the two ranks
    pop = _popularity_ndcg10(d)
    for split in ("valid", "test"):
        got, ref = rec[split]["uni100"]["NDCG@10"], [f[split]["uni100"]["NDCG@10"] for f in fan]
        assert got > pop + 30, (split, got, pop)
        assert min(ref) - TOL_SHARDS <= got <= max(ref) + TOL_SHARDS, (split, got, ref)


@pytest.mark.gpu
def test_ray_train_ddp_on_one_gpu_bf16(tmp_path, ray_local):
    """use_gpu: the Ray Train path on a GPU worker (nccl, bf16 autocast) trains: the loss falls, metrics.json says
    cuda, and the reloaded (CPU) weights rank the test targets far above popularity."""
    from slim.train import stage as job
    from slim.recsys.checkpoint import load_model
    from slim.recsys.ranking import evaluate

    _write_run(tmp_path, seed=1)
    cfg = job.TrainConfig(run_dir=str(tmp_path), backbones=("sasrec",), variants=("id",), seeds=(0,), hidden=16,
                          max_len=10, epochs=6, patience=6, batch_size=32, lr=5e-3, strategy="ddp", num_workers=1,
                          cpus_per_run=1.0, use_gpu=True, amp="bf16", test_protocols=("uni100",))
    job.run(cfg)
    out = tmp_path / "models" / "sasrec-id-bce-s0"
    rec = json.loads((out / "metrics.json").read_text())
    assert rec["device"] == "cuda" and rec["amp"] == "bf16" and rec["epochs_run"] == 6
    losses = [h["loss"] for h in rec["history"]]
    assert losses[-1] < losses[0], losses
    d = D.load(tmp_path)
    assert rec["test"]["uni100"]["NDCG@10"] > _popularity_ndcg10(d) + 15
    model, spec = load_model(out)
    again = evaluate(model, d, "test", ("uni100",), spec.max_len)["uni100"]["NDCG@10"]
    # GPU vs CPU float rounding: a tie broken differently moves one of 80 users (<= 1.25 points)
    assert again == pytest.approx(rec["test"]["uni100"]["NDCG@10"], abs=2.5)


def test_bf16_autocast_trains_every_backbone():
    """What train.amp=bf16 runs on a GPU worker, on the CPU's bf16 autocast: every backbone's loss is a finite fp32
    scalar with gradients (the GPU run itself is test_ray_train_ddp_on_one_gpu_bf16)."""
    import torch

    from slim.recsys.spec import RunSpec, build_model
    from slim.train.loop import batch_loss, examples

    rng = np.random.default_rng(0)
    seqs = [((s - 1 + np.arange(9)) % N + 1).astype(np.int32) for s in rng.integers(1, N + 1, 16)]
    text = rng.standard_normal((N + 1, 8)).astype(np.float32)
    d = D.SeqData(np.arange(16), seqs, N, {})
    for backbone in ("sasrec", "gru4rec", "srgnn"):
        for variant, loss in (("id", "bce"), ("id_text", "ce")):
            spec = RunSpec(backbone, variant, 0, hidden=16, max_len=10, loss=loss)
            model = build_model(spec, N, text if variant != "id" else None)
            b = examples(model, d, spec.max_len)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out, n = batch_loss(model, spec, *b.take(torch.arange(16))[:3], torch.Generator().manual_seed(0))
            out.backward()
            assert out.dtype == torch.float32 and torch.isfinite(out) and n > 0, (backbone, variant)
            assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_use_gpu_settings(run_dir):
    from slim.train import stage as job

    cfg = job.TrainConfig(run_dir=str(run_dir))
    with pytest.raises(ValueError, match="train.use_gpu"):
        job.specs(replace(cfg, use_gpu=True))
    # amp="none" (the default) and use_gpu leave the stage config and run fingerprints as they were before these
    # settings existed (pinned at 94d04a3, after valid_protocol=full and rationale_positions joined the config):
    # finished CPU runs are not retrained
    s = job.specs(cfg)[0]
    pinned = (job.fingerprint(job.stage_config(cfg)), job.run_fingerprint(s, {"data": "abc"}, cfg))
    for c in (cfg, replace(cfg, use_gpu=True)):
        assert (job.fingerprint(job.stage_config(c)), job.run_fingerprint(s, {"data": "abc"}, c)) == pinned
    assert job.run_fingerprint(s, {"data": "abc"}, replace(cfg, amp="bf16")) != pinned[1]


@pytest.mark.slow
def test_ray_train_deepspeed_two_workers(tmp_path, ray_local):
    """strategy=deepspeed (ZeRO-2 over 2 gloo workers) trains as the fan-out path does: the loss falls, the test
    targets rank far above popularity and within TOL_SHARDS of fan-out runs with the same global batch, and the
    weights it saved score the same when reloaded. (gru4rec barely learns here in 6 epochs on either path: test
    NDCG@10 8.1 fan-out, 8.5 deepspeed, popularity 6.5; sasrec: 62.8 fan-out.)"""
    from slim.train import stage as job
    from slim.recsys.checkpoint import load_model
    from slim.recsys.ranking import evaluate
    from slim.recsys.spec import RunSpec
    from slim.train.loop import fit

    _write_run(tmp_path, seed=2)
    cfg = job.TrainConfig(run_dir=str(tmp_path), backbones=("sasrec",), variants=("id",), seeds=(0,), hidden=16,
                          max_len=10, epochs=6, patience=6, batch_size=32, lr=5e-3, strategy="deepspeed",
                          num_workers=2, cpus_per_run=1.0, test_protocols=("uni100",))
    job.run(cfg)
    out = tmp_path / "models" / "sasrec-id-bce-s0"
    rec = json.loads((out / "metrics.json").read_text())
    assert rec["strategy"] == "deepspeed" and rec["workers"] == 2 and rec["epochs_run"] == 6
    losses = [h["loss"] for h in rec["history"]]
    assert losses[-1] < 0.9 * losses[0], losses
    d = D.load(tmp_path)
    ndcg, pop = rec["test"]["uni100"]["NDCG@10"], _popularity_ndcg10(d)
    spec = RunSpec("sasrec", "id", 0, hidden=16, max_len=10, epochs=6, patience=6, batch_size=64, lr=5e-3)
    ref = [fit(replace(spec, seed=s), d, None, "uni100", ("uni100",))[1]["test"]["uni100"]["NDCG@10"]
           for s in (0, 1)]
    assert ndcg > pop + 30 and min(ref) - TOL_SHARDS <= ndcg <= max(ref) + TOL_SHARDS, (ndcg, pop, ref)
    model, spec = load_model(out)
    # the stage evaluates in Ray tasks over blocks of users; a tie broken differently moves one of 80 users
    assert evaluate(model, d, "test", ("uni100",), spec.max_len)["uni100"]["NDCG@10"] == pytest.approx(ndcg, abs=2.5)


def test_example_dataset_holds_the_fanout_examples(ray_local):
    """The Ray Data examples (cut per block of users by Ray tasks) are the fan-out path's examples, rationale
    columns included, for windows (sasrec + slim), prefixes (srgnn) and the text matcher."""
    from slim.train.ingest import example_dataset
    from slim.models import TextMatch
    from slim.recsys.spec import RunSpec, build_model, example_kind
    from slim.train.loop import example_arrays, examples
    from slim.recsys.usertext import UserText

    rng = np.random.default_rng(0)
    seqs = [((s - 1 + np.arange(n)) % N + 1).astype(np.int64) for s, n in zip(rng.integers(1, N + 1, 37),
                                                                              rng.integers(4, 30, 37))]
    d = D.SeqData(np.arange(37), seqs, N, {})
    ut = UserText(rng.standard_normal((37, 8)).astype(np.float32), rng.random(37) < 0.7, 3, "whole", "student")
    text = rng.standard_normal((N + 1, 8)).astype(np.float32)
    for spec, u in ((RunSpec("sasrec", "slim", 0, hidden=8, max_len=10, user_text_dim=8, rationale_field="whole"), ut),
                    (RunSpec("srgnn", "id", 0, hidden=8, max_len=10), None),
                    (RunSpec("none", "text_match", 0, user_text_dim=8, rationale_field="whole"), ut)):
        model = build_model(spec, N, text)
        kind = example_kind(spec)  # read from the class, without a model: the same as the built model says
        assert kind == (model.per_position, isinstance(model, TextMatch)), spec.name
        want = example_arrays(*kind, seqs, spec.max_len, *((u.vec, u.present, u.cut) if u else ()))
        ds, n, targets = example_dataset(kind, d, spec.max_len, u, block_users=10)
        assert ds.num_blocks() >= 4 and n == len(want["x"]) and targets == int((want["y"] > 0).sum()), spec.name
        got = ds.to_pandas()
        a, b = np.lexsort((want["pos"], want["user"])), np.lexsort((got["pos"].to_numpy(), got["user"].to_numpy()))
        for k, w in want.items():
            g = got[k].to_numpy()
            g = np.stack(g) if w.ndim > 1 else g
            assert np.array_equal(g[b], w[a]), (spec.name, k)
        if u is not None:  # and what the fan-out path trains on: its Batches are these columns
            assert np.array_equal(examples(model, d, spec.max_len, u).text.numpy(), want["text"])


def test_workers_get_refs_not_the_users(ray_local):
    """What every Ray Train worker receives (train_loop_config) stays the same small size as users grow: the
    users' sequences and candidates travel as an object ref that rank 0 alone fetches, the training examples as
    Ray Data shards."""
    import pickle

    import ray

    from slim.train import stage as job
    from slim.train.distributed import loop_config
    from slim.recsys.spec import RunSpec

    cfg = job.TrainConfig(strategy="ddp")
    spec = RunSpec("sasrec", "id", 0)
    sizes = []
    for users in (100, 20_000):
        rng = np.random.default_rng(0)
        seqs = [rng.integers(1, N + 1, 20) for _ in range(users)]
        d = D.SeqData(np.arange(users), seqs, N, {("valid", "uni100"): rng.integers(1, N + 1, (users, 101))})
        conf = loop_config(spec, d, None, None, "out", "fp", job.run_settings(cfg), rows=8, examples=users)
        assert all(not isinstance(v, (D.SeqData, np.ndarray, list)) for v in vars(conf).values())
        sizes.append(len(pickle.dumps(conf)))
        assert ray.get(conf.users)[0].seqs[-1].tolist() == seqs[-1].tolist()  # rank 0 gets the users back
    assert sizes[1] - sizes[0] < 64 and sizes[1] < 4096, sizes


def test_ranking_in_blocks_on_the_cluster_equals_the_driver(run_dir, ray_local):
    """Ray tasks over blocks of users (model put once) give the in-driver ranks exactly: every protocol, the
    full-ranking top-10, a rationale model's vectors cut with its users."""
    from slim.recsys.blocks import BlockRanker
    from slim.recsys.ranking import evaluate, ranks
    from slim.recsys.spec import RunSpec, build_model
    from slim.recsys.usertext import UserText

    d = D.load(run_dir)
    rng = np.random.default_rng(0)
    ut = UserText(rng.standard_normal((U, 8)).astype(np.float32), rng.random(U) < 0.7, 3, "whole", "student")
    protocols = ("uni100", "pop100", "full", "full_keep")
    ranker = BlockRanker(d, block_users=23)  # 4 blocks, the last one short
    assert len(ranker.bounds) == 4
    slim = RunSpec("gru4rec", "slim", 0, hidden=16, max_len=10, user_text_dim=8, rationale_field="whole")
    for spec, u in ((RunSpec("sasrec", "id", 0, hidden=16, max_len=10), None), (slim, ut)):
        model = build_model(spec, N, rng.standard_normal((N + 1, 8)).astype(np.float32)).eval()
        for split in ("valid", "test"):
            want = ranks(model, d, split, protocols, spec.max_len, u, top=10)
            got = ranker.ranks(model, split, protocols, spec.max_len, u, top=10)
            assert set(got) == set(want) and all(np.array_equal(got[k], want[k]) for k in want), (spec.name, split)
        assert ranker.evaluate(model, "test", protocols, spec.max_len, u) == evaluate(model, d, "test", protocols,
                                                                                      spec.max_len, u)
    assert len(ranker._refs) == 2  # the blocks went to the object store once per user-text table, not per call
