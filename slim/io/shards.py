"""Per-user row shards, shared by the teacher and the student: one writer, one reader, one "latest row wins" rule.

A shard is a Parquet file `<prefix>-<20-digit ns time>-<random>.parquet` written atomically (slim.io.atomic; on object storage one put). Rows may
carry their own write time (column `written_at`, ns); rows without it take the time in their shard's name (or the
file's mtime for names without one). The rule, for every stage: a user's row with the greatest write time wins,
ties broken by shard name and then row position. So a retried row supersedes the older one wherever either
lives, and compaction can write its files in any order.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from slim.io import columns as C
from slim.io import atomic
from slim.io import storage

ORDER = "__order"  # helper column: the write time used by `latest`


class ShardError(ValueError):
    """A shard in the run directory cannot be read; the message names the file (the CLI prints it as one line)."""


def shard_name(prefix: str = "part") -> str:
    return f"{prefix}-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"


def _name_time(p) -> int:
    parts = p.stem.split("-")
    if len(parts) >= 3 and parts[1].isdigit() and len(parts[1]) == 20:
        return int(parts[1])
    return p.stat().st_mtime_ns


def shard_files(*dirs: str | Path) -> list:
    """Every shard in `dirs` (local or object storage), oldest first; temporary and state files (leading "." or
    "_") are not shards."""
    folders = [storage.path(d) for d in dirs]
    files = [p for d in folders if d.exists() for p in d.glob("*.parquet") if not p.name.startswith((".", "_"))]
    return sorted(files, key=lambda p: (_name_time(p), p.name))


def write_shard(folder: str | Path, table: pa.Table, prefix: str = "part"):
    """One new shard; it appears whole or not at all. Returns None for an empty table."""
    if table.num_rows == 0:
        return None
    return atomic.write_parquet(storage.path(folder) / shard_name(prefix), table)


def read_shards(*dirs: str | Path, columns: list[str] | None = None, schema: pa.Schema | None = None) -> pa.Table:
    """Every row of every shard in `dirs`, with its write time in column ORDER; errors name the file."""
    parts = []
    for f in shard_files(*dirs):
        try:
            t = storage.read_table(f, columns=columns, schema=schema)
            has_time = C.WRITTEN_AT in storage.read_schema(f).names
            when = storage.read_table(f, columns=[C.WRITTEN_AT]).column(0) if has_time else None
        except (pa.ArrowInvalid, KeyError, OSError) as e:
            raise ShardError(f"{f}: not a readable shard with columns {columns or schema}: {e}") from e
        order = pc.fill_null(when, _name_time(f)) if when is not None else pa.array(
            np.full(t.num_rows, _name_time(f), np.int64))
        parts.append(t.append_column(ORDER, order.cast(pa.int64())))
    if not parts:
        if schema is None and columns is None:
            return pa.table({ORDER: pa.array([], pa.int64())})
        base = schema or pa.schema([(c, pa.null()) for c in columns])
        return base.empty_table().append_column(ORDER, pa.array([], pa.int64()))
    return pa.concat_tables(parts, promote_options="permissive")


def latest(table: pa.Table) -> pa.Table:
    """One row per user: the one written last (see the module docstring); drops the ORDER column."""
    if table.num_rows == 0:
        return table.drop_columns([ORDER]) if ORDER in table.column_names else table
    t = table.append_column("__idx", pa.array(np.arange(table.num_rows), pa.int64()))
    t = t.take(pc.sort_indices(t, [(C.USER_ID, "ascending"), (ORDER, "ascending"), ("__idx", "ascending")]))
    users = t.column(C.USER_ID).to_numpy()
    last = np.flatnonzero(np.r_[users[1:] != users[:-1], True])
    return t.take(pa.array(last)).drop_columns([ORDER, "__idx"])


def read_latest(*dirs: str | Path, columns: list[str] | None = None, schema: pa.Schema | None = None) -> pa.Table:
    """What a downstream stage reads: exactly one row per user."""
    return latest(read_shards(*dirs, columns=columns, schema=schema))


def user_ids(table: pa.Table) -> np.ndarray:
    return np.asarray(table.column(C.USER_ID).to_numpy(zero_copy_only=False), dtype=np.int64)
