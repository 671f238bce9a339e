"""The encode stage's vector stores: what was encoded, keyed by the exact text, so a rerun encodes only new texts.

A store is a folder of shards (slim.io.shards) under encode/_store/<key>/<name>/, one per source and field
(items_text, student_rationale, student_step1, ..., history_rationale) with columns (text_hash, embedding), and one
for the catalogue grounding of step 3 (<source>_grounding: text_hash, products, item_ids, sims). <key> hashes every
setting that changes a vector (vector_key: the encoder's content fingerprint, max_seq_length, step3_share, the
torch thread count, the device); the grounding's key adds its threshold and the item vectors' content. The hash is
of the text the encoder is fed (after the whole rationale's head + tail cut), so any change of what is encoded is a
new text, and the same text is encoded once however many users or snapshots hold it.

The driver writes a shard every `shard_rows` new vectors as the actors hand them on (Sink): a kill loses at most
those, and the rerun's actors skip every text already in the store. Every row's (id, hash) goes to a local index;
the outputs downstream stages read (items.npy, users_<field>.parquet, <source>_grounding.parquet) are then built
by a join of index and store (assemble), shard by shard, never by an encode. "_" keeps the stores out of the
encode folder's fingerprint and out of Parquet readers of encode/.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from slim.io import columns as C
from slim.io import shards
from slim.io import storage

VECTOR_SCHEMA = pa.schema([(C.TEXT_HASH, pa.uint64()), (C.EMBEDDING, pa.list_(pa.float16()))])
GROUNDING_SCHEMA = pa.schema([(C.TEXT_HASH, pa.uint64()), ("products", pa.list_(pa.string())),
                              ("item_ids", pa.list_(pa.int64())), ("sims", pa.list_(pa.float32()))])


def text_hashes(texts, empty_zero: bool = True) -> np.ndarray:
    """uint64 hash of each text (blake2b, 8 bytes); 0 marks an empty text (a zero vector, never encoded) unless
    empty_zero is False. A real text hashing to 0 is taken as 1."""
    out = np.zeros(len(texts), np.uint64)
    for i, t in enumerate(texts):
        t = str(t or "")
        if t.strip() or not empty_zero:
            out[i] = int.from_bytes(hashlib.blake2b(t.encode(), digest_size=8).digest(), "little") or 1
    return out


def vector_key(cfg) -> dict:
    """Every setting that changes a vector: the encoder's content, its window, the step-3 share, the thread count
    an actor computes with (slim.runtime.threads.actor_threads, the rule slim.encode.actors gives the actors too)
    and the device."""
    from slim.io.rundir import file_fingerprint
    from slim.runtime.llm_models import resolve_encoder
    from slim.runtime.threads import actor_threads

    path = resolve_encoder(cfg.model)
    model = file_fingerprint(path) if Path(path).expanduser().exists() else cfg.model  # a hub id: its name
    return {"model": model, "max_seq_length": cfg.max_seq_length, "step3_share": cfg.step3_share,
            "threads": actor_threads(cfg.threads, cfg.actor_cpus),
            "device": "cuda" if cfg.num_gpus_per_actor else "cpu"}


def known(folder) -> np.ndarray:
    """Sorted unique hashes already in a store (what the actors skip)."""
    t = shards.read_shards(folder, columns=[C.TEXT_HASH])
    return np.unique(t.column(C.TEXT_HASH).to_numpy()) if t.num_rows else np.zeros(0, np.uint64)


def contains(sorted_hashes: np.ndarray, h: np.ndarray) -> np.ndarray:
    if not len(sorted_hashes):
        return np.zeros(len(h), bool)
    pos = np.minimum(np.searchsorted(sorted_hashes, h), len(sorted_hashes) - 1)
    return sorted_hashes[pos] == h


class Sink:
    """The driver's side of one source: new rows to their stores, a shard every shard_rows rows; every row's id and
    hashes to a local index file (read back by assemble).

    The actors remember no batch (slim.encode.keyed), so a text new to the store that two batches hold, or a batch
    Ray Data ran twice, comes here twice: the Sink keeps the first vector of each text and drops the others, with
    the sorted hashes it wrote this run per store (8 bytes a new text) and those still buffered."""

    def __init__(self, stores: dict, index: Path, index_schema: pa.Schema, shard_rows: int):
        self.stores, self.rows = stores, max(1, shard_rows)
        self.buf = {n: [] for n in stores}
        self.written = {n: np.zeros(0, np.uint64) for n in stores}
        self.index = pq.ParquetWriter(index, index_schema)
        self.index_schema = index_schema

    def add(self, index_cols: dict, new: dict) -> dict:
        """index_cols: one batch's id and hash columns; new: store name -> table of its new rows.
        -> store name -> rows kept (texts new to the store, each counted once)."""
        self.index.write_table(pa.table(index_cols, self.index_schema))
        kept = {}
        for n, t in new.items():
            t = self._unseen(n, t)
            kept[n] = t.num_rows
            if t.num_rows:
                self.buf[n].append(t)
            if sum(x.num_rows for x in self.buf[n]) >= self.rows:
                self._flush(n)
        return kept

    def _unseen(self, n: str, t: pa.Table) -> pa.Table:
        """t's rows whose text is neither written nor buffered by this Sink; of rows sharing a text, the first."""
        h = t.column(C.TEXT_HASH).to_numpy()
        buffered = [x.column(C.TEXT_HASH).to_numpy() for x in self.buf[n]]
        fresh = ~contains(self.written[n], h) & ~np.isin(h, np.concatenate(buffered) if buffered else h[:0])
        rows = np.flatnonzero(fresh)
        rows = np.sort(rows[np.unique(h[rows], return_index=True)[1]])
        return t if len(rows) == len(h) else t.take(pa.array(rows, pa.int64()))

    def _flush(self, n: str) -> None:
        if self.buf[n]:
            t = pa.concat_tables(self.buf[n])
            shards.write_shard(self.stores[n], t)
            self.written[n] = np.union1d(self.written[n], t.column(C.TEXT_HASH).to_numpy())
            self.buf[n] = []

    def close(self, flush: bool = True) -> None:
        try:
            for n in self.stores if flush else ():
                self._flush(n)
        finally:
            self.index.close()


