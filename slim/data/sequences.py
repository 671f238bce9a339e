"""Pure array transforms: the in-memory k-core (the reference the bucketed passes of slim.data.stream agree with),
list columns, candidate sampling, item text."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from slim.io import columns as C


def k_core(users: np.ndarray, items: np.ndarray, min_user: int, min_item: int,
           keep: np.ndarray | None = None) -> np.ndarray:
    """In memory, over interactions: keep-mask after iteratively dropping users/items with fewer interactions than
    the thresholds, starting from `keep` (what earlier filters left): a fixed point, so every user and item left
    meets its threshold."""
    keep = np.ones(len(users), dtype=bool) if keep is None else keep.copy()
    while min_user > 1 or min_item > 1:
        u_cnt = np.bincount(users[keep], minlength=users.max() + 1 if len(users) else 0)
        i_cnt = np.bincount(items[keep], minlength=items.max() + 1 if len(items) else 0)
        new = keep & (u_cnt[users] >= min_user) & (i_cnt[items] >= min_item)
        if new.sum() == keep.sum():
            break
        keep = new
    return keep


def list_array(values: np.ndarray, offsets: np.ndarray, dtype) -> pa.ListArray:
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values.astype(dtype)))


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """Counter-based hash (uint64 -> uint64). Random numbers keyed by (seed, user, stream, j) come out the
    same whatever the batching, the number of workers or the machine."""
    with np.errstate(over="ignore"):
        z = x.astype(np.uint64) + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def uniforms(seed: int, uids: np.ndarray, stream: int, start: int, k: int) -> np.ndarray:
    """[B, k] floats in [0, 1) for draws start..start+k-1 of each user's stream."""
    h = splitmix64(splitmix64(np.full(len(uids), seed, np.uint64)) ^ uids.astype(np.uint64))
    h = splitmix64(h ^ np.uint64(stream))
    with np.errstate(over="ignore"):
        z = splitmix64(h[:, None] + np.arange(start, start + k, dtype=np.uint64)[None, :])
    return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53


SORTED_LOOKUP_MIN = 1 << 15  # cdf entries beyond which sorted lookups pay (the cdf no longer sits in cache)


def draw_items(u: np.ndarray, num_items: int, cdf: np.ndarray | None) -> np.ndarray:
    """Uniforms [B, k] -> items [B, k] in 1..num_items: uniform, or by inverse cdf. A large cdf is searched with the
    uniforms in sorted order (the lookups then walk it in order instead of missing the cache every time)."""
    if cdf is None:
        idx = (u * num_items).astype(np.int64)
    elif len(cdf) < SORTED_LOOKUP_MIN:
        idx = np.searchsorted(cdf, u, "right")
    else:
        flat = u.ravel()
        order = np.argsort(flat)
        idx = np.empty(flat.size, np.int64)
        idx[order] = np.searchsorted(cdf, flat[order], "right")
        idx = idx.reshape(u.shape)
    return np.minimum(idx, num_items - 1) + 1


