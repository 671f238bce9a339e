"""The labelled subset: a fixed-seed sample of users, stratified by history length, and their prompts."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from slim.io import columns as C
from slim.text import prompts


def stratified_sample(history_len: np.ndarray, n: int, seed: int, strata: int = 5) -> np.ndarray:
    """Row positions of `n` users drawn without replacement, each history-length quantile bin in proportion.

    Bins are quantiles of the length distribution, so short-history users (most of them) and long-history users
    both appear; per-bin quotas are rounded by largest remainder so they sum to exactly `n`.
    """
    total = len(history_len)
    if n <= 0 or n >= total:
        return np.arange(total)
    edges = np.unique(np.quantile(history_len, np.linspace(0, 1, strata + 1)[1:-1]))
    bins = np.searchsorted(edges, history_len, side="right")
    sizes = np.bincount(bins, minlength=len(edges) + 1)
    exact = sizes / total * n
    quota = np.floor(exact).astype(int)
    for b in np.argsort(-(exact - quota))[: n - quota.sum()]:
        quota[b] += 1
    rng = np.random.default_rng(seed)
    picked = [rng.choice(np.flatnonzero(bins == b), q, replace=False) for b, q in enumerate(quota) if q]
    return np.sort(np.concatenate(picked))


def build_prompts(users: pa.Table, items: pa.Table, pos: np.ndarray, pc: prompts.PromptConfig) -> list[dict]:
    """[{user_id, prompt (the user turn), messages}] for the chosen users; prompts see the training prefix only."""
    text = dict(zip(items.column(C.ITEM_ID).to_pylist(), items.column(C.TEXT).to_pylist()))
    sub = users.take(pa.array(pos, pa.int64()))
    out = []
    for uid, hist in zip(sub.column(C.USER_ID).to_pylist(), sub.column(C.ITEM_IDS).to_pylist()):
        messages = prompts.teacher_messages(hist, text, pc)
        out.append({C.USER_ID: int(uid), C.PROMPT: prompts.teacher_prompt_key(messages), "messages": messages})
    return out
