"""Manifests with fingerprints in the old form (each file's name, size and modification time) -> content fingerprints.

A run directory made before content fingerprints stays current where it is (slim.io.rundir.accept_old_forms), but
its manifests keep the old form until a stage reruns, so a copy of it (new times) would rerun every stage after
data. `python jobs/migrate.py RUN_DIR` rewrites them first, in place, in pipeline order, like the 0.2 layout move:
- which recorded fingerprints are current (either form) is read before anything is rewritten: an old-form
  fingerprint of an upstream stage includes that stage's key, which the rewrite changes;
- each input that was current is recomputed in the content form after its upstream was rewritten; one that was not
  is kept, so a stage that was stale stays stale;
- what depends on a manifest's key follows it: the student's shard-state key, each finished train run's fingerprint
  (slim.train.fingerprints.refingerprint), the student's model fingerprint in its manifest.
Idempotent: a second run finds nothing to rewrite.
"""

from __future__ import annotations

import json
from pathlib import Path

from slim.io import atomic
from slim.io import columns as C
from slim.io import storage
from slim.io.rundir import Manifest, RunDir, accept_old_forms, file_fingerprint


def _now(rd: RunDir, m: Manifest) -> dict:
    """Each recorded input's fingerprint today, in the content form (left out: cannot be computed here)."""
    out = {}
    for k in m.inputs:
        if k in C.STAGE_DIRS:
            if rd.read_manifest(k) is not None:
                out[k] = rd.upstream(k)
        elif k == "model" and m.extra.get("model", {}).get("kind") not in (None, "base"):
            p = rd.resolve(m.extra["model"]["path"])
            if p.exists():
                out[k] = file_fingerprint(p)
        elif m.stage == C.DATA_DIR:  # the source files, by the path the config gave
            p = storage.path(k) if storage.is_remote(k) else Path(k).expanduser()
            if p.exists():
                out[k] = file_fingerprint(p)
    return out


def _current(rd: RunDir, mans: dict) -> dict:
    """stage -> (inputs checked, those current in either form, those current in the old form only), read before any
    rewrite. Inputs not checked here (the item text's fingerprint) are content fingerprints already."""
    out = {}
    for s, m in mans.items():
        now = _now(rd, m)
        acc = accept_old_forms(m.inputs, now)
        cur = {k for k in now if acc[k] == m.inputs[k]}
        out[s] = (set(now), cur, {k for k in cur if now[k] != m.inputs[k]})
    return out


def upgrade(run_dir, dry_run: bool = False) -> list[str]:
    """-> the stages whose manifests were (dry_run: would be) rewritten with content fingerprints."""
    rd = RunDir(run_dir)
    mans = {s: m for s in C.STAGE_DIRS if (m := rd.read_manifest(s)) is not None}
    current = _current(rd, mans)
    done = []
    for s, m in mans.items():  # pipeline order: an upstream manifest is rewritten before its readers
        checked, cur, old = current[s]
        if not (old or any(k in done for k in cur)):
            continue
        done.append(s)
        if dry_run:
            continue
        old_key, was_current = m.key(), cur == checked
        now = _now(rd, m)
        m.inputs = {**m.inputs, **{k: now[k] for k in cur}}
        if "model" in old:
            m.extra = {**m.extra, "model": {**m.extra["model"], "fingerprint": m.inputs["model"]}}
        _follow_key(rd, m, old_key, was_current)
        rd.write_manifest(m)
    return done


def _follow_key(rd: RunDir, m: Manifest, old_key: str, was_current: bool) -> None:
    """What records a manifest's key or inputs besides the manifest: kept in step when it was in step before."""
    if m.stage == C.STUDENT_DIR:
        from slim.student.stage import STATE_FILE

        state = rd.root / C.STUDENT_SHARDS / STATE_FILE
        rec = json.loads(state.read_text()) if state.exists() else {}
        if rec.get("key") == old_key:
            atomic.write_json(state, {**rec, "key": m.key()})
    if m.stage == C.TRAIN_DIR and was_current:
        from slim.train.fingerprints import refingerprint

        refingerprint(rd.root, m.outputs, m.inputs, m.config)
