"""Where every paid teacher answer lives, from the moment it arrives until the stage is done.

- log/: each worker actor appends every finished row to its own JSON-lines file (flushed and fsynced), so a kill
  loses only the requests still in flight. A log is folded into a shard when a job starts or ends.
- rationales/: shards (slim.io.shards) holding, after a finished run, exactly one row per selected user.
- archive/: every other paid row: rows superseded by a retry, and rows of users outside the current selection
  (reused, without a new request, if the selection grows back).
Every row has a unique row_id (a row folded twice is one row) and its write time (the latest row of a user wins,
slim.io.shards). Nothing here deletes a row before a shard holding it has been renamed into place.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import threading
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from slim.io import columns as C
from slim.io import atomic
from slim.io import storage
from slim.io import shards

SCHEMA = pa.schema([
    (C.USER_ID, pa.int64()), (C.PROMPT, pa.string()), (C.RATIONALE, pa.string()),
    (C.STEP1, pa.string()), (C.STEP2, pa.string()), (C.STEP3, pa.string()), (C.MODEL, pa.string()),
    (C.TOKENS_IN, pa.int64()), (C.TOKENS_OUT, pa.int64()), (C.COST_USD, pa.float64()),
    (C.STATUS, pa.string()), (C.ERROR, pa.string()), (C.ATTEMPTS, pa.int32()), (C.BILLED, pa.int32()),
    (C.UNPRICED, pa.int32()), (C.WASTED_USD, pa.float64()), (C.ROW_ID, pa.string()), (C.WRITTEN_AT, pa.int64()),
])
STATUSES = ("ok", "malformed", "failed")
MAIN, ARCHIVE, LOG = "rationales", "archive", "log"


def to_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist([{f.name: r.get(f.name) for f in SCHEMA} for r in rows], schema=SCHEMA)


def write_shard(shard_dir: str | Path, rows: list[dict], prefix: str = "part") -> Path | None:
    return shards.write_shard(shard_dir, to_table(rows), prefix)


class RowLog:
    """One actor's append-only log. It holds an exclusive lock on its file while alive, so a fold never deletes
    a log that is still being written (it folds its rows and leaves the file). On object storage it puts one
    object per row instead (complete once visible, so a fold may delete whatever it has read)."""

    def __init__(self, stage_dir: str | Path):
        d = storage.path(stage_dir) / LOG
        d.mkdir(parents=True, exist_ok=True)
        self.path = d / f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl"
        self.remote = storage.is_remote(d)
        self.lock = threading.Lock()
        self.n = 0
        if not self.remote:
            self.f = open(self.path, "a", encoding="utf-8")
            fcntl.flock(self.f, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def append(self, row: dict) -> None:
        line = json.dumps(row) + "\n"
        with self.lock:
            if self.remote:
                self.n += 1
                self.path.with_name(f"{self.path.stem}-{self.n:08d}.json").write_text(line)  # one put per row
                return
            self.f.write(line)
            self.f.flush()
            os.fsync(self.f.fileno())  # on disk before the row counts as done


def _read_log(path) -> list[dict]:
    """Rows of one log; a last line cut by a kill is skipped (its request counts as in flight)."""
    lines = path.read_text(encoding="utf-8").split("\n")
    rows = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            if i < len(lines) - 1:  # only the final line can be partial
                raise ValueError(f"{path}:{i}: not a JSON row: {e}") from e
    return rows


def _live(path) -> bool:
    if storage.is_remote(path):
        return False  # an object holds whole rows only: once read into a shard it may go
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
        return False


def fold_logs(stage_dir: str | Path) -> int:
    """Every log's rows into one new shard of rationales/, then the logs of finished actors are deleted."""
    stage_dir = storage.path(stage_dir)
    d = stage_dir / LOG
    logs = sorted(list(d.glob("*.jsonl")) + list(d.glob("*.json"))) if d.exists() else []
    rows = [r for p in logs for r in _read_log(p)]
    write_shard(stage_dir / MAIN, rows, prefix="log")
    for p in logs:
        if not _live(p):
            p.unlink(missing_ok=True)
    return len(rows)


def recover(stage_dir: str | Path) -> int:
    """After a kill: temporary files go (they were never renamed into place), logs are folded."""
    for sub in (MAIN, ARCHIVE):
        atomic.clean_tmp(storage.path(stage_dir) / sub)
    return fold_logs(stage_dir)


