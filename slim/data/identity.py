"""Ids that survive a new snapshot. When the data stage reruns into a run directory that already holds a snapshot,
every user and item of that snapshot keeps its int id, and ids are never reused:

- items: `items.parquet` keeps every item the run directory ever gave an id, so item ids stay 1..N and every
  table sized by them (`encode/items.npy`, embedding tables) keeps its rows. An item of an earlier snapshot that the
  new one does not touch stays with `present` false, popularity 0 and its last known text; the candidates never
  draw it. New items get ids after the largest one, in raw-id order. An item's text is always the new snapshot's.
- users: `user_ids.parquet` (raw_user_id, user_id, sorted by raw id) lists every user ever given an id. A user of
  the new snapshot found there keeps its id; new users get ids after the largest ever given, in raw-id order. A
  user absent from the new snapshot has no row in `users.parquet`, and its id is never given to another user, so
  user ids may have holes (downstream looks users up by id, never by position).

A fresh run directory gets what it always got: users 0..U-1 and items 1..N in raw-id order, all present.
The user map is carried bucket by bucket (a bucket holds a range of raw ids), so no process holds it whole: the
bucket tasks that count and write the users (slim.data.buckets) carry their users' ids as they go, so no part of
users.parquet is read again or rewritten for it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from slim.io import columns as C
from slim.io import storage
from slim.data.sources import DataError


@dataclass
class Previous:
    """What the run directory's last snapshot left: its items table and its user map (a path), if any."""

    items: pa.Table | None = None
    users: str | None = None  # user_ids.parquet, or users.parquet of a run prepared before it existed
    next_user: int = 0  # the first user id never given


def load(run_dir) -> Previous:
    """The previous snapshot in a run directory; an empty Previous when there is none."""
    items_p, map_p, users_p = (storage.path(run_dir) / n for n in (C.ITEMS_FILE, C.USER_IDS_FILE, C.USERS_FILE))
    if not items_p.exists():
        return Previous()
    items = storage.read_table(items_p).sort_by(C.ITEM_ID)
    ids = items.column(C.ITEM_ID).to_numpy()
    if not np.array_equal(ids, np.arange(1, len(ids) + 1)):
        raise DataError(f"{items_p}: {C.ITEM_ID} is not 1..{len(ids)}, so its ids cannot be carried to a new "
                        "snapshot; remove the run directory's data/ folder to number afresh")
    users = map_p if map_p.exists() else users_p if users_p.exists() else None
    if users is None:
        return Previous(items)
    return Previous(items, str(users), _max_id(users) + 1)


def _max_id(path) -> int:
    """The largest user id in a map or users file, from its row groups' statistics (read from the column only
    where a writer left none); -1 when it is empty."""
    meta, top = storage.read_metadata(path), -1
    col = meta.schema.to_arrow_schema().get_field_index(C.USER_ID)
    for g in range(meta.num_row_groups):
        st = meta.row_group(g).column(col).statistics
        if st is None or not st.has_min_max:
            return max(top, int(pc.max(storage.read_table(path, columns=[C.USER_ID]).column(C.USER_ID)).as_py()))
        top = max(top, int(st.max))
    return top


def item_order(used: list, prev: Previous) -> tuple[list, np.ndarray]:
    """(raw item ids in id order: row k is item k + 1, present flags): the previous snapshot's items first, in their
    ids, then the new ones of `used` (sorted raw ids) in raw-id order."""
    if prev.items is None:
        return list(used), np.ones(len(used), bool)
    old = prev.items.column(C.RAW_ITEM_ID).to_pylist()
    seen = set(old)
    order = old + [r for r in used if r not in seen]
    in_use = set(used)
    return order, np.fromiter((r in in_use for r in order), bool, len(order))


def old_text(prev: Previous) -> dict:
    """raw item id -> {title, category, brand} of the previous snapshot: the text an absent item keeps."""
    if prev.items is None:
        return {}
    cols = {k: prev.items.column(k).to_pylist() for k in (C.RAW_ITEM_ID, C.TITLE, C.CATEGORY, C.BRAND)}
    return {r: {"title": t, "category": c, "brand": b}
            for r, t, c, b in zip(cols[C.RAW_ITEM_ID], cols[C.TITLE], cols[C.CATEGORY], cols[C.BRAND])}


def ranges(files: list, column: str) -> list:
    """Per bucket file (bucket order = raw-id order, each sorted by `column`, the raw user id): the raw-id range
    (lo, hi) it owns, lo <= id < hi, None = unbounded. A bucket's range ends where the next non-empty one starts, so
    the ranges cover every string and each entry of the previous map falls in exactly one (an empty file owns an
    empty range). Reads each file's first row only."""
    firsts = []
    for f in files:
        head = storage.dataset(f).head(1, columns=[column]).column(column)
        firsts.append(head[0].as_py() if len(head) else None)
    his, nxt = [None] * len(firsts), None
    for b in range(len(firsts) - 1, -1, -1):
        his[b] = nxt
        nxt = firsts[b] if firsts[b] is not None else nxt
    return list(zip([None] + his[:-1], his))


def _previous(path: str, lo, hi) -> pa.Table:
    """The previous map's entries with lo <= raw id < hi (the map is sorted by raw id: row groups outside are
    skipped by their statistics)."""
    f = None
    for cond in ((ds.field(C.RAW_USER_ID) >= lo) if lo is not None else None,
                 (ds.field(C.RAW_USER_ID) < hi) if hi is not None else None):
        if cond is not None:
            f = cond if f is None else f & cond
    t = storage.dataset(path).to_table(columns=[C.RAW_USER_ID, C.USER_ID], filter=f)
    return t.cast(MAP_SCHEMA).combine_chunks()


MAP_SCHEMA = pa.schema([(C.RAW_USER_ID, pa.string()), (C.USER_ID, pa.int64())])


def _match(raw: pa.Array, old: pa.Table) -> np.ndarray:
    """Per raw id: its row in `old`, -1 when new."""
    idx = pc.index_in(raw, value_set=old.column(C.RAW_USER_ID).combine_chunks())
    return pc.fill_null(idx, -1).to_numpy().astype(np.int64)


def count_new(raw: pa.Array, prev: str, lo, hi) -> int:
    """How many of a bucket's raw user ids (its range lo..hi) the previous map does not hold."""
    return int((_match(raw, _previous(prev, lo, hi)) < 0).sum())


def carried(raw: pa.Array, prev: str, lo, hi, first_new: int) -> tuple[np.ndarray, pa.Table]:
    """A bucket's user ids (raw: its users' raw ids in raw-id order, range lo..hi): a user the previous map holds
    keeps its id, the new ones get first_new, +1, ... in raw-id order. -> (ids, the bucket's range of the new map:
    the previous entries, vanished users included, and the new users, sorted by raw id)."""
    old = _previous(prev, lo, hi)
    idx = _match(raw, old)
    new = idx < 0
    ids = np.empty(len(idx), np.int64)
    ids[~new] = old.column(C.USER_ID).to_numpy()[idx[~new]]
    ids[new] = first_new + np.arange(int(new.sum()), dtype=np.int64)
    added = pa.table({C.RAW_USER_ID: raw.filter(pa.array(new)), C.USER_ID: pa.array(ids[new])}, MAP_SCHEMA)
    return ids, pa.concat_tables([old, added]).sort_by(C.RAW_USER_ID)
