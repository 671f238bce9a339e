"""The teacher job as a user runs it: killed halfway and rerun, with a (fake) API key in the environment."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import yaml

from slim.io import columns as C
from slim.teacher import shards
from slim.testing import fault_server
from slim.testing.rundata import write_data_stage

ROOT = Path(__file__).resolve().parents[2]
KEY_ENV = "SLIM_FAKE_TEACHER_KEY"


def _config(path: Path, run_dir: Path, url: str) -> Path:
    path.write_text(yaml.safe_dump({"run_dir": str(run_dir), "teacher": {
        "base_url": url, "model": "fault-double", "api_key_env": KEY_ENV, "num_users": 48, "max_tokens": 100,
        "requests_per_min": 240, "tokens_per_min": 100000, "num_actors": 2, "threads_per_actor": 4,
        "batch_size": 4, "request_timeout_s": 5, "backoff_base_s": 0.05, "backoff_max_s": 0.5,
        "price_in_per_mtok": 0.15, "price_out_per_mtok": 0.6}}))
    return path


def _logged(run_dir: Path) -> int:
    return sum(p.read_text().count("\n") for p in (run_dir / C.TEACHER_LOG).glob("*.jsonl"))


def _scan(root: Path, needle: bytes) -> list[str]:
    hits = []
    for p in root.rglob("*"):
        try:
            if p.is_file() and not p.is_symlink() and needle in p.read_bytes():
                hits.append(str(p))
        except OSError:
            continue
    return hits


def test_kill_halfway_then_rerun_completes_without_duplicates_and_never_leaks_the_key(tmp_path, ray_local):
    """Both runs join the session's Ray cluster (as `ray job submit` drivers do), so its workers do not see the
    driver's environment: the key must reach them some other way, and must not land in Ray's logs either."""
    key = f"sk-fake-{uuid.uuid4().hex}"
    session_dir = Path(ray_local._private.worker._global_node.get_session_dir_path())
    env = {**os.environ, KEY_ENV: key, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address,
           "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(ROOT)}
    rd = write_data_stage(tmp_path / "run", 80)
    shard_dir = rd.path(C.TEACHER_SHARDS)
    cmd = [sys.executable, "jobs/teacher.py", "--config"]
    with fault_server(tmp_path / "fs.log", {"429": 9, "500": 10}, latency_s=0.2, retry_after=0.3) as srv:
        cfg = _config(tmp_path / "c.yaml", rd.root, srv.url)
        out1 = open(tmp_path / "run1.log", "wb")
        p = subprocess.Popen([*cmd, str(cfg)], cwd=ROOT, env=env, stdout=out1, stderr=subprocess.STDOUT,
                             start_new_session=True)
        try:
            t0 = time.time()
            while _logged(rd.root) < 12 and p.poll() is None and time.time() - t0 < 300:
                time.sleep(0.2)
            assert p.poll() is None, "the job finished before it could be killed"
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        finally:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
        time.sleep(1.0)
        shards.recover(rd.path("teacher"))
        done_at_kill = shards.read_latest(rd.path("teacher"))
        assert 0 < done_at_kill.num_rows < 48 and not rd.path("teacher/manifest.json").exists()
        n_before = len(json.loads(urllib.request.urlopen(srv.url[:-3] + "/stats").read())["requests"])

        r = subprocess.run([*cmd, str(cfg)], cwd=ROOT, env=env, capture_output=True, timeout=500)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        stats = json.loads(urllib.request.urlopen(srv.url[:-3] + "/stats").read())
    final = shards.shards.read_shards(shard_dir, schema=shards.SCHEMA)
    users = final.column(C.USER_ID).to_pylist()
    assert len(users) == len(set(users)) == 48 and set(final.column(C.STATUS).to_pylist()) == {"ok"}
    resent = {int(u) for _, u, _ in stats["requests"][n_before:]}
    assert not resent & set(done_at_kill.column(C.USER_ID).to_pylist())  # finished rows are never paid twice
    assert resent | set(done_at_kill.column(C.USER_ID).to_pylist()) == set(users)
    m = json.loads(rd.path("teacher/manifest.json").read_text())
    assert m["counts"] == {"users": 48, "ok": 48, "malformed": 0, "failed": 0}
    # The key was sent (the server saw its hash) and appears in no output, log or manifest.
    assert hashlib.sha256(key.encode()).hexdigest() in stats["auth_sha256"]
    blob = key.encode()
    assert blob not in r.stdout + r.stderr and blob not in (tmp_path / "run1.log").read_bytes()
    assert _scan(tmp_path, blob) == [] and _scan(session_dir, blob) == []
    assert KEY_ENV in (tmp_path / "c.yaml").read_text()  # the config names the variable, not the value
