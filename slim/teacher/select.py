"""The labelled subset: a fixed-seed sample of users, stratified by history length and drawn by a hash of each
user's raw id (stable as users are added), and their prompts."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from slim.io import columns as C
from slim.io.keyhash import key_hashes  # also the teacher's name for it: tests pin its values as select.key_hashes
from slim.text import prompts


def stratified_sample(history_len: np.ndarray, n: int, seed: int, strata: int = 5, keys=None) -> np.ndarray:
    """Row positions of `n` users, each history-length quantile bin in proportion, chosen by a hash of (key, seed).

    Bins are quantiles of the length distribution, so short-history users (most of them) and long-history users
    both appear; per-bin quotas are rounded by largest remainder so they sum to exactly `n`. In each bin the users
    with the smallest hashes are taken: a user's draw depends on its own key, not on its row, so a snapshot that
    adds x% of users displaces about x% of the sample (the added users that hash low enough), and paid rows of the
    rest are reused. keys: the raw user ids (the stage passes them); None = the row positions.
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
    h = key_hashes(range(total) if keys is None else keys, seed)
    picked = []
    for b, q in enumerate(quota):
        if q:
            members = np.flatnonzero(bins == b)
            picked.append(members[np.argsort(h[members], kind="stable")[:q]])
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
