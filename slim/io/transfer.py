"""Moving whole files and folders between a local disk and object storage: upload, download, a local scratch copy
of a remote model or vector file (fetched again only when its content changed), removing and renaming trees,
and listing a folder's files the same way here and on a bucket. Libraries that want local files (torch.save,
np.load, save_pretrained, vLLM) work on the scratch copy (slim.io.atomic publishes writes this way)."""

from __future__ import annotations

import fnmatch
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from slim.io.objpath import ObjPath, path


def scratch(*parts: str) -> Path:
    """A local folder for copies of remote files (SLIM_SCRATCH, else the system's temp dir)."""
    d = Path(os.environ.get("SLIM_SCRATCH") or Path(tempfile.gettempdir()) / f"slim-scratch-{os.getuid()}")
    d = d.joinpath(*parts)
    d.mkdir(parents=True, exist_ok=True)
    return d


def key_of(p) -> str:
    return hashlib.sha256(str(p).encode()).hexdigest()[:16]


def upload(local: str | Path, dst) -> None:
    """A local file or folder to `dst` (folders file by file; each file appears whole)."""
    import pyarrow.fs as pafs

    dst = path(dst)
    if isinstance(dst, Path):
        raise ValueError(f"upload to a local path {dst}: use slim.io.atomic")
    pafs.copy_files(str(local), dst.key, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=dst.fs)


def download(src, local: str | Path, skip: tuple = ()) -> Path:
    """A file or folder to the local path `local` (replaced); files whose name matches a pattern in `skip` stay
    behind (a tokenizer needs no weights)."""
    import pyarrow.fs as pafs

    src, local = path(src), Path(local)
    remove_tree(local)
    local.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(src, Path):
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, local)
    elif not src.is_dir():
        pafs.copy_files(src.key, str(local), source_filesystem=src.fs, destination_filesystem=pafs.LocalFileSystem())
    else:
        local.mkdir(parents=True)
        for info in src._walk(recursive=True):
            if info.type == pafs.FileType.File and not any(fnmatch.fnmatchcase(info.base_name, k) for k in skip):
                (local / src._rel(info)).parent.mkdir(parents=True, exist_ok=True)
                pafs.copy_files(info.path, str(local / src._rel(info)), source_filesystem=src.fs,
                                destination_filesystem=pafs.LocalFileSystem())
    return local


def _signature(p) -> str:
    """What identifies a remote file's or folder's content for the scratch copy: its files' names, sizes and times
    (here rather than slim.io.rundir's fingerprints: the storage layer imports nothing above it)."""
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    return key_of(repr([(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files]))


def listing(p) -> list:
    """(path below `p`, size, mtime_ns, file) for every file of a folder, sorted by that path (the same on disk and
    on a bucket); for a file, one row named by its name. One listing call on a bucket, not one per file."""
    import pyarrow.fs as pafs

    p = path(p)
    if isinstance(p, ObjPath) and p.is_dir():
        rows = [(p._rel(i), i.size, i.mtime_ns or 0, p / p._rel(i)) for i in p._walk(recursive=True)
                if i.type == pafs.FileType.File]
    elif p.is_dir():
        rows = []
        for f in p.rglob("*"):
            if f.is_file():
                st = f.stat()
                rows.append((f.relative_to(p).as_posix(), st.st_size, st.st_mtime_ns, f))
    else:
        st = p.stat()
        rows = [(p.name, st.st_size, st.st_mtime_ns, p)]
    return sorted(rows, key=lambda r: r[0])


def local_copy(p, skip: tuple = ()) -> Path:
    """A local path holding what `p` holds: `p` itself when local; for a URI a scratch copy, downloaded again only
    when the remote content changed (its files' names, sizes and times). For models, adapters and vectors that
    libraries load from disk; `skip`: file name patterns not needed (see `download`)."""
    p = path(p)
    if isinstance(p, Path):
        return p
    dst = scratch("copies", key_of(p), _signature(p) + (f"-{key_of(skip)}" if skip else "")) / p.name
    if not dst.exists():
        tmp = download(p, dst.with_name(f".tmp-{p.name}"), skip)
        os.replace(tmp, dst)
    return dst


def remove_tree(p) -> None:
    """Delete a file or folder, local or remote; absent is fine."""
    p = path(p)
    if isinstance(p, ObjPath):
        if p.is_dir():
            p.fs.delete_dir(p.key)
        elif p.exists():
            p.fs.delete_file(p.key)
    elif p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


def move_tree(src, dst) -> None:
    """Rename a folder, local or remote. Local: one atomic rename (dst must not exist). A bucket has no rename: every
    object is copied, then the source deleted, so a move stopped midway is finished by calling it again."""
    import pyarrow.fs as pafs

    src, dst = path(src), path(dst)
    if isinstance(src, Path):
        src.rename(dst)
        return
    for info in src._walk(recursive=True):
        if info.type == pafs.FileType.File:
            src.fs.copy_file(info.path, f"{dst.key}/{src._rel(info)}")
    remove_tree(src)
