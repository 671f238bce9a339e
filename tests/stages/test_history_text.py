"""Issue 27's mechanisms: where user text is fused in training (train.rationale_positions), the no-LLM control
(`history_text`: the encoded titles of the prompt's prefix, written by the real encode stage with MiniLM), and model
selection on full ranking."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from slim.io import columns as C
from slim.text.prompts import HISTORY_CUT, PromptConfig, history_text, training_prefix
from slim.recsys import data as D
from slim.recsys import usertext as UT
from slim.testing import planted as G

FAST = dict(backbones=("gru4rec",), seeds=(0,), hidden=32, max_len=12, epochs=10, patience=10, batch_size=64,
            lr=5e-3, losses=("ce",), test_protocols=("uni100", "full"))


def test_all_positions_fuse_every_training_target_and_the_prefix_never_holds_valid_or_test(tmp_path):
    from slim.models import REGISTRY, Recommender
    from slim.train.loop import examples

    G.write(tmp_path)
    d = D.load(tmp_path)
    lens = np.array([len(s) for s in d.seqs])
    ut = UT.load(tmp_path, d.user_ids, lens, "slim", "whole")
    for per_position, cut_fn in ((True, D.train_windows), (False, D.train_prefixes)):
        ex = cut_fn(d.seqs, 12)
        every = D.rationale_positions(ex.tpos, ex.user, lens, ut.cut, "all")
        assert (every == (ex.tpos >= 0)).all() and every.sum() > 3 * len(d.seqs)  # every target, not one per user
        after = D.rationale_positions(ex.tpos, ex.user, lens, ut.cut, "after_prefix")
        assert after.sum() == len(d.seqs) and (every | ~after).all()  # after_prefix is a subset: one per user
    # the model's batches carry the mask: with all, every training target of every user gets the user's vector
    name, cfg_cls = "gru4rec", REGISTRY["gru4rec"][1]
    model = Recommender(name, d.num_items, 16, cfg_cls(), "slim", np.zeros((d.num_items + 1, G.D), np.float32), G.D,
                        max_len=12)
    b_all, b_after = examples(model, d, 12, ut, "all"), examples(model, d, 12, ut, "after_prefix")
    assert (b_all.use == (b_all.y > 0)).all() and int(b_after.use.sum()) == len(d.seqs)
    ex = D.train_windows(d.seqs, 12)  # the rows examples() cut, in its order: each carries its own user's vector
    assert np.array_equal(b_all.text.numpy(), ut.vec[ex.user])
    with pytest.raises(ValueError, match="rationale_positions"):
        D.rationale_positions(np.zeros(3, np.int64), np.zeros(3, np.int64), lens, 3, "everywhere")
    # what every rationale (and the history control) was written from never holds the valid or test item
    for s in d.seqs:  # (the generated users never repeat an item)
        prefix = training_prefix(s)
        assert list(prefix) == list(s[:len(s) - HISTORY_CUT]) and not {int(s[-1]), int(s[-2])} & set(map(int, prefix))
    pc = PromptConfig(max_history_items=50)
    text = {i: f"title {i}" for i in range(1, G.N + 1)}
    for s in d.seqs[:50]:
        shown = history_text(s, text, pc)
        named = {int(line.split("title ")[1]) for line in shown.splitlines()}
        assert named == set(int(i) for i in s[:-HISTORY_CUT]) and not named & {int(s[-1]), int(s[-2])}


GENRES = ("racing cars", "zombie horror", "soccer football", "logic puzzle", "dragon fantasy", "flight simulator",
          "golf", "boxing", "cooking", "fishing", "chess", "space shooter", "pirate ships", "ninja", "tennis", "farming",
          "basketball", "detective mystery", "dinosaurs", "skateboarding", "military war", "music rhythm", "pinball",
          "wrestling")
N_H, U_H = 600, 400


def _titled(root, shuffle_titles: bool, seed: int = 0) -> None:
    """Items fall in genres; a user's whole sequence is drawn from one genre among many rarely repeated items
    (IDs see each item ~5 times), and an item's title names its genre: the prefix's titles say what comes next.
    shuffle_titles permutes the titles across items: the text then says nothing about the sequences."""
    from slim.io.rundir import Manifest, RunDir

    rng = np.random.default_rng(seed)
    genre = np.arange(N_H) % len(GENRES)  # item id i+1 has genre i % 24
    seqs = []
    for g in rng.integers(0, len(GENRES), U_H):
        seqs.append((rng.choice(np.flatnonzero(genre == g), rng.integers(6, 10), replace=False) + 1).astype(np.int32))
    titles = [f"{GENRES[genre[i]]} game number {i + 1}" for i in range(N_H)]
    if shuffle_titles:
        titles = [titles[j] for j in rng.permutation(N_H)]
    rd = RunDir(root)
    rd.path(C.CANDIDATES_DIR).mkdir(parents=True)
    pq.write_table(pa.table({
        C.USER_ID: pa.array(np.arange(U_H, dtype=np.int64)),
        C.ITEM_IDS: pa.array([s.tolist() for s in seqs], pa.list_(pa.int32())),
        C.VALID_ITEM: pa.array([s[-2] for s in seqs], pa.int32()), C.TEST_ITEM: pa.array([s[-1] for s in seqs], pa.int32()),
    }), rd.path(C.USERS_FILE))
    pop = np.bincount(np.concatenate([s[:-2] for s in seqs]), minlength=N_H + 1)[1:]
    pq.write_table(pa.table({C.ITEM_ID: pa.array(np.arange(1, N_H + 1, dtype=np.int32)), C.TITLE: titles,
                             C.TEXT: titles, C.POPULARITY: pa.array(pop.astype(np.int64))}), rd.path(C.ITEMS_FILE))
    pq.write_table(G.candidates(seqs, N_H, rng), rd.path(C.CANDIDATES_DIR) / "part-0.parquet")
    rd.write_manifest(Manifest("data", {"generated": True, "shuffled": shuffle_titles},
                               outputs=[C.USERS_FILE, C.ITEMS_FILE]))


def _history_run(root) -> dict:
    from slim.encode import stage as encode
    from slim.train import stage as job

    encode.run(encode.EncodeConfig(run_dir=str(root), sources=("history",), batch_size=128, ground_threshold=0))
    job.run(job.TrainConfig(run_dir=str(root), variants=("id", "history_text", "text_match"),
                            text_match_fields=("history",), rationale_positions=("after_prefix", "all"), **FAST))
    out = {}
    for name in ("gru4rec-id-ce-s0", "gru4rec-history_text-ce-s0", "gru4rec-history_text@all-ce-s0",
                 "text_match-history-ce-s0", "text_match-history@all-ce-s0"):
        out[name.split("-ce")[0]] = json.loads((root / "models" / name / "metrics.json").read_text())
    return out


@pytest.mark.slow
def test_history_text_finds_a_signal_planted_in_titles_and_not_when_shuffled(tmp_path, ray_local):
    _titled(tmp_path / "planted", shuffle_titles=False)
    got = _history_run(tmp_path / "planted")
    m = json.loads((tmp_path / "planted" / "encode" / "manifest.json").read_text())
    assert m["extra"]["history_cut"] == HISTORY_CUT and m["counts"]["history_users"] == U_H
    full = {k: r["test"]["full"]["NDCG@10"] for k, r in got.items()}
    # the prefix's genre names 25 of 600 items (chance NDCG@10 ~1.7): text alone finds them, and fused at every
    # position it lifts the ID model that sees each item only a few times
    assert full["text_match-history"] > 10 and full["gru4rec-history_text@all"] > full["gru4rec-id"] + 4, full
    assert all(r["valid_protocol"] == "full" for r in got.values())
    _titled(tmp_path / "shuffled", shuffle_titles=True)
    sh = {k: r["test"]["full"]["NDCG@10"] for k, r in _history_run(tmp_path / "shuffled").items()}
    assert sh["text_match-history"] < 5, (sh, full)  # the titles say nothing now: text alone is near chance
    assert sh["gru4rec-history_text@all"] < full["gru4rec-history_text@all"] - 4, (sh, full)


def test_history_control_text_is_the_prompts_prefix(tmp_path):
    """The control encodes exactly the numbered item texts a rationale prompt shows (same prefix, same cut)."""
    from slim.encode.users import HistoryText

    _titled(tmp_path, shuffle_titles=False)
    users = pq.read_table(tmp_path / C.USERS_FILE).to_pydict()
    ht = HistoryText(str(tmp_path / C.ITEMS_FILE), max_history_items=4, max_title_chars=12)
    out = ht({C.USER_ID: np.array(users[C.USER_ID][:5]), C.ITEM_IDS: users[C.ITEM_IDS][:5]})
    for ids, text in zip(users[C.ITEM_IDS][:5], out[C.RATIONALE]):
        lines = text.splitlines()
        assert len(lines) == min(4, len(ids) - HISTORY_CUT) and all(len(x.split(". ", 1)[1]) <= 12 for x in lines)
        assert lines[-1].endswith(f"{GENRES[(ids[-HISTORY_CUT - 1] - 1) % len(GENRES)]} game number {ids[-HISTORY_CUT - 1]}"[:12])
    assert set(out[C.STATUS]) == {"ok"} and not any(out[C.STEP3])


def test_specs_name_positions_and_history_runs():
    from slim.train import stage as job

    cfg = job.TrainConfig(variants=("id", "id_text", "slim", "history_text", "text_match"), backbones=("sasrec",),
                          seeds=(0,), text_match_fields=("whole", "history"), rationale_positions=("after_prefix", "all"))
    names = sorted(s.name for s in job.specs(cfg))
    assert names == sorted(["sasrec-id-bce-s0", "sasrec-id_text-bce-s0", "sasrec-slim-bce-s0", "sasrec-slim@all-bce-s0",
                            "sasrec-history_text-bce-s0", "sasrec-history_text@all-bce-s0",
                            "text_match-whole-bce-s0", "text_match-whole@all-bce-s0", "text_match-history-bce-s0",
                            "text_match-history@all-bce-s0"])
    fields = {s.name: s.rationale_field for s in job.specs(cfg)}
    assert fields["sasrec-history_text@all-bce-s0"] == "history" and fields["sasrec-slim-bce-s0"] == "whole"
    assert UT.source("history_text", "history") == UT.source("text_match", "history") == "history"
    assert cfg.valid_protocol == "full"  # the headline selects the models by default


def test_gains_compare_slim_with_history_text_in_the_same_position_mode():
    from slim.recsys import report as R

    assert R.baselines("slim@all") == ["id_text", "history_text@all", "id", "slim"]
    assert R.baselines("slim") == ["id_text", "history_text", "id"]
    assert R.baselines("history_text@all") == ["id_text", "history_text"]
    assert R.baselines("id_text+init") == ["id", "id_text"]
    rng = np.random.default_rng(0)
    base = rng.random(300) * 10
    pu = {("ce", "sasrec", v): {"full": base + (3 if v.startswith("slim") else 0)} for v in
          ("id", "id_text", "history_text", "slim", "history_text@all", "slim@all")}
    g = {(x["model"], x["baseline"]): x for x in R.gains(pu, ("full",))}
    assert g[("slim@all", "history_text@all")]["p_wilcoxon"] < 1e-6 and g[("slim@all", "history_text@all")]["gain_pct"] > 0
    assert g[("history_text", "id_text")]["p_wilcoxon"] == 1.0  # no difference, no evidence
