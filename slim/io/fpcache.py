"""The local cache of content fingerprints (slim.io.rundir.digest): one small file per (path, names + sizes +
times) under storage.scratch("fingerprints"), so a check hashes a file's bytes once per machine while its names,
sizes and times hold. Bounded: an entry not read or written for KEEP_DAYS is removed (its files changed, moved or
are gone), the folder being listed for that at most once per PRUNE_EVERY_S (a stamp file's time says when)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from slim.io import storage

FOLDER = "fingerprints"  # under storage.scratch
KEEP_DAYS = 30
PRUNE_EVERY_S = 86400.0
_STAMP = ".pruned"


def entry(where: str, stat: str) -> Path:
    """The cache file of a path (`where`: resolved path or URI) whose files have the names, sizes, times `stat`."""
    return storage.scratch(FOLDER) / storage.key_of(f"{where}|{stat}")


def lookup(path: Path) -> str:
    """An entry's content hash, "" when there is none. A hit refreshes the entry's time when it is older than
    PRUNE_EVERY_S (so one in use is kept, with one metadata write a day at most, not one per --check)."""
    try:
        content = path.read_text()
    except OSError:
        return ""
    try:
        if time.time() - path.stat().st_mtime > PRUNE_EVERY_S:
            os.utime(path)
    except OSError:  # a cache shared read-only: still a hit
        pass
    return content


def store(path: Path, content: str) -> None:
    """Best effort (a cache): a file of this process's own, renamed into place; another process may be writing the
    same entry, with the same content. Then prunes, when due."""
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    try:
        tmp.write_text(content)
        os.replace(tmp, path)
        prune(path.parent)
    except OSError:
        tmp.unlink(missing_ok=True)


def prune(folder: Path) -> int:
    """Remove the entries not used for KEEP_DAYS; at most once per PRUNE_EVERY_S per machine, so a check does not
    list the folder each time. Best effort: another process may prune at the same time. -> entries removed."""
    now, stamp = time.time(), folder / _STAMP
    try:
        if now - stamp.stat().st_mtime < PRUNE_EVERY_S:
            return 0
    except OSError:  # never pruned here
        pass
    stamp.touch()
    removed, cutoff = 0, now - KEEP_DAYS * 86400
    for e in os.scandir(folder):
        try:
            if e.name != _STAMP and e.stat().st_mtime < cutoff:  # a killed writer's .tmp- file too
                os.unlink(e.path)
                removed += 1
        except OSError:
            continue
    return removed
