"""Rationale rows in Parquet shards: one file per finished batch, written atomically, compacted at the end.

Shard names start with a zero-padded nanosecond time, so sorting names sorts writes; when a user appears in
several shards (a retried failed row, a task Ray re-ran), the row in the latest shard wins. Compaction rewrites
the winners into one file before deleting the rest, so a kill at any point leaves a readable, resumable state.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from slim import columns as C

SCHEMA = pa.schema([
    (C.USER_ID, pa.int64()), (C.PROMPT, pa.string()), (C.RATIONALE, pa.string()),
    (C.STEP1, pa.string()), (C.STEP2, pa.string()), (C.STEP3, pa.string()), (C.MODEL, pa.string()),
    (C.TOKENS_IN, pa.int64()), (C.TOKENS_OUT, pa.int64()), (C.COST_USD, pa.float64()),
    (C.STATUS, pa.string()), (C.ERROR, pa.string()), (C.ATTEMPTS, pa.int32()),
])
STATUSES = ("ok", "malformed", "failed")
_ORDER = "__shard_order"


def _name(prefix: str = "part") -> str:
    return f"{prefix}-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"


def write_shard(shard_dir: str | Path, rows: list[dict], prefix: str = "part") -> Path | None:
    """Write rows as one new shard; the file appears whole or not at all."""
    if not rows:
        return None
    d = Path(shard_dir)
    d.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist([{f.name: r.get(f.name) for f in SCHEMA} for r in rows], schema=SCHEMA)
    path = d / _name(prefix)
    tmp = d / f".tmp-{path.name}"
    pq.write_table(table, tmp)
    os.replace(tmp, path)
    return path


def shard_files(shard_dir: str | Path) -> list[Path]:
    d = Path(shard_dir)
    return sorted(d.glob("*.parquet"), key=lambda p: p.name.split("-", 1)[1]) if d.exists() else []


def read_all(shard_dir: str | Path) -> pa.Table:
    """Every row of every shard, with the shard's order in a helper column."""
    parts = []
    for i, f in enumerate(shard_files(shard_dir)):
        t = pq.read_table(f, schema=SCHEMA)
        parts.append(t.append_column(_ORDER, pa.array([i] * t.num_rows, pa.int32())))
    if not parts:
        return SCHEMA.empty_table().append_column(_ORDER, pa.array([], pa.int32()))
    return pa.concat_tables(parts)


def latest(table: pa.Table) -> pa.Table:
    """One row per user: the one from the latest shard (the last row when a shard repeats a user)."""
    if table.num_rows == 0:
        return table.drop_columns([_ORDER]) if _ORDER in table.column_names else table
    idx = pa.array(range(table.num_rows), pa.int64())
    t = table.append_column("__idx", idx)
    order = pc.sort_indices(t, [(C.USER_ID, "ascending"), (_ORDER, "ascending"), ("__idx", "ascending")])
    t = t.take(order)
    users = t.column(C.USER_ID).to_numpy()
    last = [i for i in range(len(users)) if i == len(users) - 1 or users[i] != users[i + 1]]
    return t.take(pa.array(last, pa.int64())).drop_columns([_ORDER, "__idx"])


def read_latest(shard_dir: str | Path) -> pa.Table:
    """What downstream stages read: exactly one row per user."""
    return latest(read_all(shard_dir))


def clean_tmp(shard_dir: str | Path) -> int:
    """Partial files of a killed writer; they were never renamed into place, so nothing is lost."""
    d = Path(shard_dir)
    n = 0
    for f in d.glob(".tmp-*") if d.exists() else []:
        f.unlink(missing_ok=True)
        n += 1
    return n


def compact(shard_dir: str | Path, keep_users: set[int]) -> tuple[pa.Table, int, float]:
    """Rewrite the latest row of each kept user into one shard, then delete the old shards.

    Returns (final rows, superseded row count, their cost). A kill between the write and the deletes leaves
    duplicates that `read_latest` resolves the same way (the compacted shard is the newest).
    """
    old = shard_files(shard_dir)
    everything = read_all(shard_dir)
    final = latest(everything)
    keep = pc.is_in(final.column(C.USER_ID), pa.array(sorted(keep_users), pa.int64()))
    final = final.filter(keep).sort_by(C.USER_ID)
    n_super = everything.num_rows - final.num_rows
    cost_all = pc.sum(everything.column(C.COST_USD)).as_py() or 0.0
    cost_final = pc.sum(final.column(C.COST_USD)).as_py() or 0.0
    if not (len(old) == 1 and n_super == 0):
        write_shard(shard_dir, final.to_pylist(), prefix="compact")
        for f in old:
            f.unlink(missing_ok=True)
    return final, n_super, cost_all - cost_final
