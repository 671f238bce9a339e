"""Per-bucket work of the data stage. A bucket holds every interaction of a range of raw user ids (bucket b's users
all sort before bucket b+1's), so everything per user is local to one bucket: each function here reads and writes
scratch Parquet files of one chunk or bucket and returns a small summary (counts over items, never over all users).
They run as Ray tasks on any node, or in-process for small inputs.

Scratch columns: user (raw id), item (int32 code given while reading; not the final item id), time (int64), row
(int64, position in the source: ties in time keep it), ucode (int32, the user's rank inside its sorted bucket).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from slim.io import columns as C
from slim.io import storage
from slim.data import identity
from slim.data import sequences


def writer(where: str, schema: pa.Schema) -> pq.ParquetWriter:
    """A Parquet file written table by table (one row group each), here or in a bucket."""
    p = storage.path(where)
    if storage.is_remote(p):
        return pq.ParquetWriter(p.key, schema, filesystem=p.fs)
    p.parent.mkdir(parents=True, exist_ok=True)
    return pq.ParquetWriter(p, schema)


def write(table: pa.Table, where: str) -> None:
    with writer(where, table.schema) as w:
        w.write_table(table)


def read(where: str, columns: list | None = None, **kw) -> pa.Table:
    return storage.read_table(where, columns=columns, **kw)


def partition(chunk: str, bounds: list, out_dir: str, k: int) -> list:
    """Split one raw chunk by user-id range into out_dir/b<bucket>/c<k>.parquet; returns the buckets it wrote."""
    t = read(chunk)
    users = np.asarray(t.column("user").to_pylist(), dtype=object)  # Python str order is code-point order
    b = np.searchsorted(np.asarray(bounds, dtype=object), users, side="right") if bounds else np.zeros(len(t), int)
    order = np.argsort(b, kind="stable")
    cuts = np.flatnonzero(np.diff(b[order])) + 1
    written = []
    for idx in np.split(order, cuts):
        bucket = int(b[idx[0]])
        write(t.take(pa.array(idx)), f"{out_dir}/b{bucket:05d}/c{k:06d}.parquet")
        written.append(bucket)
    return written


def sort_bucket(pieces: list, out: str) -> int:
    """One bucket's pieces -> one file sorted by (user, time, row): each user's events in the order the in-memory
    stage gave them (Arrow compares strings by UTF-8 bytes, the same order as code points). Returns its rows."""
    t = pa.concat_tables([read(p) for p in pieces])
    t = t.sort_by([("user", "ascending"), ("time", "ascending"), ("row", "ascending")])
    u = t.column("user").combine_chunks()
    change = np.asarray(pc.not_equal(u.slice(1), u.slice(0, len(u) - 1)), dtype=np.int32)
    ucode = np.r_[0, np.cumsum(change)].astype(np.int32)[:len(u)]
    write(t.select(["user", "item", "time"]).append_column("ucode", pa.array(ucode)), out)
    return t.num_rows


def _select(ucode: np.ndarray, item: np.ndarray, alive: np.ndarray, min_user: int, picks) -> tuple:
    """(row mask, per-user counts, kept users): rows on alive items of users with at least `min_user` of them,
    and of those users only the `picks` (ranks among them) when a sample is drawn."""
    ok = alive[item]
    n_users = int(ucode[-1]) + 1 if len(ucode) else 0
    cnt = np.bincount(ucode[ok], minlength=n_users)
    keep_u = cnt >= max(min_user, 1)
    if picks is not None:
        ranked = np.flatnonzero(keep_u)
        keep_u = np.zeros_like(keep_u)
        keep_u[ranked[np.asarray(picks, dtype=np.int64)]] = True
    return ok & keep_u[ucode], cnt, keep_u


def smallest_keys(where: str, alive: np.ndarray, min_user: int, seed: int, k: int) -> dict:
    """The k kept users of a bucket whose raw ids hash smallest (slim.io.keyhash, "<seed>:<raw id>"): their hashes
    and ranks among the kept users (the `picks` of _select), for the `max_users` sample."""
    from slim.io.keyhash import key_hashes

    t = read(where, ["ucode", "item", "user"])
    ucode, item = t.column("ucode").to_numpy(), t.column("item").to_numpy()
    _, _, keep_u = _select(ucode, item, alive, min_user, None)
    first = np.searchsorted(ucode, np.flatnonzero(keep_u))  # each kept user's first row: its raw id
    h = key_hashes(t.column("user").take(pa.array(first)).cast(pa.string()).to_pylist(), seed)
    take = np.argsort(h, kind="stable")[:k]
    return {"hash": h[take], "rank": take.astype(np.int64)}


def core_pass(where: str, alive: np.ndarray, min_user: int, min_history: int) -> dict:
    """One pass of the k-core over a bucket: users are cut at `min_user` events on the `alive` items; returns how
    many events each item keeps, and the users left below `min_history` (their count and the first one's row)."""
    t = read(where, ["ucode", "item"])
    ucode, item = t.column("ucode").to_numpy(), t.column("item").to_numpy()
    keep, cnt, keep_u = _select(ucode, item, alive, min_user, None)
    short = np.flatnonzero(keep_u & (cnt < min_history))
    first = int(np.searchsorted(ucode, short[0])) if len(short) else None  # its row; the raw id is read once
    return {"item_counts": np.bincount(item[keep], minlength=len(alive)), "users": int(keep_u.sum()),
            "short": len(short), "first_short_row": first}


def _raw_ids(t: pa.Table, ucode: np.ndarray, keep_u: np.ndarray) -> pa.Array:
    """The raw ids of a bucket's kept users, in raw-id order (each kept user's first row)."""
    first = np.searchsorted(ucode, np.flatnonzero(keep_u))
    return t.column("user").take(pa.array(first)).cast(pa.string()).combine_chunks()


def item_counts(where: str, alive: np.ndarray, min_user: int, picks, carry=None) -> dict:
    """Over the kept (and picked) users of a bucket: events per item, and per item in training prefixes (all but
    each user's last two events: the popularity the items table reports). carry: (previous user map, lo, hi) of a
    refresh (slim.data.identity.ranges): also how many of those users the map does not hold ("new")."""
    t = read(where, ["ucode", "item"] + (["user"] if carry else []), read_dictionary=["user"] if carry else None)
    ucode, item = t.column("ucode").to_numpy(), t.column("item").to_numpy()
    keep, cnt, keep_u = _select(ucode, item, alive, min_user, picks)
    new = {"new": identity.count_new(_raw_ids(t, ucode, keep_u), *carry)} if carry else {}
    ends = np.cumsum(cnt[keep_u])
    kept = item[keep]
    train = np.ones(len(kept), dtype=bool)
    train[ends - 1] = False
    train[ends - 2] = False
    return {"all": np.bincount(kept, minlength=len(alive)), "train": np.bincount(kept[train], minlength=len(alive)),
            "users": int(keep_u.sum()), **new}


def build_users(where: str, alive: np.ndarray, min_user: int, picks, item_ids: np.ndarray, first_id: int,
                out: str, carry=None) -> dict:
    """A bucket's rows of users.parquet: user ids from `first_id` on in raw-id order, items mapped to their final
    ids (`item_ids[code]`), the leave-one-out targets. Written to `out`; returns its user count and longest history.
    carry: (previous user map, lo, hi, first new id, where to write the bucket's range of the new map) of a refresh:
    the ids are carried instead (slim.data.identity.carried)."""
    t = read(where)
    ucode, item = t.column("ucode").to_numpy(), t.column("item").to_numpy()
    keep, cnt, keep_u = _select(ucode, item, alive, min_user, picks)
    lengths = cnt[keep_u]
    offsets = np.r_[0, np.cumsum(lengths)]
    ids = item_ids[item[keep]].astype(np.int32)
    kept_rows = np.flatnonzero(keep)
    starts = kept_rows[offsets[:-1]] if len(lengths) else kept_rows[:0]
    ends = offsets[1:]
    raw = t.column("user").take(pa.array(starts)).cast(pa.string()).combine_chunks()
    if carry:
        prev, lo, hi, first_new, map_out = carry
        user_ids, ids_map = identity.carried(raw, prev, lo, hi, first_new)
        write(ids_map, map_out)
    else:
        user_ids = np.arange(first_id, first_id + len(lengths), dtype=np.int64)
    users = pa.table({
        C.USER_ID: pa.array(user_ids, pa.int64()),
        C.RAW_USER_ID: raw,
        C.ITEM_IDS: sequences.list_array(ids, offsets, np.int32),
        C.TIMESTAMPS: sequences.list_array(t.column("time").to_numpy()[keep], offsets, np.int64),
        C.HISTORY_LEN: pa.array(lengths.astype(np.int32)),
        C.VALID_ITEM: pa.array(ids[ends - 2]),
        C.TEST_ITEM: pa.array(ids[ends - 1]),
    })
    write(users, out)
    return {"users": users.num_rows, "max_len": int(lengths.max()) if len(lengths) else 0}


def candidates(users: str, out: str, seed: int, num_items: int, n: int, cdf: np.ndarray, batch: int,
               uni_cdf: np.ndarray | None = None) -> int:
    """A bucket's users (a part of users.parquet) -> their candidate rows (valid/test x uni100/pop100: 4 per user)
    in `out`, sampled and written `batch` users at a time, so memory follows the bucket and the batch. The negatives
    are a tensor column, as Ray Data wrote them before. uni_cdf: see sequences.candidates_batch. Returns the rows
    written."""
    from ray.data.extensions import ArrowTensorArray

    t = read(users, [C.USER_ID, C.ITEM_IDS])
    w, rows = None, 0
    for a in range(0, t.num_rows, batch):
        part = t.slice(a, batch)
        lists = part.column(C.ITEM_IDS).combine_chunks()
        flat, off = lists.flatten().to_numpy(), lists.offsets.to_numpy() - lists.offsets[0].as_py()
        seqs = [flat[off[i]:off[i + 1]] for i in range(len(lists))]
        got = sequences.candidates_batch({C.USER_ID: part.column(C.USER_ID).to_numpy(), C.ITEM_IDS: seqs},
                                 seed, num_items, n, cdf, uni_cdf)
        table = pa.table({C.USER_ID: got[C.USER_ID], C.SPLIT: got[C.SPLIT], C.PROTOCOL: got[C.PROTOCOL],
                          C.TARGET: got[C.TARGET], C.NEGATIVES: ArrowTensorArray.from_numpy(got[C.NEGATIVES])})
        w = w or writer(out, table.schema)
        w.write_table(table)
        rows += table.num_rows
    if w is not None:
        w.close()
    return rows
