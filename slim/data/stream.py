"""The data stage's tables in bounded memory: the input is read in chunks and spilled to scratch Parquet, split into
buckets by range of raw user id, and every step per user runs bucket by bucket (slim.data.buckets), as Ray tasks
when `parallel`. The driver keeps only what is per item (codes, text, counts) and per bucket.

In a fresh run directory the output is the in-memory stage's, row for row (a previous snapshot's ids are carried
instead: slim.data.identity): user ids 0..U-1 follow the raw user ids' sorted order (buckets are
ranges of it, so a bucket's first id is the number of users in the buckets before it); item ids 1..N the sorted raw
item ids that survive; sequences sort by (time, source row); the filters (items without text, the k-core, users
too short to split) reach the same fixed point whatever order they run in, because it is the largest set meeting
every threshold; `max_users` keeps the surviving users whose raw ids hash smallest (slim.io.keyhash), so a newer
snapshot keeps (almost) the same sample.
"""

from __future__ import annotations

import ctypes
import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from slim.io import columns as C
from slim.io import storage
from slim.data import buckets
from slim.data import identity
from slim.data import sequences
from slim.data.sources import DataError, Problems, Source

log = logging.getLogger(__name__)
SAMPLE_PER_CHUNK, SAMPLE_CAP = 2048, 200_000  # raw user ids kept to place the bucket boundaries


@dataclass
class Spilled:
    """What reading left: chunk files, item codes (raw id -> code, in first-seen order) and a sample of user ids."""

    chunks: list = field(default_factory=list)
    codes: dict = field(default_factory=dict)
    sample: list = field(default_factory=list)
    rows: int = 0


def run_tasks(fn, args: list, parallel: bool) -> list:
    """fn(*a) for each a, as Ray tasks when `parallel`: one real core each, so that no more buckets are in memory
    at once than there are cores; arrays shared by the calls are put in the object store once."""
    if not parallel:
        return [fn(*a) for a in args]
    import ray

    from slim.runtime.raycluster import cores_request

    task = ray.remote(num_cpus=1, resources=cores_request(1))(released).options(name=fn.__name__)  # its title
    shared = {id(x): ray.put(x) for a in args for x in a if isinstance(x, np.ndarray) and x.nbytes > 65_536}
    refs = [task.remote(fn, *[shared.get(id(x), x) for x in a]) for a in args]
    from slim.runtime.console import Progress

    if len(refs) > 1:  # one bucket: nothing to follow
        pending, prog = list(refs), Progress(f"data ({fn.__name__})", len(refs), "buckets")
        while pending:
            _, pending = ray.wait(pending, num_returns=1)
            prog.update(len(refs) - len(pending))
        prog.close()
    return ray.get(refs)


def released(fn, *args):
    """fn(*args), then the memory it freed handed back to the system: Arrow's pool and glibc's heap keep freed
    pages for reuse, so a worker reused across buckets would otherwise hold its largest bucket's peak for good."""
    out = fn(*args)
    pa.default_memory_pool().release_unused()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc (macOS, musl): nothing to trim
        pass
    return out