def fresh_draws(draw: np.ndarray, hist_rows: np.ndarray, hist_items: np.ndarray, num_items: int) -> np.ndarray:
    """[B, k] bool: the draw is in neither its row's history nor earlier in its row. One sort of tagged keys:
    (row * (num_items + 1) + item) << bits | tag, tag 0 for history and 1 + column for draws, so among equal
    (row, item) the history comes first and then draws in stream order; a draw is fresh iff the entry sorted
    before it holds another (row, item). Rows go in slices small enough for the keys to fit in int64."""
    B, k = draw.shape
    stride, bits = num_items + 1, int(k).bit_length()
    rows_per = max(1, ((1 << 62) >> bits) // stride)
    fresh = np.ones((B, k), bool)
    tag = np.arange(1, k + 1, dtype=np.int64)
    for a in range(0, B, rows_per):
        b = min(B, a + rows_per)
        h = (hist_rows >= a) & (hist_rows < b)
        hist = ((hist_rows[h] - a) * stride + hist_items[h]) << bits  # [H], tag 0
        keys = ((np.arange(b - a)[:, None] * stride + draw[a:b]) << bits) | tag  # [b - a, k]
        s = np.sort(np.concatenate([hist, keys.ravel()]))
        key, pos = s >> bits, s & ((1 << bits) - 1)
        stale = np.flatnonzero(key[1:] == key[:-1]) + 1  # sorted positions that repeat the entry before
        stale = stale[pos[stale] > 0]  # draws only
        fresh[a + key[stale] // stride, pos[stale] - 1] = False
    return fresh


def sample_negatives(
    seed: int, stream: int, uids: np.ndarray, histories: list, num_items: int, n: int, cdf: np.ndarray | None
) -> np.ndarray:
    """[B, n] distinct items in 1..num_items, none in the user's history; uniform, or popularity-weighted
    when `cdf` is given. Row b holds the first n acceptable draws of user b's own stream."""
    out = np.zeros((len(uids), n), np.int32)
    lens = np.fromiter((len(h) for h in histories), np.int64, len(histories))
    # Short first prefix: most rows need barely more than n draws. Rows that fall short redraw a longer prefix of
    # the same stream, so the result does not depend on k.
    todo, k = np.arange(len(uids)), n + n // 4 + 16
    while len(todo):
        draw = draw_items(uniforms(seed, uids[todo], stream, 0, k), num_items, cdf)  # [B, k] in 1..num_items
        hist_rows = np.repeat(np.arange(len(todo)), lens[todo])
        hist_items = np.concatenate([np.asarray(histories[t], np.int64) for t in todo])
        accept = fresh_draws(draw, hist_rows, hist_items, num_items)
        rank = np.cumsum(accept, axis=1)
        done = rank[:, -1] >= n
        sel = accept & (rank <= n)
        out[todo[done]] = draw[done][sel[done]].reshape(-1, n)
        todo, k = todo[~done], 4 * k  # rare: long histories or heavy popularity skew; redraw a longer prefix
    return out


def weights_cdf(weights: np.ndarray) -> np.ndarray:
    """The cumulative distribution that draw_items samples items 1..N from (item k + 1 with weight[k]). An item
    of weight 0 is never drawn: the top is pinned to 1 from the last weighted item on, so no rounding leaves a
    draw above it. All weights positive: the plain cumulative sum, as it always was."""
    out = np.cumsum(weights / weights.sum())
    if not (weights > 0).all():
        out[np.flatnonzero(weights > 0)[-1]:] = 1.0
    return out


def candidates_batch(batch: dict, seed: int, num_items: int, n: int, cdf: np.ndarray,
                     uni_cdf: np.ndarray | None = None) -> dict:
    """Ray Data map_batches fn: users (user_id, item_ids) -> 4 candidate rows each (valid/test x uni/pop).
    uni_cdf: uniform over some items only (an earlier snapshot's absent items left out); None = over all."""
    uids = np.asarray(batch[C.USER_ID], dtype=np.int64)
    seqs = [np.asarray(s, dtype=np.int64) for s in batch[C.ITEM_IDS]]
    parts = []
    for s, split in enumerate(C.SPLITS):
        target = np.asarray([q[-2] if split == "valid" else q[-1] for q in seqs], dtype=np.int32)
        for p, proto in enumerate(C.PROTOCOLS):
            neg = sample_negatives(seed, 2 * s + p, uids, seqs, num_items, n, uni_cdf if proto == "uni100" else cdf)
            parts.append((split, proto, target, neg))
    return {
        C.USER_ID: np.concatenate([uids] * len(parts)),
        C.SPLIT: np.concatenate([np.full(len(uids), sp) for sp, _, _, _ in parts]),
        C.PROTOCOL: np.concatenate([np.full(len(uids), pr) for _, pr, _, _ in parts]),
        C.TARGET: np.concatenate([t for _, _, t, _ in parts]),
        C.NEGATIVES: np.concatenate([ng for _, _, _, ng in parts]),
    }


def item_text(title: str, category: str, brand: str) -> str:
    """The text an encoder and a prompt see for one item."""
    parts = [title.strip()]
    if category:
        parts.append(f"Category: {category}")
    if brand:
        parts.append(f"Brand: {brand}")
    return ". ".join(p for p in parts if p)
