"""The one way every stage writes a file or folder: to a temporary name beside it, then an atomic rename.

A reader (or a rerun after a kill) sees the old content or the new, never half of it. The temporary name is fixed
(".tmp-<name>", skipped by shard globs), so the rerun of a killed writer replaces what it left instead of adding
to it; two processes must not write the same path at once (no stage does).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path


def tmp_path(path: str | Path) -> Path:
    p = Path(path)
    return p.with_name(f".tmp-{p.name}")


@contextlib.contextmanager
def writing(path: str | Path, replace_dir: bool = False):
    """Yields a temporary path to write to; renames it to `path` when the block ends without an exception.

    replace_dir: `path` is a folder; an existing one is removed first (the only non-atomic instant: a kill
    there leaves no folder, which readers treat as "not written yet", never as a partial one)."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path(final)
    _remove(tmp)
    try:
        yield tmp
        if replace_dir:
            _remove(final)
        os.replace(tmp, final)
    finally:
        _remove(tmp)


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> Path:
    with writing(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | Path, obj, **kw) -> Path:
    return write_text(path, json.dumps(obj, **{"indent": 2, "default": str, **kw}))


def write_parquet(path: str | Path, table) -> Path:
    import pyarrow.parquet as pq

    with writing(path) as tmp:
        pq.write_table(table, tmp)
    return Path(path)


def clean_tmp(folder: str | Path) -> int:
    """Temporary files a killed writer left in `folder` (never renamed into place, so nothing is lost)."""
    d = Path(folder)
    n = 0
    for p in list(d.glob(".tmp*")) + list(d.glob(".*.tmp")) if d.exists() else []:
        _remove(p)
        n += 1
    return n


def publish(tmp_to_final: dict) -> None:
    """Rename several finished temporary files into place, for outputs written incrementally (np.memmap, a
    ParquetWriter) that cannot go through `writing`; each rename is atomic."""
    for tmp, final in tmp_to_final.items():
        os.replace(tmp, final)