def read_all(stage_dir: str | Path) -> pa.Table:
    """Every paid row once (deduplicated by row_id), with its write time in shards.ORDER."""
    d = storage.path(stage_dir)
    t = shards.read_shards(d / MAIN, d / ARCHIVE, schema=SCHEMA)
    if t.num_rows == 0:
        return t
    ids = t.column(C.ROW_ID).to_pylist()
    order = t.column(shards.ORDER).to_pylist()
    # Rows written before row ids existed get one here (unique within this read; compaction then stores it).
    ids = [rid if rid is not None else f"legacy-{order[i]}-{i}" for i, rid in enumerate(ids)]
    first = {}
    for i, rid in enumerate(ids):
        first.setdefault(rid, i)
    t = t.set_column(t.schema.get_field_index(C.ROW_ID), C.ROW_ID, pa.array(ids, pa.string()))
    return t.take(pa.array(sorted(first.values()), pa.int64()))


def read_latest(stage_dir: str | Path) -> pa.Table:
    """One row per user over every paid row, in rationales/ and archive/ alike."""
    return shards.latest(read_all(stage_dir))


def compact(stage_dir: str | Path, keep_users: set[int]) -> pa.Table:
    """Its rationales/ <- the latest row of each selected user; archive/ <- every other paid row. Returns the former.

    Both new shards are written before any old file is deleted; a kill in between leaves duplicates of the same
    row_ids, which `read_all` folds back into one."""
    d = storage.path(stage_dir)
    folded = fold_logs(d)
    old = shards.shard_files(d / MAIN, d / ARCHIVE)
    everything = read_all(d)
    final = shards.latest(everything)
    selected = pc.is_in(final.column(C.USER_ID), pa.array(sorted(keep_users), pa.int64()))
    final = final.filter(selected).sort_by(C.USER_ID)
    kept_ids = pa.array(final.column(C.ROW_ID).to_pylist(), pa.string())
    rest = everything.filter(pc.invert(pc.is_in(everything.column(C.ROW_ID), kept_ids)))
    rest = rest.sort_by([(shards.ORDER, "ascending")]).drop_columns([shards.ORDER])
    if not folded and _same(d, final, everything):
        return final  # already compact: nothing new, nothing to move
    shards.write_shard(d / ARCHIVE, rest, prefix="archive")
    shards.write_shard(d / MAIN, final, prefix="compact")
    for f in old:
        f.unlink(missing_ok=True)
    return final


def _same(d, final: pa.Table, everything: pa.Table) -> bool:
    """Its rationales/ is one shard holding exactly `final`, archive/ at most one, and no duplicates anywhere."""
    if len(shards.shard_files(d / MAIN)) != 1 or len(shards.shard_files(d / ARCHIVE)) > 1:
        return False
    raw = shards.read_shards(d / MAIN, d / ARCHIVE, columns=[C.USER_ID]).num_rows
    main_ids = shards.read_shards(d / MAIN, schema=SCHEMA).column(C.ROW_ID).to_pylist()
    return raw == everything.num_rows and None not in main_ids and set(main_ids) == set(final.column(C.ROW_ID).to_pylist())


def ledger(everything: pa.Table, final: pa.Table) -> dict:
    """Billed (every paid row, kept or not) vs useful (the answers of ok rows) for cost.json and the manifest."""
    def total(t, col):
        return pc.sum(t.column(col)).as_py() or 0 if t.num_rows else 0

    ok = final.filter(pc.equal(final.column(C.STATUS), "ok")) if final.num_rows else final
    return {
        "billed": {"requests": int(total(everything, C.BILLED)), "unpriced_requests": int(total(everything, C.UNPRICED)),
                   "tokens_in": int(total(everything, C.TOKENS_IN)), "tokens_out": int(total(everything, C.TOKENS_OUT)),
                   "cost_usd": float(total(everything, C.COST_USD)), "rows": everything.num_rows},
        "useful": {"rows": ok.num_rows, "cost_usd": float(total(ok, C.COST_USD) - total(ok, C.WASTED_USD))},
        "wasted_cost_usd": float(total(everything, C.COST_USD)
                                 - (total(ok, C.COST_USD) - total(ok, C.WASTED_USD))),
    }
