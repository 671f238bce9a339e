"""Pure array transforms: the in-memory k-core (the reference the bucketed passes of slim.data.stream agree with),
list columns, candidate sampling, item text."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from slim import columns as C


def k_core(users: np.ndarray, items: np.ndarray, min_user: int, min_item: int,
           keep: np.ndarray | None = None) -> np.ndarray:
    """In memory, over interactions: keep-mask after iteratively dropping users/items with fewer interactions than the thresholds, starting
    from `keep` (what earlier filters left): a fixed point, so every user and item left meets its threshold."""
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


def sample_negatives(
    seed: int, stream: int, uids: np.ndarray, histories: list, num_items: int, n: int, cdf: np.ndarray | None
) -> np.ndarray:
    """[B, n] distinct items in 1..num_items, none in the user's history; uniform, or popularity-weighted
    when `cdf` is given. Row b holds the first n acceptable draws of user b's own stream."""
    out = np.zeros((len(uids), n), np.int32)
    # Short first prefix: most rows need barely more than n draws. Rows that fall short redraw a longer prefix of
    # the same stream, so the result does not depend on k.
    todo, k = np.arange(len(uids)), n + n // 4 + 16
    while len(todo):
        B, stride = len(todo), num_items + 1
        u = uniforms(seed, uids[todo], stream, 0, k)  # [B, k]
        idx = (u * num_items).astype(np.int64) if cdf is None else np.searchsorted(cdf, u, "right")
        draw = np.minimum(idx, num_items - 1) + 1  # [B, k] in 1..num_items
        keys = np.arange(B)[:, None] * stride + draw  # [B, k], unique per (row, item)
        lens = np.fromiter((len(histories[t]) for t in todo), np.int64, B)
        hist = np.repeat(np.arange(B), lens) * stride + np.concatenate([histories[t] for t in todo])
        ok = ~np.isin(keys, hist)
        _, first = np.unique(keys.ravel(), return_index=True)
        is_first = np.zeros(B * k, bool)
        is_first[first] = True
        accept = ok & is_first.reshape(B, k)
        rank = np.cumsum(accept, axis=1)
        done = rank[:, -1] >= n
        sel = accept & (rank <= n)
        out[todo[done]] = draw[done][sel[done]].reshape(-1, n)
        todo, k = todo[~done], 4 * k  # rare: long histories or heavy popularity skew; redraw a longer prefix
    return out


def candidates_batch(batch: dict, seed: int, num_items: int, n: int, cdf: np.ndarray) -> dict:
    """Ray Data map_batches fn: users (user_id, item_ids) -> 4 candidate rows each (valid/test x uni/pop)."""
    uids = np.asarray(batch[C.USER_ID], dtype=np.int64)
    seqs = [np.asarray(s, dtype=np.int64) for s in batch[C.ITEM_IDS]]
    parts = []
    for s, split in enumerate(C.SPLITS):
        target = np.asarray([q[-2] if split == "valid" else q[-1] for q in seqs], dtype=np.int32)
        for p, proto in enumerate(C.PROTOCOLS):
            neg = sample_negatives(seed, 2 * s + p, uids, seqs, num_items, n, None if proto == "uni100" else cdf)
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
