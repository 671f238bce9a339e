"""The encode stage across reruns (issue 39, item 4): vectors kept in stores keyed by the encoder settings and the
exact text, so a rerun encodes only new and changed texts, and a killed run resumes from its store shards.
Real all-MiniLM-L6-v2 from its wheel, in the stage's Ray Data actor pool; the run directory of tests/stages/test_encode.py
(hand-written student shards, which share step 2 across users and hold an empty row and an over-long one)."""

import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from slim.encode import store
from slim.encode.stage import EncodeConfig, run
from slim.io import columns as C
from slim.io import shards as S
from slim.io.rundir import Manifest, RunDir
from slim.testing.rundata import write_run_data
from tests.stages.test_encode import _rationales

USERS, ITEMS = 12, 40
PLANTED = (1, 6, 9)  # users whose rationale the student rewrites
FIELDS = C.USER_EMB_FIELDS


def _cfg(run_dir) -> EncodeConfig:
    return EncodeConfig(run_dir=str(run_dir), batch_size=3, shard_rows=2)  # several store shards per field


def _student_manifest(d) -> None:
    """The student's manifest names its shards, so a rewritten row changes what the encode stage sees."""
    RunDir(d).write_manifest(Manifest("student", {"hand": True}, outputs=[C.STUDENT_SHARDS], counts={"users": USERS}))


def _outputs(d) -> dict:
    """Every file downstream stages read, rows in user order."""
    out = {"items": np.load(d / C.ITEM_EMB_FILE)}
    for f in FIELDS:
        t = pq.read_table(d / C.USER_EMB_FILE.format(field=f)).sort_by(C.USER_ID)
        assert t.column(C.USER_ID).to_pylist() == list(range(USERS)), f  # every user once
        out[f] = np.stack(t.column(C.EMBEDDING).to_numpy(zero_copy_only=False))
    g = pq.read_table(d / C.GROUNDING_FILE.format(source="student")).sort_by(C.USER_ID)
    out["grounding"] = g.to_pydict()
    return out


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if k == "grounding":  # the products and their items; the similarities up to BLAS's blocking of p @ items.T
            assert {c: a[k][c] for c in (C.USER_ID, "products", "item_ids")} == \
                {c: b[k][c] for c in (C.USER_ID, "products", "item_ids")}
            assert np.allclose(np.concatenate(a[k]["sims"]), np.concatenate(b[k]["sims"]), atol=1e-6)
        else:
            assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k  # bitwise


def _stored(d) -> dict:
    """store name -> its text hashes, one per row written (duplicates kept)."""
    root = d / C.ENCODE_STORE
    return {p.name: S.read_shards(p, columns=[C.TEXT_HASH]).column(C.TEXT_HASH).to_numpy()
            for k in root.iterdir() for p in k.iterdir()}


@pytest.fixture(scope="module")
def fresh(tmp_path_factory, ray_local):
    """A run directory encoded from scratch: (its path, its outputs, its manifest)."""
    d = write_run_data(tmp_path_factory.mktemp("enc_refresh"), num_users=USERS, num_items=ITEMS)
    (d / C.STUDENT_SHARDS).mkdir(parents=True)
    t = _rationales(USERS)
    S.write_shard(d / C.STUDENT_SHARDS, t.slice(0, 7))
    S.write_shard(d / C.STUDENT_SHARDS, t.slice(7))
    _student_manifest(d)
    m = run(_cfg(d))
    return d, _outputs(d), m


def _plant(d, users) -> None:
    """The student regenerated `users`: their new rows in a new shard, the old shards rewritten without them
    (slim.student.settle's way)."""
    old = S.shard_files(d / C.STUDENT_SHARDS)
    rows = pa.concat_tables([pq.read_table(f) for f in old])
    mask = pa.array(np.isin(rows.column(C.USER_ID).to_numpy(), users))
    s1 = [f"The user now collects chess and farming games, case {u}." for u in users]
    s2 = [f"1. Chess 2. Farming 3. Robots {u}" for u in users]
    s3 = [f"Chess: Robot Chess {u}; Farming: Harvest Hero" for u in users]
    new = pa.table({C.USER_ID: pa.array(users, pa.int64()), C.STEP1: s1, C.STEP2: s2, C.STEP3: s3,
                    C.RATIONALE: [f"Step 1: {a}\nStep 2: {b}\nStep 3: {c}" for a, b, c in zip(s1, s2, s3)],
                    C.STATUS: ["ok"] * len(users)}).select(rows.column_names)
    S.write_shard(d / C.STUDENT_SHARDS, new)
    S.write_shard(d / C.STUDENT_SHARDS, rows.filter(pa.compute.invert(mask)))
    for f in old:
        f.unlink()
    _student_manifest(d)


