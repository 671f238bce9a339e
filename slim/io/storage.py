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

Split by concern; this module is the one import path the rest of slim uses (`storage.X`):
slim.io.objpath (the path class: `path`, `ObjPath`, `is_remote`, `filesystem`), slim.io.transfer (upload,
download, local_copy, scratch, listing, remove_tree, move_tree) and slim.io.readers (read_table, dataset,
read_metadata, read_schema, load_npy, open_input, ray_paths).
"""

from __future__ import annotations

from slim.io.objpath import ObjPath, filesystem, is_remote, path
from slim.io.readers import dataset, load_npy, open_input, ray_paths, read_metadata, read_schema, read_table
from slim.io.transfer import download, key_of, listing, local_copy, move_tree, remove_tree, scratch, upload

__all__ = ["ObjPath", "filesystem", "is_remote", "path", "dataset", "load_npy", "open_input", "ray_paths",
           "read_metadata", "read_schema", "read_table", "download", "key_of", "listing", "local_copy", "move_tree",
           "remove_tree", "scratch", "upload"]
