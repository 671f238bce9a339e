"""Paths of run directories on a local disk or on object storage: `path(x)` gives a `pathlib.Path` for a local path
(so local runs behave exactly as before) and an `ObjPath` for a URI (s3://, gs://, any URI pyarrow or fsspec
understands): the part of the `Path` API the stages use (`/`, exists, glob, read_text, stat, unlink, ...) over a
pyarrow filesystem. Endpoint and credentials come from the environment only (see slim.io.storage)."""

from __future__ import annotations

import fnmatch
import functools
import os
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
