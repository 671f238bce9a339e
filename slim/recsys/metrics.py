"""Ranking metrics over candidate lists (target + sampled negatives) and over full ranking.

Ties are broken pessimistically: every other candidate scoring >= the target ranks above it, so a constant
scorer gets the worst rank, not a lucky one. NaN is pessimistic too: a NaN target score ranks last and a NaN
candidate ranks above the target, so a diverged model scores 0, never a perfect hit.
"""

from __future__ import annotations

import math

import numpy as np

KS = (10, 20)


def target_rank(scores: np.ndarray, target_col: int = 0) -> np.ndarray:
    """0-based rank of the target among the candidates. scores: [B, C], target in column `target_col`."""
    s = _nan_up(np.array(scores, dtype=np.float64, copy=True))
    t = s[:, target_col : target_col + 1].copy()  # [B, 1]
    t[np.isnan(np.asarray(scores, dtype=np.float64)[:, target_col : target_col + 1])] = -np.inf
    s[:, target_col : target_col + 1] = t
    ahead = (s >= t).sum(axis=1) - 1  # the target itself is >= itself
    return ahead.astype(np.int64)


def _nan_up(s: np.ndarray) -> np.ndarray:
    """NaN scores -> +inf in place: a NaN candidate counts as ranked above the target (pessimistic)."""
    s[np.isnan(s)] = np.inf
    return s


def full_rank(scores: np.ndarray, targets: np.ndarray, exclude: list | None = None,
              absent: np.ndarray | None = None) -> np.ndarray:
    """0-based rank of `targets` among all items. scores: [B, N+1] (column 0 = padding, ignored);
    `exclude[b]` lists items not to rank for user b (their history), except the target itself; `absent` lists
    items not ranked for anyone (gone from the newest snapshot: recsys.data.SeqData.absent)."""
    raw = np.asarray(scores, dtype=np.float64)
    s = _nan_up(raw.copy())
    rows = np.arange(len(s))
    t = np.where(np.isnan(raw[rows, targets]), -np.inf, s[rows, targets])  # [B]; a NaN target ranks last
    ranked = np.ones(s.shape, dtype=bool)  # which items compete with the target
    ranked[:, 0] = False  # padding
    if absent is not None and len(absent):
        ranked[:, np.asarray(absent, dtype=np.int64)] = False
    if exclude is not None:
        for b, items in enumerate(exclude):
            ranked[b, np.asarray(items, dtype=np.int64)] = False
    ranked[rows, targets] = True
    return (((s >= t[:, None]) & ranked).sum(axis=1) - 1).astype(np.int64)


def metrics_from_ranks(ranks: np.ndarray, ks: tuple[int, ...] = KS) -> dict[str, float]:
    """Means over users, in percent: NDCG@k, Hit@k for each k, and MRR."""
    r = np.asarray(ranks, dtype=np.float64)
    out = {}
    for k in ks:
        hit = r < k
        out[f"NDCG@{k}"] = 100.0 * float(np.mean(np.where(hit, 1.0 / np.log2(r + 2.0), 0.0)))
        out[f"Hit@{k}"] = 100.0 * float(np.mean(hit))
    out["MRR"] = 100.0 * float(np.mean(1.0 / (r + 1.0)))
    return out


def chance(num_candidates: int, ks: tuple[int, ...] = KS) -> dict[str, float]:
    """Expected metrics of a random ranking of `num_candidates` with one relevant item (percent)."""
    n = num_candidates
    out = {}
    for k in ks:
        m = min(k, n)
        out[f"NDCG@{k}"] = 100.0 * sum(1.0 / math.log2(r + 2) for r in range(m)) / n
        out[f"Hit@{k}"] = 100.0 * m / n
    out["MRR"] = 100.0 * sum(1.0 / (r + 1) for r in range(n)) / n
    return out


def chance_mean(sizes, ks: tuple[int, ...] = KS) -> dict[str, float]:
    """Mean over users of the chance level of ranking sizes[u] candidates (full ranking: the items user u can be
    recommended, i.e. all items minus their history, target kept)."""
    sizes = np.asarray(sizes, dtype=np.int64)
    vals, counts = np.unique(sizes, return_counts=True)
    per = [chance(int(v), ks) for v in vals]
    return {m: float(np.average([p[m] for p in per], weights=counts)) for m in per[0]}


def full_sizes(num_items: int, inputs: list, targets: np.ndarray, exclude_history: bool = True) -> np.ndarray:
    """Per user, how many items full ranking ranks: all N items, minus the distinct history items other than the
    target when history is excluded."""
    if not exclude_history:
        return np.full(len(inputs), num_items, dtype=np.int64)
    return np.array([num_items - len(set(np.asarray(h).tolist()) - {int(t)}) for h, t in zip(inputs, targets)],
                    dtype=np.int64)


def chance_for(protocol: str, num_items: int, num_negatives: int = 100) -> dict[str, float]:
    """Chance level of a protocol from its candidate count alone: 1 + num_negatives sampled candidates, or all
    items (full ranking with nothing excluded; `chance_mean(full_sizes(...))` is the per-user figure)."""
    return chance(num_items if protocol.startswith("full") else num_negatives + 1)