def spill(source: Source, scratch: str, block_rows: int) -> Spilled:
    """Read the input chunk by chunk into scratch/raw/c<k>.parquet (user, item code, time, source row)."""
    sp = Spilled()
    rate = 1.0  # share of each chunk's rows sampled; halved with the sample when it outgrows its cap
    rng = np.random.default_rng(0)
    for k, (users, items, times) in enumerate(source.chunks(block_rows)):
        d = pa.array(items, pa.string()).dictionary_encode()
        codes = np.fromiter((sp.codes.setdefault(s, len(sp.codes)) for s in d.dictionary.to_pylist()), np.int32)
        n = len(users)
        t = pa.table({"user": pa.array(users, pa.string()), "item": pa.array(codes[d.indices.to_numpy()]),
                      "time": pa.array(np.asarray(times, dtype=np.int64)),
                      "row": pa.array(np.arange(sp.rows, sp.rows + n, dtype=np.int64))})
        sp.chunks.append(f"{scratch}/raw/c{k:06d}.parquet")
        buckets.write(t, sp.chunks[-1])
        take = rng.choice(n, min(n, max(1, int(SAMPLE_PER_CHUNK * rate))), replace=False)
        sp.sample.extend(users[i] for i in take)
        if len(sp.sample) > SAMPLE_CAP:
            sp.sample = [sp.sample[i] for i in sorted(rng.choice(len(sp.sample), SAMPLE_CAP // 2, replace=False))]
            rate /= 2
        sp.rows += n
    return sp


def text_mask(names: list, text: dict, policy: str, problems: Problems) -> np.ndarray:
    """Per item code: has a title, category or brand. Missing ones are an error or skipped and counted."""
    def has(i: str) -> bool:
        t = text.get(i)
        return bool(t and any(t.get(k) for k in ("title", "category", "brand")))

    ok = np.fromiter((has(i) for i in names), dtype=bool, count=len(names))
    missing = sorted(n for n, o in zip(names, ok) if not o)
    if missing:
        msg = f"{len(missing)} item id(s) have no text (e.g. {', '.join(missing[:5])})"
        if policy == "error":
            raise DataError(msg + "; set data.missing_text=skip to drop their interactions")
        problems.counts["item_without_text"] += len(missing)
        problems.examples.setdefault("item_without_text", msg)
    return ok


def make_buckets(sp: Spilled, scratch: str, bucket_rows: int, parallel: bool) -> list:
    """Range buckets of about `bucket_rows` rows each (boundaries: quantiles of the sampled user ids), each one
    file sorted by (user, time, row). Returns their paths in user-id order."""
    n = max(1, math.ceil(sp.rows / bucket_rows))
    sample = sorted(sp.sample)
    bounds = sorted({sample[len(sample) * j // n] for j in range(1, n)}) if sample else []
    written = run_tasks(buckets.partition, [(c, bounds, f"{scratch}/parts", k) for k, c in enumerate(sp.chunks)],
                        parallel)
    pieces = {}
    for k, bs in enumerate(written):
        for b in bs:
            pieces.setdefault(b, []).append(f"{scratch}/parts/b{b:05d}/c{k:06d}.parquet")
    out = [f"{scratch}/sorted/b{b:05d}.parquet" for b in sorted(pieces)]
    run_tasks(buckets.sort_bucket, [(pieces[b], o) for b, o in zip(sorted(pieces), out)], parallel)
    for d in ("raw", "parts"):  # only the sorted buckets are read from here on
        storage.remove_tree(f"{scratch}/{d}")
    return out


def k_core(files: list, alive: np.ndarray, min_user: int, min_item: int, min_history: int, parallel: bool):
    """Passes over all buckets until the alive items no longer change: users cut at `min_user` alive events, then
    items at `min_item` kept events. Returns (alive items, passes, users, users below min_history, first such id)."""
    passes = 0
    while True:
        res = run_tasks(buckets.core_pass, [(f, alive, min_user, min_history) for f in files], parallel)
        passes += 1
        counts = np.sum([r["item_counts"] for r in res], axis=0) if res else np.zeros(len(alive), np.int64)
        new = alive & (counts >= min_item)
        if np.array_equal(new, alive):
            short = sum(r["short"] for r in res)
            at = next(((f, r["first_short_row"]) for f, r in zip(files, res) if r["short"]), None)
            first = buckets.read(at[0], ["user"]).column("user")[at[1]].as_py() if at else None
            return alive, passes, sum(r["users"] for r in res), short, first
        alive = new


def filter_core(cfg, files: list, text_ok: np.ndarray, problems: Problems, parallel: bool) -> tuple:
    """Items with text, the k-core, then users long enough to split, inside one fixed point. -> (alive items,
    user threshold, passes)."""
    mu, mi = cfg.min_user_interactions, cfg.min_item_interactions
    alive, passes, _, short, first = k_core(files, text_ok, mu, mi, cfg.min_history, parallel)
    if short:
        msg = f"{short} user(s) have fewer than {cfg.min_history} interactions (e.g. user {first})"
        problems.report("short_history", msg + "; set data.on_bad_row=skip to drop them")
        # skipped: the stricter user threshold can take items below theirs, so the fixed point runs again
        mu = max(mu, cfg.min_history)
        alive, more, _, _, _ = k_core(files, alive, mu, mi, cfg.min_history, parallel)
        passes += more
    return alive, mu, passes


def pick_users(cfg, files: list, alive: np.ndarray, mu: int, per_bucket: list, parallel: bool) -> list:
    """Per bucket, the ranks of its users in the `max_users` sample (None: all): the surviving users whose raw ids
    hash smallest ("<data.seed>:<raw id>", as the teacher draws), so a new snapshot keeps (almost) the same users;
    each bucket sends at most max_users candidates. Ties (equal hashes) by raw id."""
    k = cfg.max_users
    if not k or sum(per_bucket) <= k:
        return [None] * len(per_bucket)
    got = run_tasks(buckets.smallest_keys, [(f, alive, mu, cfg.seed, k) for f in files], parallel)
    h = np.concatenate([g["hash"] for g in got])
    rank = np.concatenate([g["rank"] for g in got])
    bucket = np.concatenate([np.full(len(g["rank"]), b) for b, g in enumerate(got)])
    win = np.lexsort((rank, bucket, h))[:k]  # buckets are raw-id ranges, ranks raw-id order within one
    return [np.sort(rank[win][bucket[win] == b]) for b in range(len(files))]


def items_table(names: list, text: dict, all_counts: np.ndarray, train_counts: np.ndarray,
                prev: identity.Previous | None = None) -> tuple:
    """items.parquet over the items the kept users touch, ids 1..N in sorted raw-id order, or after a previous
    snapshot's items (slim.data.identity: those keep their ids, absent ones stay, not `present`).
    -> (table, code -> id)."""
    used = sorted(names[c] for c in np.flatnonzero(all_counts))  # code-point order, as np.unique
    order, present = identity.item_order(used, prev or identity.Previous())
    code = {n: c for c, n in enumerate(names)}
    ids = {r: k + 1 for k, r in enumerate(order)}
    item_ids = np.zeros(len(names), dtype=np.int32)
    for r in used:
        item_ids[code[r]] = ids[r]
    kept = identity.old_text(prev) if prev is not None and not present.all() else {}
    meta = [text[r] if p else text.get(r) or kept[r] for r, p in zip(order, present)]
    pop = np.zeros(len(order), dtype=np.int64)
    pop[present] = train_counts[[code[r] for r, p in zip(order, present) if p]]
    table = pa.table({
        C.ITEM_ID: pa.array(np.arange(1, len(order) + 1, dtype=np.int32)),
        C.RAW_ITEM_ID: pa.array(order, pa.string()),
        C.TITLE: [m["title"] for m in meta],
        C.CATEGORY: [m["category"] for m in meta],
        C.BRAND: [m["brand"] for m in meta],
        C.TEXT: [sequences.item_text(m["title"], m["category"], m["brand"]) for m in meta],
        C.POPULARITY: pa.array(pop),
        C.PRESENT: pa.array(present, pa.bool_()),
    })
    return table, item_ids


def carrying(files: list, prev: identity.Previous | None) -> list:
    """Per bucket: (previous user map, lo, hi), its raw-id range of a refresh (slim.data.identity), for the bucket
    tasks that count and write users; None each without a previous map (the fresh ids are the map)."""
    if prev is None or prev.users is None:
        return [None] * len(files)
    return [(prev.users, lo, hi) for lo, hi in identity.ranges(files, "user")]


def build(cfg, source: Source, problems: Problems, scratch: str, parallel: bool, start=None,
          prev: identity.Previous | None = None) -> dict:
    """Every table of the stage but the candidates: users as part files (scratch/users/b<k>.parquet, in raw-id
    order), the user map's slices (`ids`), the items table, and figures for the manifest. start(): called once the
    whole input has been read and checked, before the first task (connecting to Ray there: a bad row is reported
    without a cluster). prev: the run directory's previous snapshot, whose ids are carried (slim.data.identity)."""
    t0 = time.perf_counter()
    sp = spill(source, scratch, cfg.block_rows)
    text = source.text()
    t_read = time.perf_counter()
    names = list(sp.codes)
    del sp.codes
    text_ok = text_mask(names, text, cfg.missing_text, problems)
    if not sp.rows:
        raise DataError("no users left after filtering; check the input and the k-core thresholds")
    if start is not None:
        start()
    files = make_buckets(sp, scratch, cfg.bucket_rows, parallel)
    t_buckets = time.perf_counter()
    alive, mu, passes = filter_core(cfg, files, text_ok, problems, parallel)
    t_core = time.perf_counter()
    carry = carrying(files, prev)
    counted = run_tasks(buckets.item_counts, [(f, alive, mu, None, c) for f, c in zip(files, carry)], parallel)
    picks = pick_users(cfg, files, alive, mu, [r["users"] for r in counted], parallel)
    if any(p is not None for p in picks):
        counted = run_tasks(buckets.item_counts, [(f, alive, mu, p, c) for f, p, c in zip(files, picks, carry)],
                            parallel)
    n_users = [r["users"] for r in counted]
    if not sum(n_users):
        raise DataError("no users left after filtering; check the input and the k-core thresholds")
    all_counts = np.sum([r["all"] for r in counted], axis=0)
    items, item_ids = items_table(names, text, all_counts, np.sum([r["train"] for r in counted], axis=0), prev)
    parts = [f"{scratch}/users/b{b:05d}.parquet" for b in range(len(files))]
    first = np.r_[0, np.cumsum(n_users)].tolist()
    ids, new_users = parts, None  # fresh: the parts are the user map
    if carry[0] is not None:  # a refresh: new users get ids after the largest ever given, in raw-id order
        new = [r["new"] for r in counted]
        first_new = (prev.next_user + np.r_[0, np.cumsum(new)]).tolist()
        ids, new_users = [f"{scratch}/ids/b{b:05d}.parquet" for b in range(len(files))], int(sum(new))
        carry = [(*c, first_new[b], ids[b]) for b, c in enumerate(carry)]
    built = run_tasks(buckets.build_users, [(f, alive, mu, p, item_ids, first[b], o, carry[b])
                                      for b, (f, p, o) in enumerate(zip(files, picks, parts))], parallel)
    return {"parts": parts, "ids": ids, "new_users": new_users, "items": items, "input_rows": sp.rows,
            "users": sum(n_users),
            "interactions": int(all_counts.sum()), "max_len": max(r["max_len"] for r in built),
            "buckets": len(files), "kcore_passes": passes,
            "timings": {"read_s": t_read - t0, "buckets_s": t_buckets - t_read, "kcore_s": t_core - t_buckets,
                        "users_s": time.perf_counter() - t_core}}
