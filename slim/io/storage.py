"""Run directories on a local disk or on object storage (s3://, gs://, any URI pyarrow or fsspec understands).

`path(x)` gives a `pathlib.Path` for a local path (so local runs behave exactly as before) and an `ObjPath` for a
URI: the part of the `Path` API the stages use (`/`, exists, glob, read_text, stat, unlink, ...) over a pyarrow
filesystem. Libraries that want local files (torch.save, np.load, save_pretrained, vLLM) work on a local scratch
copy that `download` / `upload` move whole (slim.io.atomic publishes writes this way).

Object stores have no rename: an object appears whole when its upload completes (a killed upload leaves nothing),
a folder is published by the stage's manifest written last, and there are no temporary names for readers to skip.

Endpoint and credentials come from the environment only (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, or the
instance's role, read by the AWS SDK itself; AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL for an S3-compatible server;
AWS_REGION or AWS_DEFAULT_REGION), never from a config: no secret is passed to pyarrow, so none is pickled to Ray
workers or written to a manifest.
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import io
import os
import shutil
import tempfile
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlparse


def is_remote(p) -> bool:
    return isinstance(p, ObjPath) or ("://" in str(p) and not str(p).startswith("file://"))


def path(p) -> "Path | ObjPath":
    """A local path as a `Path` (file:// stripped), a URI as an `ObjPath`."""
    if isinstance(p, (Path, ObjPath)):
        return p
    s = str(p)
    if s.startswith("file://"):
        return Path(s[len("file://"):])
    return ObjPath(s) if "://" in s else Path(s)


@functools.lru_cache(maxsize=16)
def _filesystem(scheme: str, netloc: str, endpoint: str, region: str):
    import pyarrow.fs as pafs

    if scheme in ("s3", "s3a"):
        kw = {"region": region} if region else {}
        if endpoint:  # an S3-compatible server (MinIO, moto, Ceph): http(s)://host:port
            u = urlparse(endpoint)
            kw.update(endpoint_override=u.netloc or u.path, scheme=u.scheme or "https")
        return pafs.S3FileSystem(**kw)
    try:
        return pafs.FileSystem.from_uri(f"{scheme}://{netloc}")[0]
    except (ValueError, NotImplementedError):  # a scheme pyarrow lacks: through fsspec
        import fsspec

        return pafs.PyFileSystem(pafs.FSSpecHandler(fsspec.filesystem(scheme)))


def filesystem(uri: str):
    """(pyarrow filesystem, path inside it) for a URI; the filesystem is built from the environment."""
    u = urlparse(str(uri))
    env = os.environ.get
    fs = _filesystem(u.scheme, u.netloc, env("AWS_ENDPOINT_URL_S3") or env("AWS_ENDPOINT_URL") or "",
                     env("AWS_REGION") or env("AWS_DEFAULT_REGION") or "")
    return fs, f"{u.netloc}{u.path}".rstrip("/")


class ObjPath:
    """A file or folder on object storage, addressed by its URI; folders are key prefixes."""

    def __init__(self, uri: str):
        self.uri = str(uri).rstrip("/")
        self.fs, self.key = filesystem(self.uri)

    def __str__(self) -> str:
        return self.uri

    def __repr__(self) -> str:
        return f"ObjPath({self.uri!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, ObjPath) and other.uri == self.uri

    def __hash__(self) -> int:
        return hash(self.uri)

    def __lt__(self, other) -> bool:
        return self.uri < str(other)

    def __truediv__(self, rel) -> "ObjPath":
        return ObjPath(f"{self.uri}/{str(rel).strip('/')}")

    @property
    def name(self) -> str:
        return self.uri.rsplit("/", 1)[-1]

    @property
    def stem(self) -> str:
        return self.name.rsplit(".", 1)[0] if "." in self.name else self.name

    @property
    def suffix(self) -> str:
        return "." + self.name.rsplit(".", 1)[1] if "." in self.name else ""

    @property
    def parent(self) -> "ObjPath":
        return ObjPath(self.uri.rsplit("/", 1)[0])

    def with_name(self, name: str) -> "ObjPath":
        return self.parent / name

    def resolve(self) -> "ObjPath":
        return self

    def expanduser(self) -> "ObjPath":
        return self

    def _info(self):
        return self.fs.get_file_info(self.key)

    def exists(self) -> bool:
        import pyarrow.fs as pafs

        return self._info().type != pafs.FileType.NotFound

    def is_dir(self) -> bool:
        import pyarrow.fs as pafs

        return self._info().type == pafs.FileType.Directory

    def is_file(self) -> bool:
        import pyarrow.fs as pafs

        return self._info().type == pafs.FileType.File

    def stat(self):
        info = self._info()
        if info.size is None:
            raise FileNotFoundError(self.uri)
        return SimpleNamespace(st_size=info.size, st_mtime_ns=info.mtime_ns or 0)

    def _walk(self, recursive: bool) -> list:
        import pyarrow.fs as pafs

        if not self.is_dir():
            return []
        return self.fs.get_file_info(pafs.FileSelector(self.key, recursive=recursive, allow_not_found=True))

    def _rel(self, info) -> str:
        """An entry's path below this folder (fsspec filesystems may return keys with a leading "/")."""
        return info.path.lstrip("/")[len(self.key.lstrip("/")) + 1:]

    def glob(self, pattern: str) -> list:
        """Entries whose path below this folder matches `pattern` segment by segment (as pathlib's glob)."""
        parts = pattern.split("/")
        out = []
        for info in self._walk(recursive=len(parts) > 1):
            rel = self._rel(info).split("/")
            if len(rel) == len(parts) and all(fnmatch.fnmatchcase(r, p) for r, p in zip(rel, parts)):
                out.append(self / "/".join(rel))
        return sorted(out)

    def rglob(self, pattern: str) -> list:
        return sorted(self / self._rel(info) for info in self._walk(recursive=True)
                      if fnmatch.fnmatchcase(info.base_name, pattern))

    def iterdir(self) -> list:
        return sorted(self / info.base_name for info in self._walk(recursive=False))

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        """Nothing to do: a prefix exists once an object is written under it."""

    def read_bytes(self) -> bytes:
        with self.fs.open_input_file(self.key) as f:
            return f.read()

    def read_text(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return self.read_bytes().decode(encoding, errors)

    def write_bytes(self, data: bytes) -> None:
        """One object put: it appears whole or not at all."""
        with self.fs.open_output_stream(self.key) as f:
            f.write(data)

    def write_text(self, text: str, encoding: str = "utf-8") -> None:
        self.write_bytes(text.encode(encoding))

    def unlink(self, missing_ok: bool = False) -> None:
        if not self.exists():
            if missing_ok:
                return
            raise FileNotFoundError(self.uri)
        self.fs.delete_file(self.key)


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


def open_input(p):
    """A readable binary file object (local or remote)."""
    p = path(p)
    return p.fs.open_input_file(p.key) if isinstance(p, ObjPath) else open(p, "rb")


def load_npy(p):
    """np.load for a local or remote .npy."""
    import numpy as np

    p = path(p)
    return np.load(p if isinstance(p, Path) else io.BytesIO(p.read_bytes()))


def _pq_args(p) -> tuple:
    p = path(p)
    return (p.key, p.fs) if isinstance(p, ObjPath) else (str(p), None)


def read_table(p, **kw):
    import pyarrow.parquet as pq

    where, fs = _pq_args(p)
    return pq.read_table(where, filesystem=fs, **kw)


def dataset(p):
    """A pyarrow Parquet dataset over a file or folder here or in a bucket (filters push down to row groups)."""
    import pyarrow.dataset as ds

    where, fs = _pq_args(p)
    return ds.dataset(where, filesystem=fs, format="parquet")


def read_metadata(p):
    import pyarrow.parquet as pq

    where, fs = _pq_args(p)
    return pq.read_metadata(where, filesystem=fs)


def read_schema(p):
    import pyarrow.parquet as pq

    where, fs = _pq_args(p)
    return pq.read_schema(where, filesystem=fs)


def ray_paths(paths) -> tuple:
    """(paths, filesystem) for ray.data.read_parquet / write_parquet: keys plus the filesystem for URIs."""
    many = isinstance(paths, (list, tuple))
    items = [path(p) for p in (paths if many else [paths])]
    if not any(isinstance(p, ObjPath) for p in items):
        return paths, None
    keys = [p.key for p in items]
    return (keys if many else keys[0]), items[0].fs
