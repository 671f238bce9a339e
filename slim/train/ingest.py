"""Training examples for Ray Train as a Ray Data dataset: each worker reads its shard, never the whole set.

The driver turns the users into blocks (rows of SeqData: sequences and, for rationale models, their vectors);
Ray Data tasks cut each block's training examples (train.example_arrays, the code the fan-out path runs on all
users at once) into the object store. Every epoch the examples are shuffled again with a seed (Ray Data
`random_shuffle`, reseeded per execution) and split over the workers with `streaming_split(equal=False)`: no
example is dropped or repeated. Ray Train's default DataConfig splits with equal=True, which drops rows to make
the shards equal; here the shards may differ by a few blocks, and every rank keeps taking steps (an empty one
once its shard runs out) until no rank has a batch left, so the collectives stay in step; each rank's loss is
weighted by its share of the step's targets, so that the step is the one a single process would take on them.

Seed stability: the permutation of each epoch is fixed by the seed, but `streaming_split` hands blocks to
whichever worker asks first, so which rank trains on which example (and so the exact weights) varies between runs.

What still travels whole: the item-text table (part of every rank's model) to every worker, and the users'
sequences to rank 0, which evaluates (in Ray tasks over blocks of users when they are many: recsys.blocks; each
task reads its own users' candidates, recsys.candidates). The driver still holds SeqData (recsys.data.load) while
it writes the user blocks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
from ray.train import DataConfig  # this module runs only where Ray Train does

TRAIN = "train"  # the dataset's name in TorchTrainer(datasets=...)


def user_blocks(d, ut, block_users: int) -> list:
    """SeqData rows (+ rationale vectors) as Arrow tables of at most block_users users each."""
    import pyarrow as pa
    from ray.data.extensions import ArrowTensorArray

    lens = np.array([len(s) for s in d.seqs], dtype=np.int64)
    off = np.concatenate([[0], np.cumsum(lens)])
    flat = np.concatenate(d.seqs).astype(np.int64) if d.seqs else np.zeros(0, np.int64)
    out = []
    for a in range(0, len(d.seqs), block_users):
        b = min(a + block_users, len(d.seqs))
        cols = {"row": pa.array(np.arange(a, b, dtype=np.int64)),
                "item_ids": pa.ListArray.from_arrays(pa.array(off[a:b + 1] - off[a], pa.int32()),
                                                     pa.array(flat[off[a]:off[b]]))}
        if ut is not None:
            cols["vec"] = ArrowTensorArray.from_numpy(np.ascontiguousarray(ut.vec[a:b]))
            cols["present"] = pa.array(ut.present[a:b])
        out.append(pa.table(cols))
    return out


def _block_examples(batch: dict, per_position: bool, text_only: bool, max_len: int, cut: int,
                    positions: str) -> dict:
    from slim.train.loop import example_arrays

    seqs = [np.asarray(s, dtype=np.int64) for s in batch["item_ids"]]
    cols = example_arrays(per_position, text_only, seqs, max_len, batch.get("vec"), batch.get("present"), cut,
                          positions)
    cols["user"] = np.asarray(batch["row"])[cols["user"]]  # the row in SeqData, not in the block
    cols["targets"] = (cols["y"] > 0).sum(axis=1) if cols["y"].ndim == 2 else np.ones(len(cols["y"]), np.int64)
    return cols


def example_dataset(kind: tuple[bool, bool], d, max_len: int, ut=None, block_users: int = 0, world: int = 2,
                    positions: str = "after_prefix"):
    """kind: (per_position, text_only), slim.recsys.spec.example_kind. -> (materialized dataset of training
    examples, examples, targets). block_users 0: enough blocks that every worker gets several (at most 20,000 users
    each)."""
    import ray.data

    block_users = block_users or max(1, min(20_000, -(-len(d.seqs) // (4 * world))))
    users = ray.data.from_arrow(user_blocks(d, ut, block_users))
    ds = users.map_batches(_block_examples, batch_size=None, batch_format="numpy", fn_kwargs=dict(
        per_position=kind[0], text_only=kind[1], max_len=max_len,
        cut=ut.cut if ut is not None else 0, positions=positions)).materialize()  # cut once, into the object store
    return ds, ds.count(), int(ds.sum("targets") or 0)


def epoch_shuffled(ds, seed: int):
    """A new seeded permutation every epoch (each epoch is a new execution of the dataset)."""
    from ray.data import RandomSeedConfig

    return ds.random_shuffle(seed=RandomSeedConfig(seed=seed, reseed_after_execution=True))


class NoDropSplit(DataConfig):
    """Ray Train's DataConfig, but split without dropping rows (its default, equal=True, drops them)."""

    def configure(self, datasets, world_size, worker_handles, worker_node_ids, **kwargs):
        out = [{} for _ in range(world_size)]
        for name, ds in datasets.items():
            ds = ds.copy(ds)
            ds.context.execution_options = self._resolve_execution_options(name)
            for i, it in enumerate(ds.streaming_split(world_size, equal=False, locality_hints=worker_node_ids)):
                out[i][name] = it
        return out


def placeholder(per_position: bool, text_dim: int):
    """The batch an idle rank steps on (with a zero loss): one item, one target, no usable rationale."""
    import torch

    y = torch.ones((1, 1) if per_position else (1,), dtype=torch.long)
    text = torch.zeros(1, text_dim) if text_dim else None
    return (torch.ones(1, 1, dtype=torch.long), y, torch.ones(1, dtype=torch.long), text,
            torch.zeros_like(y, dtype=torch.bool) if text_dim else None)


def shard_batches(shard, rows: int, device, idle, trace: Optional[str] = None, rank: int = 0):
    """batches(epoch) for train.train_epochs from this rank's shard: batches of `rows` examples; once the shard runs
    out, placeholder steps (`idle`) until every rank's has. trace: a folder where each rank writes the
    (user, pos) of every example it trained on and its step count, per epoch (tests)."""
    import torch
    import torch.distributed as dist

    from slim.train.loop import Batches

    world = dist.get_world_size()

    def batches(epoch: int):
        it, seen, steps = iter(shard.iter_torch_batches(batch_size=rows, device="cpu")), [], 0
        while True:
            b = next(it, None)
            mine = 0 if b is None else int(b["targets"].sum())
            group = torch.tensor([float(b is not None), float(mine)], device=device)
            dist.all_reduce(group)  # how many ranks still have a batch, and the step's targets over all ranks
            if not group[0].item():
                break
            steps += 1
            if b is None:
                yield idle, 0.0
                continue
            seen.append(torch.stack([b["user"], b["pos"]], 1))
            full = Batches(b["x"], b["y"], b["lens"], b.get("text"), b.get("use"))
            # take trims the padding columns; the weight makes the averaged gradient the step's mean over targets
            yield full.take(torch.arange(len(b["lens"]))), world * mine / group[1].item()
        if trace:
            ids = torch.cat(seen).numpy() if seen else np.zeros((0, 2), np.int64)
            np.savez(Path(trace) / f"rank{rank}-epoch{epoch}.npz", ids=ids, steps=steps)

    return batches
