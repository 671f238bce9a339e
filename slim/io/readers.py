"""Reading files of a run directory here or in a bucket: Parquet tables, datasets, metadata and schemas (pyarrow),
.npy arrays, binary file objects, and the (paths, filesystem) Ray Data's Parquet reader and writer take."""

from __future__ import annotations

import io
from pathlib import Path

from slim.io.objpath import ObjPath, path


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
