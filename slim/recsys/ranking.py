"""Ranking, in one place: a model's scores, each target's rank under every protocol, and the top k items with ties
broken by item id. The train stage (validation), the evaluate stage (test, in blocks), explain and serve all rank
through these functions, so a recommendation list means the same thing everywhere."""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from slim.recsys import data as recdata
from slim.recsys.metrics import full_rank, metrics_from_ranks, target_rank
from slim.recsys.usertext import UserText


def top_k(ids: np.ndarray, sc: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best (ids, scores) of one user, best first, ties by item id; partitions first, so a full ranking of
    many items sorts only the k best and the ties at the cut. ids: [C] candidate item ids, sc: [C] their scores.
    A NaN score is no recommendation (a diverged model lists fewer items, not arbitrary ones)."""
    nan = np.isnan(sc)
    if nan.any():
        ids, sc = ids[~nan], sc[~nan]
    if k < len(ids):
        cut = np.partition(sc, len(sc) - k)[len(sc) - k]  # the k-th best score
        pick = np.flatnonzero(sc >= cut)
        ids, sc = ids[pick], sc[pick]
    order = np.lexsort((ids, -sc))[:k]
    return ids[order], sc[order]


def top_items(scores: np.ndarray, exclude: list, k: int, absent: Optional[np.ndarray] = None) -> np.ndarray:
    """[B, N+1] scores -> [B, k] best item ids per user by top_k: never padding, an excluded (history) item, an
    absent item (gone from the newest snapshot) or a NaN score; fewer than k only when fewer items are left (the
    row padded with 0)."""
    s = np.asarray(scores, dtype=np.float64)
    k = min(k, s.shape[1] - 1)
    out = np.zeros((len(s), k), dtype=np.int64)
    base = np.ones(s.shape[1], dtype=bool)
    base[0] = False
    if absent is not None:
        base[np.asarray(absent, dtype=np.int64)] = False
    for b in range(len(s)):
        keep = base.copy()
        keep[np.asarray(exclude[b], dtype=np.int64)] = False
        ids = np.flatnonzero(keep)
        got = top_k(ids, s[b, ids], k)[0]
        out[b, :len(got)] = got
    return out


@torch.no_grad()
def scores(model, seqs: list, max_len: int, cand: Optional[np.ndarray], bs: int = 1024, text=None, use=None):
    """Scores of candidates [U, C] (cand given) or of every item [U, N+1] (cand None). text: [U, Du] rationale
    vectors and use: [U] bool (False: the missing vector), for user-text models."""
    model.eval()
    dev = next(model.parameters()).device  # a Ray Train worker's GPU, else the CPU (where .to/.cpu are no-ops)
    out = []
    for i in range(0, len(seqs), bs):
        x, lens = recdata.pad_right(seqs[i:i + bs], max_len)
        # torch.tensor copies: the object store's arrays are read-only
        t = None if text is None else torch.tensor(text[i:i + bs], device=dev)
        u = None if use is None else torch.tensor(use[i:i + bs], device=dev)
        s = model.encode(torch.from_numpy(x).to(dev), torch.from_numpy(lens).to(dev), t, u)
        out.append((model.score(s, torch.tensor(cand[i:i + bs], device=dev)) if cand is not None
                    else model.score_all(s)).cpu().numpy())
    return np.concatenate(out)


def ranks(model, d: recdata.SeqData, split: str, protocols, max_len: int, ut: Optional[UserText] = None,
          top: int = 0) -> dict:
    """protocol -> 0-based rank of each user's target [U]; with top > 0 also "top": [U, top] item ids of the
    full ranking (history excluded). 'full' ranks every item minus the user's input history, 'full_keep' every
    item (RecBole's default for sequential models); published tables use either. Neither ranks d.absent (items
    an earlier snapshot numbered that the newest lacks), so a refreshed run directory ranks what a fresh one would."""
    inputs, tg, res = d.inputs(split), d.targets(split), {}
    text, use = (None, None) if ut is None else (ut.vec, ut.present)
    sl = (lambda a, i: None if a is None else a[i:i + 1024])
    fulls = [p for p in protocols if p.startswith("full")]
    if fulls or top:
        parts = {p: [] for p in fulls + (["top"] if top else [])}
        for i in range(0, len(inputs), 1024):  # chunks keep [U, N+1] small
            sc = scores(model, inputs[i:i + 1024], max_len, None, text=sl(text, i), use=sl(use, i))
            for p in fulls:
                parts[p].append(full_rank(sc, tg[i:i + 1024], inputs[i:i + 1024] if p == "full" else None,
                                          d.absent))
            if top:
                parts["top"].append(top_items(sc, inputs[i:i + 1024], top, d.absent))
        res.update({p: np.concatenate(v) for p, v in parts.items()})
    for p in protocols:
        if not p.startswith("full"):
            res[p] = target_rank(scores(model, inputs, max_len, d.candidates[(split, p)], text=text, use=use))
    return res


def evaluate(model, d: recdata.SeqData, split: str, protocols, max_len: int, ut: Optional[UserText] = None) -> dict:
    """protocol -> metrics (percent)."""
    r = ranks(model, d, split, protocols, max_len, ut)
    return {p: metrics_from_ranks(r[p]) for p in protocols}