def test_refresh_encodes_exactly_the_changed_texts(fresh, tmp_path):
    src, before, first = fresh
    c = first.counts  # from scratch: every distinct text once (step 2 is one text for all, user 4's row empty)
    assert c["item_encoded"] == ITEMS and c["rationale_encoded"] == USERS - 1 and c["step2_encoded"] == 1
    assert c["step2_reused"] == USERS - 2 and c["rationale_reused"] == 0
    d = shutil.copytree(src, tmp_path / "run")
    _plant(d, list(PLANTED))
    m = run(_cfg(d))
    k = len(PLANTED)
    assert m.counts["item_encoded"] == 0 and m.counts["item_reused"] == ITEMS
    for f in FIELDS:  # exactly the k new texts per field; every other user's vector came from the store
        assert m.counts[f"{f}_encoded"] == k, f
        assert m.counts[f"{f}_reused"] == USERS - 1 - k, f
    refreshed = _outputs(d)
    unchanged = [u for u in range(USERS) if u not in PLANTED]
    for f in FIELDS:
        assert np.array_equal(refreshed[f][unchanged], before[f][unchanged])
        assert not (refreshed[f][list(PLANTED)] == before[f][list(PLANTED)]).all(1).any(), f
    # a from-scratch encode of the new inputs gives the very same files
    scratch = run(_cfg(d), force=True)
    assert scratch.counts["rationale_encoded"] == USERS - 1 and scratch.counts["item_encoded"] == ITEMS
    _same(refreshed, _outputs(d))
    # rerun without a change (its manifest gone, as after an upstream change that leaves every text as it was)
    RunDir(d).invalidate("encode")
    again = run(_cfg(d))
    assert again.counts["item_encoded"] == 0 and all(again.counts[f"{f}_encoded"] == 0 for f in FIELDS)
    assert again.counts["rationale_reused"] == USERS - 1
    _same(refreshed, _outputs(d))


def _fail_after_shards(monkeypatch, limit: int) -> None:
    """The driver dies right after writing its `limit`-th store shard: the Sink (in this process: the test runs the
    stage in-process) writes it, then raises, as a kill between two shards would leave the store."""
    flush, written = store.Sink._flush, [0]

    def failing(self, n):
        wrote = bool(self.buf[n])
        flush(self, n)
        written[0] += wrote
        if written[0] >= limit:
            raise RuntimeError(f"injected failure after {written[0]} store shard(s)")

    monkeypatch.setattr(store.Sink, "_flush", failing)


def test_killed_encode_resumes_without_duplicates_or_gaps(fresh, tmp_path, monkeypatch):
    src, reference, first = fresh
    d = shutil.copytree(src, tmp_path / "run", ignore=shutil.ignore_patterns("encode"))
    total = {n: len(np.unique(h)) for n, h in _stored(src).items()}
    with monkeypatch.context() as mp, pytest.raises(RuntimeError, match="injected failure"):
        _fail_after_shards(mp, 2)  # the second store shard (how Ray Data cuts blocks decides which)
        run(_cfg(d))
    assert RunDir(d).read_manifest("encode") is None and not (d / C.USER_EMB_FILE.format(field="step1")).exists()
    kept = {n: len(h) for n, h in _stored(d).items()}
    assert 0 < sum(kept.values()) < sum(total.values())  # a part is stored, the rest is not
    m = run(_cfg(d))
    stored = _stored(d)
    for n, h in stored.items():  # each text once in its store, and exactly the texts a fresh run stores
        assert len(h) == len(np.unique(h)) == total[n], n
    names = {"items_text": "item_encoded", **{f"student_{f}": f"{f}_encoded" for f in FIELDS}}
    for n, key in names.items():  # the resumed run encoded only what the killed one had not stored
        assert m.counts[key] == total[n] - kept.get(n, 0), n
    _same(reference, _outputs(d))
