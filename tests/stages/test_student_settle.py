"""The student stage's bookkeeping without an engine or Ray: which rows count as done (slim.student.keys.done_set)
and how the end of a run settles the shards (slim.student.settle), on hand-written shards in the stage's schema.
Write times are set by hand (written_at), so "before the refresh" (since=1000) is exact."""

import numpy as np
import pyarrow as pa

from slim.io import columns as C
from slim.io import shards as S
from slim.student import keys as K
from slim.student.settle import settle
from slim.student.stage import SCHEMA

SINCE = 1000


def _rows(*rows) -> pa.Table:
    """rows: (user, written_at, status, key); the rationale names the user and the write time."""
    return pa.Table.from_pylist([{C.USER_ID: u, C.WRITTEN_AT: w, C.STATUS: st, C.ROW_KEY: k,
                                  C.RATIONALE: f"{u}@{w}"} for u, w, st, k in rows], schema=SCHEMA)


def _dirs(tmp_path):
    return tmp_path / "student", tmp_path / "student" / "_archive"


def _latest(folder) -> dict:
    t = S.read_latest(folder, schema=SCHEMA)
    return dict(zip(t.column(C.USER_ID).to_pylist(), t.column(C.RATIONALE).to_pylist()))


def _settle(live, archive, present, todo) -> dict:
    return settle(live, archive, np.array(present, np.int64), np.array(todo, np.int64), SINCE, SCHEMA)


def test_done_set_prefers_the_live_row_and_drops_failed_rows_when_retrying(tmp_path):
    live, archive = _dirs(tmp_path)
    S.write_shard(live, _rows((0, 10, "ok", "000000000000000a"), (1, 10, "failed", "000000000000000b")))
    S.write_shard(archive, _rows((0, 5, "ok", "00000000000000ff"), (2, 5, "ok", "000000000000000c")))
    done = K.done_set(live, archive, retry_failed=False)
    assert done.users.tolist() == [0, 1, 2] and done.keys.tolist() == [0xA, 0xB, 0xC]  # user 0: live, not archive
    retry = K.done_set(live, archive, retry_failed=True)
    assert retry.users.tolist() == [0, 2]
    assert retry.matches(np.array([0, 0, 1, 2]), np.array([0xA, 0xFF, 0xB, 0xC], np.uint64)).tolist() == [
        True, False, False, True]


def test_settle_counts_archives_and_restores(tmp_path):
    live, archive = _dirs(tmp_path)
    S.write_shard(live, _rows((0, 10, "ok", "a"), (1, 10, "ok", "b"), (3, 10, "ok", "d")))
    S.write_shard(live, _rows((1, 2000, "ok", "b2"), (2, 2000, "ok", "c")))  # this refresh: 1 again, 2 new
    S.write_shard(archive, _rows((4, 5, "ok", "e"), (5, 5, "ok", "f")))  # away before; 4 comes back unchanged
    counts = _settle(live, archive, [0, 1, 2, 4], todo=[1, 2])
    assert counts == {"reused": 1, "regenerated": 1, "new": 1, "dropped": 1, "superseded": 1, "restored": 1,
                      "missing": 0}
    assert _latest(live) == {0: "0@10", 1: "1@2000", 2: "2@2000", 4: "4@5"}  # 4's row keeps its write time
    assert S.read_shards(live, columns=[C.USER_ID]).num_rows == 4  # one row per present user
    assert sorted(S.user_ids(S.read_shards(archive, columns=[C.USER_ID]))) == [3, 5]  # 4 left the archive

    counts = _settle(live, archive, [0, 1, 2, 3, 4], todo=[])  # user 3 comes back unchanged
    assert counts["restored"] == 1 and counts["missing"] == 0 and counts["dropped"] == 0
    assert _latest(live)[3] == "3@10"
    assert S.user_ids(S.read_shards(archive, columns=[C.USER_ID])).tolist() == [5]  # no copy per leave and return
    files = S.shard_files(live, archive)
    assert _settle(live, archive, [0, 1, 2, 3, 4], todo=[])["restored"] == 0
    assert S.shard_files(live, archive) == files  # a settled run directory is left as it is


def test_a_returning_user_to_regenerate_is_never_restored(tmp_path):
    """User 1 left and came back with another history (so in todo), and the engine returned no row for them: the
    archived rationale is stale, so it stays out of live/ and the user counts as missing (the stage then refuses to
    write its manifest). Likewise user 0, whose live row's key no longer holds."""
    live, archive = _dirs(tmp_path)
    S.write_shard(live, _rows((0, 10, "ok", "a"), (2, 10, "ok", "c")))
    S.write_shard(archive, _rows((1, 5, "ok", "old")))
    counts = _settle(live, archive, [0, 1, 2], todo=[0, 1])
    assert counts["restored"] == 0 and counts["missing"] == 2
    assert set(_latest(live)) == {0, 2}
    assert S.user_ids(S.read_shards(archive, columns=[C.USER_ID])).tolist() == [1]  # kept until they have a row