def _ranges(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated ranges lo[j]..hi[j] -> (positions, which j each came from)."""
    n = hi - lo
    which = np.repeat(np.arange(len(lo)), n)
    starts = np.repeat(lo - np.r_[0, np.cumsum(n)[:-1]], n)
    return starts + np.arange(int(n.sum())), which


def assemble(folder, ids: np.ndarray, hashes: np.ndarray, emit, schema: pa.Schema) -> dict:
    """Join (ids, hashes) with a store: emit(ids, table) once per id, in store order; rows whose hash is 0 are left
    to the caller (empty texts). Store shards mostly dead (texts no snapshot holds now, or written twice by a
    killed run) are rewritten with their live rows. -> {"missing": ids without a vector, "dropped": dead rows}."""
    order = np.argsort(hashes, kind="stable")
    sh, done = hashes[order], hashes == 0
    dropped = 0
    for f in shards.shard_files(folder):
        t = storage.read_table(f, schema=schema)
        h = t.column(C.TEXT_HASH).to_numpy()
        pos, which = _ranges(np.searchsorted(sh, h, "left"), np.searchsorted(sh, h, "right"))
        rows = order[pos]
        first = np.unique(rows, return_index=True)[1]  # one vector per id when a shard holds a text twice
        rows, which = rows[first], which[first]
        fresh = ~done[rows]
        rows, which = rows[fresh], which[fresh]
        done[rows] = True
        if len(rows):
            emit(ids[rows], t.take(pa.array(which)))
        live = np.zeros(len(h), bool)
        live[which] = True
        if live.sum() * 2 < len(h):  # mostly dead: keep only what this snapshot uses
            dropped += int(len(h) - live.sum())
            shards.write_shard(folder, t.filter(pa.array(live)))
            f.unlink(missing_ok=True)
    return {"missing": ids[~done], "dropped": dropped}


def prune(root, keep: set) -> None:
    """Stores of other settings (another encoder, window, thread count): nothing this run can use."""
    r = storage.path(root)
    for d in (r.iterdir() if r.exists() else []):
        if d.name not in keep:
            storage.remove_tree(d)
