"""Ranking metrics over candidate lists (target + sampled negatives) and over full ranking.

Ties are broken pessimistically: every other candidate scoring >= the target ranks above it, so a constant
scorer gets the worst rank, not a lucky one.
"""

from __future__ import annotations

import math

import numpy as np

KS = (10, 20)


def target_rank(scores: np.ndarray, target_col: int = 0) -> np.ndarray:
    """0-based rank of the target among the candidates. scores: [B, C], target in column `target_col`."""
    s = np.asarray(scores, dtype=np.float64)
    t = s[:, target_col : target_col + 1]  # [B, 1]
    ahead = (s >= t).sum(axis=1) - 1  # the target itself is >= itself
    return ahead.astype(np.int64)


def full_rank(scores: np.ndarray, targets: np.ndarray, exclude: list | None = None) -> np.ndarray:
    """0-based rank of `targets` among all items. scores: [B, N+1] (column 0 = padding, ignored);
    `exclude[b]` lists items not to rank for user b (their history), except the target itself."""
    s = np.array(scores, dtype=np.float64, copy=True)
    s[:, 0] = -np.inf
    rows = np.arange(len(s))
    t = s[rows, targets].copy()
    if exclude is not None:
        for b, items in enumerate(exclude):
            s[b, np.asarray(items, dtype=np.int64)] = -np.inf
    s[rows, targets] = t
    return ((s >= t[:, None]).sum(axis=1) - 1).astype(np.int64)


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


def chance_for(protocol: str, num_items: int, num_negatives: int = 100) -> dict[str, float]:
    """Chance level of a protocol: uni100/pop100 rank 1 + num_negatives candidates; full ranks all items."""
    return chance(num_items if protocol == "full" else num_negatives + 1)
