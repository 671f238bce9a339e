"""Catalogue grounding: each product a rationale names in step 3 is matched to the nearest catalogue item by
text embedding (cosine, same encoder as the item vectors), kept when the similarity reaches a threshold.

A product matched to an item of the user's own history is a miss (recommending what they already have), as is one
below the threshold (a product the catalogue does not hold, or text that names no product).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Match:
    item_ids: np.ndarray  # [P] int64, 0 = no item reached the threshold
    sims: np.ndarray  # [P] float32, cosine to the nearest item


def nearest(product_vecs: np.ndarray, item_vecs: np.ndarray, threshold: float, chunk: int = 8192) -> Match:
    """product_vecs: [P, D] L2-normalised; item_vecs: [N+1, D] L2-normalised, row 0 padding (never matched)."""
    p = np.asarray(product_vecs, dtype=np.float32)
    best = np.full(len(p), -np.inf, dtype=np.float32)
    arg = np.zeros(len(p), dtype=np.int64)
    for lo in range(1, len(item_vecs), chunk):  # chunks keep [P, chunk] small for large catalogues
        s = p @ np.asarray(item_vecs[lo:lo + chunk], dtype=np.float32).T  # [P, c]
        j = s.argmax(1)
        better = s[np.arange(len(p)), j] > best
        best[better], arg[better] = s[np.arange(len(p)), j][better], lo + j[better]
    return Match(np.where(best >= threshold, arg, 0), best)


def rate(matched: list[np.ndarray], history: list) -> dict:
    """Per user the matched item ids of their products and their history -> grounded (a catalogue item not in
    the history), in-history and unmatched counts, and the grounded rate (percent of products)."""
    g = h = u = 0
    for ids, hist in zip(matched, history):
        seen = set(np.asarray(hist).tolist())
        for i in np.asarray(ids).tolist():
            if i == 0:
                u += 1
            elif i in seen:
                h += 1
            else:
                g += 1
    n = g + h + u
    return {"products": n, "grounded": g, "in_history": h, "unmatched": u,
            "grounded_rate": 100.0 * g / n if n else 0.0}


class Grounder:
    """Inside an encoder actor: step-3 texts -> product names -> their nearest catalogue items. The item vectors
    are the encode stage's own (same encoder), loaded once from `item_vecs_path` ([N+1, D] .npy)."""

    def __init__(self, encode, item_vecs_path: str, threshold: float):
        self.encode, self.threshold = encode, threshold
        from slim.io import storage

        self.items = np.load(storage.local_copy(item_vecs_path), mmap_mode="r")  # a bucket's: copied to this node

    def __call__(self, step3: list) -> tuple[list, list, list]:
        """-> per row: product names, matched item ids (0 = none), similarities."""
        from slim.text.quality import products

        names = [products(str(s or "")) for s in step3]
        flat = [p for ps in names for p in ps]
        if not flat:
            return names, [np.zeros(0, np.int64)] * len(names), [np.zeros(0, np.float32)] * len(names)
        m = nearest(self.encode(flat), self.items, self.threshold)
        cuts = np.cumsum([0] + [len(ps) for ps in names])
        return (names, [m.item_ids[a:b] for a, b in zip(cuts[:-1], cuts[1:])],
                [m.sims[a:b] for a, b in zip(cuts[:-1], cuts[1:])])
