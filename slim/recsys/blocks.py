"""Ranking millions of users in blocks on the Ray cluster.

The users are cut into blocks of `block_users`; each block goes to the object store once (and is reused for every
model ranked in the same stage), the model once per model, and one Ray task per block runs `ranking.ranks` (the
in-driver code) on its users. The driver gets back ranks only ([U] per protocol, [U, top] item ids), never a
score matrix: sampled protocols score [users, 101] and full ranking [users, items] inside the tasks. A run with
a single block ranks in the calling process, with the same code.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from slim.recsys import data as recdata
from slim.recsys.usertext import UserText


def cut(d: recdata.SeqData, ut: Optional[UserText], a: int, b: int) -> tuple:
    """Users a..b-1 of d (and their rationale vectors) as a SeqData/UserText of their own."""
    sub = recdata.SeqData(d.user_ids[a:b], d.seqs[a:b], d.num_items, d.candidates.subset(a, b), d.absent)
    return sub, None if ut is None else UserText(ut.vec[a:b], ut.present[a:b], ut.cut, ut.field, ut.source)


def _rank_block(model, block, split: str, protocols, max_len: int, top: int) -> dict:
    from slim.recsys.ranking import ranks
    from slim.runtime.threads import torch_threads

    torch_threads()  # the core the task reserved (cores_request(1)), not one thread per core of the node
    d, ut = block
    return ranks(model, d, split, protocols, max_len, ut, top)


class BlockRanker:
    """ranks(model, ...) over d's users in blocks; the blocks are put in the object store on first use."""

    def __init__(self, d: recdata.SeqData, block_users: int = 50_000):
        self.d, self.block_users, self._refs = d, max(1, block_users), {}
        self.bounds = [(a, min(a + self.block_users, len(d.seqs))) for a in range(0, len(d.seqs), self.block_users)]

    def _blocks(self, ut: Optional[UserText]) -> list:
        import ray

        key = None if ut is None else id(ut)
        if key not in self._refs:
            self._refs[key] = (ut, [ray.put(cut(self.d, ut, a, b)) for a, b in self.bounds])  # ut kept: id stays
        return self._refs[key][1]

    def ranks(self, model, split: str, protocols, max_len: int, ut: Optional[UserText] = None, top: int = 0) -> dict:
        """ranking.ranks(model, d, ...), computed block by block on the cluster."""
        from slim.recsys.ranking import ranks

        if len(self.bounds) <= 1:
            return ranks(model, self.d, split, protocols, max_len, ut, top)
        import ray

        from slim.runtime.raycluster import cores_request

        task = ray.remote(num_cpus=1, resources=cores_request(1), max_retries=1)(_rank_block)
        m = ray.put(model)  # once, shared by every block's task
        parts = ray.get([task.remote(m, blk, split, tuple(protocols), max_len, top) for blk in self._blocks(ut)])
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def evaluate(self, model, split: str, protocols, max_len: int, ut: Optional[UserText] = None) -> dict:
        """train.evaluate: protocol -> metrics (percent)."""
        from slim.recsys import metrics

        r = self.ranks(model, split, protocols, max_len, ut)
        return {p: metrics.metrics_from_ranks(r[p]) for p in protocols}
