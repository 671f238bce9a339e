"""The end of a student run: the live shards hold one row per present user, and the manifest says what the run did.

- a user's older rows (superseded by a retry or a regeneration) are deleted;
- the row of a user no longer present (a new snapshot without them, a smaller max_users) moves to the archive
  (student/_archive), since users come back: a returning user whose prompt and model are unchanged gets that row
  back without a generation (slim.student.keys.done_set lets them through; `restore` moves the row back, and the
  archive keeps only users who are away); a user the run had to generate (todo) never gets an older row back: without
  a row of this refresh they count as missing, and the stage writes no manifest;
- counts, against the start of the refresh (`since`, kept across a kill, so a killed refresh restarted counts what
  the whole refresh did): reused (a row written before it), regenerated (a new row for a user who had one), new
  (a user who had none), restored (from the archive), dropped (archived), superseded (older rows deleted).

Shard by shard: a shard whose rows all stay is left as it is; another is rewritten without the rows that go, each
row keeping its write time (written_at), then deleted. A kill in between leaves the same row twice, which the
"latest row wins" rule (slim.io.shards) reads once, and the next run settles.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from slim.io import columns as C
from slim.io import shards
from slim.io import storage

ROW = "__row"  # position of a row across the live shards, in shard_files order


def _stamped(t: pa.Table, when: np.ndarray) -> pa.Table:
    """Rows with their write time in written_at, so a rewritten shard does not make them newer."""
    i = t.schema.get_field_index(C.WRITTEN_AT)
    return t.set_column(i, C.WRITTEN_AT, pa.array(when, pa.int64()))


def _winners(live) -> tuple[list, list, np.ndarray, np.ndarray, pa.Table]:
    """(shard files, their row counts, every row's user, every row's write time, the latest row per user)."""
    files = shards.shard_files(live)
    sizes = [storage.read_metadata(f).num_rows for f in files]
    meta = shards.read_shards(live, schema=pa.schema([(C.USER_ID, pa.int64())]))
    if meta.num_rows != sum(sizes):
        raise RuntimeError(f"{live}: shards changed while the student stage settled them; is another run writing?")
    users, order = shards.user_ids(meta), meta.column(shards.ORDER).to_numpy()
    meta = meta.append_column(ROW, pa.array(np.arange(meta.num_rows), pa.int64()))
    return files, sizes, users, order, shards.latest(meta)


def settle(live, archive, present: np.ndarray, todo: np.ndarray, since: int, schema: pa.Schema) -> dict:
    """Bring live/ to one row per present user (see the module docstring); returns the counts. `todo`: the users
    this run had to generate; one of them without a row of this refresh counts as missing (never restored)."""
    files, sizes, users, order, win = _winners(live)
    rows, who = win.column(ROW).to_numpy(), shards.user_ids(win)
    here, fresh = np.isin(who, present), order[rows] >= since
    had = np.isin(who, users[order < since])
    counts = {"reused": int((here & ~fresh).sum()), "regenerated": int((here & fresh & had).sum()),
              "new": int((here & fresh & ~had).sum()), "dropped": int((~here).sum()),
              "superseded": int(len(users) - len(rows))}
    keep, move = np.zeros(len(users), bool), np.zeros(len(users), bool)
    keep[rows[here]], move[rows[~here]] = True, True
    start = 0
    for f, n in zip(files, sizes):
        k, m, when = keep[start:start + n], move[start:start + n], order[start:start + n]
        start += n
        if k.all():
            continue
        t = _stamped(storage.read_table(f, schema=schema), when)
        shards.write_shard(live, t.filter(pa.array(k)))  # both written before the old shard goes
        shards.write_shard(archive, t.filter(pa.array(m)), prefix="archive")
        f.unlink(missing_ok=True)
    lacking = np.setdiff1d(present, who[here])
    stale = np.intersect1d(todo, who[here & ~fresh])  # to generate, yet its row predates the refresh
    counts["restored"] = restore(live, archive, np.setdiff1d(lacking, todo), who[here], schema)
    counts["missing"] = len(lacking) - counts["restored"] + len(stale)
    return counts


def restore(live, archive, wanted: np.ndarray, live_users: np.ndarray, schema: pa.Schema) -> int:
    """The latest archived row of each `wanted` user (present, no live row, not to generate: its archived key
    matched) back into live/; the archive then loses every row of a user with a live row, so it holds only users
    who are away and does not grow by a copy per leave and return. Only archive shards holding such users are
    read whole. -> rows restored."""
    out = np.union1d(wanted, live_users)
    back, rest = [], []
    for f in shards.shard_files(archive):
        ids = shards.user_ids(storage.read_table(f, columns=[C.USER_ID]))
        leaving = np.isin(ids, out)
        if not leaving.any():
            continue
        t = storage.read_table(f, schema=schema)
        back.append(t.filter(pa.array(np.isin(ids, wanted))))
        rest.append((f, t.filter(pa.array(~leaving))))
    got = _latest_stamped(back, schema)
    shards.write_shard(live, got, prefix="restored")  # before the archive loses them: a kill leaves a copy, not none
    for f, t in rest:
        shards.write_shard(archive, t, prefix="archive")
        f.unlink(missing_ok=True)
    return got.num_rows


def _latest_stamped(parts: list, schema: pa.Schema) -> pa.Table:
    """The latest row per user of archived rows, which carry their write time (settle stamps what it archives)."""
    t = pa.concat_tables(parts) if parts else schema.empty_table()
    t = shards.latest(t.append_column(shards.ORDER, pc.fill_null(t.column(C.WRITTEN_AT), 0)))
    return t.sort_by(C.USER_ID)
