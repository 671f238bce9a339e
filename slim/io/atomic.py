"""The one way every stage writes a file or folder: to a temporary name, then published whole.

On a local disk the temporary name sits beside the target and an atomic rename publishes it: a reader (or a rerun
after a kill) sees the old content or the new, never half of it. The temporary name is fixed (".tmp-<name>",
skipped by shard globs), so the rerun of a killed writer replaces what it left instead of adding to it; two
processes must not write the same path at once (no stage does).

On object storage (slim.io.storage) the temporary copy is a local scratch file, uploaded when the block ends: an object
appears whole when its upload completes, and a kill before that leaves nothing. A folder is uploaded file by file;
it counts only once the stage's manifest, written last, names it.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from slim.io import storage


def tmp_path(path) -> Path:
    """Where `writing` puts the content of `path` first: beside it, or for a URI a local scratch path (the same
    one for the same URI, so a rerun replaces it)."""
    p = storage.path(path)
    if isinstance(p, Path):
        return p.with_name(f".tmp-{p.name}")
    return storage.scratch("tmp", storage.key_of(p)) / f".tmp-{p.name}"


@contextlib.contextmanager
def writing(path, replace_dir: bool = False):
    """Yields a temporary local path to write to; publishes it as `path` when the block ends without an exception.

    replace_dir: `path` is a folder; an existing one is removed first (the only non-atomic instant: a kill
    there leaves no folder, which readers treat as "not written yet", never as a partial one)."""
    final = storage.path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path(final)
    storage.remove_tree(tmp)
    try:
        yield tmp
        if replace_dir:
            storage.remove_tree(final)
        _publish_one(tmp, final)
    finally:
        storage.remove_tree(tmp)


def _publish_one(tmp: Path, final) -> None:
    if isinstance(final, Path):
        os.replace(tmp, final)
    else:
        storage.upload(tmp, final)


def write_text(path, text: str):
    p = storage.path(path)
    if isinstance(p, Path):
        with writing(p) as tmp:
            tmp.write_text(text)
    else:
        p.write_bytes(text.encode())  # one put: whole or nothing
    return p


def write_json(path, obj, **kw):
    return write_text(path, json.dumps(obj, **{"indent": 2, "default": str, **kw}))


def write_parquet(path, table):
    import pyarrow.parquet as pq

    with writing(path) as tmp:
        pq.write_table(table, tmp)
    return storage.path(path)


def clean_tmp(folder) -> int:
    """Temporary files a killed writer left in `folder` (never renamed into place, so nothing is lost)."""
    d = storage.path(folder)
    n = 0
    for p in (list(d.glob(".tmp*")) + list(d.glob(".*.tmp"))) if d.exists() else []:
        storage.remove_tree(p)
        n += 1
    return n


def publish(tmp_to_final: dict) -> None:
    """Publish several finished temporary files, for outputs written incrementally (np.memmap, a ParquetWriter)
    that cannot go through `writing`; each file appears whole."""
    for tmp, final in tmp_to_final.items():
        _publish_one(Path(tmp), storage.path(final))
        storage.remove_tree(tmp)
