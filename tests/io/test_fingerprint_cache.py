"""The content-fingerprint cache under SLIM_SCRATCH stays bounded, the old (name, size, time) form travels with each
fingerprint instead of a module table, and a manifest says how long hashing its outputs took."""

from __future__ import annotations

import os
import pickle
import time

from slim.io import fpcache, rundir
from slim.io.rundir import Fingerprint, Manifest, RunDir, accept_old_forms, file_fingerprint


def _cache_dir(tmp_path):
    return tmp_path / "scratch" / fpcache.FOLDER


def test_cache_drops_entries_unused_for_the_keep_period(tmp_path, monkeypatch):
    monkeypatch.setenv("SLIM_SCRATCH", str(tmp_path / "scratch"))
    used, stale_file, new = (tmp_path / n for n in ("used.bin", "stale.bin", "new.bin"))
    for f in (used, stale_file, new):
        f.write_bytes(f.name.encode() * 100)
    file_fingerprint(used), file_fingerprint(stale_file)
    entries = sorted(_cache_dir(tmp_path).iterdir())
    assert len([e for e in entries if not e.name.startswith(".")]) == 2
    old = time.time() - (fpcache.KEEP_DAYS + 1) * 86400
    for e in _cache_dir(tmp_path).iterdir():
        os.utime(e, (old, old))  # both entries, and the prune stamp, a month and more ago
    assert file_fingerprint(used) == file_fingerprint(used)  # a hit: refreshes its entry's time
    file_fingerprint(new)  # a new entry: prunes (the stamp is old)
    kept = {e.name for e in _cache_dir(tmp_path).iterdir() if not e.name.startswith(".")}
    assert len(kept) == 2  # the used entry and the new one; the stale one is gone
    stale_key = [n for n in (e.name for e in entries) if n not in kept and not n.startswith(".")]
    assert len(stale_key) == 1
    # without an old stamp nothing is listed: an entry aged now stays until the next day's prune
    for e in _cache_dir(tmp_path).iterdir():
        if not e.name.startswith("."):
            os.utime(e, (old, old))
    (tmp_path / "newer.bin").write_bytes(b"x")
    file_fingerprint(tmp_path / "newer.bin")
    assert len([e for e in _cache_dir(tmp_path).iterdir() if not e.name.startswith(".")]) == 3
    assert fpcache.prune(_cache_dir(tmp_path)) == 0  # stamped just now


def test_fingerprint_carries_its_old_form(tmp_path, monkeypatch):
    monkeypatch.setenv("SLIM_SCRATCH", str(tmp_path / "scratch"))
    f = tmp_path / "a.bin"
    f.write_bytes(b"abc")
    fp = file_fingerprint(f)
    d = rundir.digest(f)
    assert fp == d["content"] and fp.legacy == d["old"] and fp.legacy != fp
    assert pickle.loads(pickle.dumps(fp)).legacy == fp.legacy  # travels to a Ray task and back
    # a manifest that recorded the old form is accepted for this fingerprint, not for a plain string of the same
    assert accept_old_forms({"x": fp.legacy}, {"x": fp}) == {"x": fp.legacy}
    assert accept_old_forms({"x": fp.legacy}, {"x": str(fp)}) == {"x": str(fp)}
    assert accept_old_forms({"x": "other"}, {"x": fp}) == {"x": fp}
    assert Fingerprint("abc") == "abc" and Fingerprint("abc").legacy is None


def test_manifest_records_digest_time(tmp_path, monkeypatch):
    monkeypatch.setenv("SLIM_SCRATCH", str(tmp_path / "scratch"))
    rd = RunDir(tmp_path / "run")
    (rd.stage_dir("data") / "out.bin").write_bytes(os.urandom(1 << 20))
    rd.write_manifest(Manifest("data", {}, outputs=["data/out.bin"], timings={"total_s": 1.0}))
    m = rd.read_manifest("data")
    assert m.timings["total_s"] == 1.0 and 0 <= m.timings["digest_s"] < 60
    assert m.digests["data/out.bin"]["content"] == file_fingerprint(rd.root / "data/out.bin")
