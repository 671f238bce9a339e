"""Which item ids may be ranked: one rule for every place that ranks, draws or lists items. Id 0 is padding; an
item absent from the newest snapshot (`present` false in items.parquet: slim.data.identity keeps its id so tables
sized by ids keep their rows) is never recommended, never a candidate and never a training negative."""

from __future__ import annotations

import numpy as np


def rankable(num_items: int, absent=None) -> np.ndarray:
    """[num_items + 1] bool, indexed by item id: True for the ids 1..num_items not in `absent` (recsys.data's
    absent_items; None or empty: every item is present)."""
    keep = np.ones(num_items + 1, dtype=bool)
    keep[0] = False
    if absent is not None and len(absent):
        keep[np.asarray(absent, dtype=np.int64)] = False
    return keep
