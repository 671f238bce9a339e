"""Run directories on object storage (slim.storage): the same writes, reads and answers as on a local disk, against
a real S3-compatible server (moto's standalone server, a subprocess on 127.0.0.1) with credentials from the
environment only."""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from slim import atomic, shards, storage
from slim import columns as C
from slim.rundir import Manifest, RunDir

ROOT = Path(__file__).resolve().parents[1]
SECRET = f"test-secret-{uuid.uuid4().hex}"  # must never appear in anything the stages write


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint():
    """`python -m moto.server` on a free loopback port for this module."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        t0 = time.time()
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None and time.time() - t0 < 60, "moto server did not start"
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def aws_env(endpoint: str) -> dict:
    return {"AWS_ACCESS_KEY_ID": "slim-test-key", "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_ENDPOINT_URL": endpoint,
            "AWS_ENDPOINT_URL_S3": endpoint, "AWS_DEFAULT_REGION": "us-east-1"}


def _boto(endpoint: str):
    import boto3

    e = aws_env(endpoint)
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id=e["AWS_ACCESS_KEY_ID"], aws_secret_access_key=SECRET)


@pytest.fixture
def s3(s3_endpoint, monkeypatch):
    """A fresh bucket; the credentials and endpoint only in this test's environment. -> (s3://bucket/run, client)"""
    for k, v in aws_env(s3_endpoint).items():
        monkeypatch.setenv(k, v)
    bucket = f"slim-{uuid.uuid4().hex[:12]}"
    cli = _boto(s3_endpoint)
    cli.create_bucket(Bucket=bucket)
    return f"s3://{bucket}/run", cli


def objects(cli, uri: str) -> dict:
    """key -> bytes of every object under the bucket of `uri`."""
    bucket = uri.split("/")[2]
    out = {}
    for page in cli.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for o in page.get("Contents", []):
            out[o["Key"]] = cli.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
    return out


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    """The same test on a local folder and on a bucket."""
    if request.param == "local":
        return str(tmp_path / "run")
    return request.getfixturevalue("s3")[0]


def test_paths_local_unchanged_uri_remote(tmp_path):
    assert storage.path(tmp_path) == tmp_path and isinstance(storage.path(str(tmp_path)), Path)
    assert storage.path(f"file://{tmp_path}") == tmp_path
    rd = RunDir("s3://bucket/runs")  # no request is sent until something is read or written
    assert str(rd.path("data/users.parquet")) == "s3://bucket/runs/data/users.parquet"
    assert str(rd.path("data").parent) == "s3://bucket/runs" and rd.path("data/x.parquet").suffix == ".parquet"


def test_atomic_writes_and_reads(root):
    p = storage.path(root) / "d" / "a.json"
    atomic.write_json(p, {"x": 1})
    assert json.loads(p.read_text()) == {"x": 1} and p.is_file() and p.stat().st_size > 0
    t = pa.table({"a": [1, 2, 3]})
    atomic.write_parquet(storage.path(root) / "d" / "t.parquet", t)
    assert storage.read_table(storage.path(root) / "d" / "t.parquet").equals(t)
    with atomic.writing(storage.path(root) / "d" / "v.npy") as tmp, open(tmp, "wb") as f:
        np.save(f, np.arange(5))
    assert storage.load_npy(storage.path(root) / "d" / "v.npy").tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(RuntimeError):  # a writer that fails publishes nothing; the old content stays
        with atomic.writing(p) as tmp:
            tmp.write_text('{"x": 2}')
            raise RuntimeError("killed")
    assert json.loads(p.read_text()) == {"x": 1}
    assert sorted(x.name for x in (storage.path(root) / "d").iterdir()) == ["a.json", "t.parquet", "v.npy"]
    storage.remove_tree(storage.path(root) / "d")
    assert not (storage.path(root) / "d").exists()


def test_folder_upload_download_and_local_copy(root, tmp_path):
    src = tmp_path / "model"
    (src / "sub").mkdir(parents=True)
    (src / "config.json").write_text("{}")
    (src / "sub" / "w.bin").write_bytes(b"\x00" * 1000)
    dst = storage.path(root) / "student" / "adapter"
    with atomic.writing(dst, replace_dir=True) as tmp:
        import shutil

        shutil.copytree(src, tmp)
    assert sorted(str(p)[len(str(dst)) + 1:] for p in dst.rglob("*") if p.is_file()) == ["config.json", "sub/w.bin"]
    copy = storage.local_copy(dst)
    assert isinstance(copy, Path) and (copy / "sub" / "w.bin").read_bytes() == b"\x00" * 1000
    assert storage.local_copy(dst) == copy  # unchanged content: the same copy, not downloaded again


def _shard_answers(root) -> tuple:
    d = storage.path(root) / "shards"
    mk = lambda uids, txt: pa.table({C.USER_ID: pa.array(uids, pa.int64()), "text": [txt] * len(uids)})  # noqa
    shards.write_shard(d, mk([1, 2, 3], "old"))
    time.sleep(0.002)
    shards.write_shard(d, mk([2], "new"))
    assert shards.write_shard(d, mk([], "none")) is None
    atomic.write_parquet(d / ".tmp-part-x.parquet", mk([1], "temp"))  # a temporary name: not a shard
    atomic.write_parquet(d / "_state.parquet", mk([1], "state"))
    t = shards.read_latest(d, columns=[C.USER_ID, "text"]).sort_by(C.USER_ID)
    return len(shards.shard_files(d)), t.to_pydict()


def test_shards_latest_row_same_on_disk_and_bucket(s3, tmp_path):
    local, remote = _shard_answers(tmp_path / "run"), _shard_answers(s3[0])
    assert local == remote == (2, {C.USER_ID: [1, 2, 3], "text": ["old", "new", "old"]})


def _manifest_answers(root) -> list:
    rd = RunDir(root)
    atomic.write_parquet(rd.path(C.USERS_FILE), pa.table({C.USER_ID: [0, 1]}))
    m = Manifest("data", {"k": 1}, {"src": "abc"}, outputs=[C.USERS_FILE], counts={"users": 2})
    rd.write_manifest(m)
    up1 = rd.upstream("data")
    answers = [rd.is_current("data", {"k": 1}, {"src": "abc"}), rd.is_current("data", {"k": 2}, {"src": "abc"}),
               rd.is_current("data", {"k": 1}, {"src": "xyz"}), rd.read_manifest("data").counts]
    time.sleep(1.1)  # an object's time has one-second resolution on S3
    atomic.write_parquet(rd.path(C.USERS_FILE), pa.table({C.USER_ID: [0, 1, 2]}))  # the output rewritten
    answers.append(rd.upstream("data") != up1)
    rd.invalidate("data")
    answers += [rd.read_manifest("data") is None, rd.is_current("data", {"k": 1}, {"src": "abc"})]
    return answers


def test_manifest_is_current_upstream_same_on_disk_and_bucket(s3, tmp_path):
    local, remote = _manifest_answers(tmp_path / "run"), _manifest_answers(s3[0])
    assert local == remote == [True, False, False, {"users": 2}, True, True, False]


def test_killed_writer_leaves_nothing_a_reader_sees(s3):
    """A writer killed (SIGKILL) inside atomic.writing, its file half written, leaves no object behind."""
    uri, cli = s3
    code = textwrap.dedent(f"""
        import sys, time
        from slim import atomic
        with atomic.writing({uri + '/data/users.parquet'!r}) as tmp:
            with open(tmp, "wb") as f:
                f.write(b"x" * 5_000_000)
                f.flush()
                print("writing", flush=True)
                time.sleep(60)
    """)
    p = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert p.stdout.readline().strip() == "writing"
    p.send_signal(signal.SIGKILL)
    p.wait(10)
    assert objects(cli, uri) == {}
    assert not storage.path(uri + "/data/users.parquet").exists()


def test_teacher_row_log_on_a_bucket(s3):
    """Each paid row is its own object the moment it arrives; folding turns them into one shard and removes them."""
    from slim.teacher import shards as TS

    uri, cli = s3
    stage = storage.path(uri) / "teacher"
    log = TS.RowLog(stage)
    for u in (3, 4):
        log.append({C.USER_ID: u, C.STATUS: "ok", C.ROW_ID: f"r{u}", C.WRITTEN_AT: time.time_ns()})
    assert len(list((stage / TS.LOG).glob("*.json"))) == 2
    assert TS.recover(stage) == 2  # what a rerun after a kill does first
    assert list((stage / TS.LOG).glob("*.json")) == []
    assert TS.read_latest(stage).column(C.USER_ID).to_pylist() == [3, 4]
    assert TS.compact(stage, {3}).column(C.USER_ID).to_pylist() == [3]
    assert TS.read_all(stage).num_rows == 2  # user 4's paid row moved to archive/, not lost


def test_data_stage_on_a_bucket_matches_local_disk(ray_local, cache_dir, s3, tmp_path, capfd):
    """The data stage (MovieLens-100K from the recbole wheel) with an s3:// run dir writes what it writes on disk,
    skips when rerun, and no secret lands in any object or in its output."""
    from slim.data.prepare import DataConfig, run

    uri, cli = s3
    kw = dict(source="ml-100k", cache_dir=cache_dir, max_users=60, min_user_interactions=5,
              min_item_interactions=5)
    m_local = run(DataConfig(run_dir=str(tmp_path / "run"), **kw))
    m_s3 = run(DataConfig(run_dir=uri, **kw))
    assert m_s3.counts == m_local.counts and m_s3.key() == m_local.key()
    for f in (C.USERS_FILE, C.ITEMS_FILE):
        assert storage.read_table(f"{uri}/{f}").equals(storage.read_table(tmp_path / "run" / f))
    cand = lambda r: storage.read_table(f"{r}/{C.CANDIDATES_DIR}").sort_by(  # noqa: E731
        [(C.USER_ID, "ascending"), (C.SPLIT, "ascending"), (C.PROTOCOL, "ascending")]).to_pydict()
    assert cand(uri) == cand(tmp_path / "run")
    written = objects(cli, uri)
    assert "run/data/manifest.json" in written and any(k.startswith("run/data/candidates/") for k in written)
    before = {k: v for k, v in written.items()}
    assert run(DataConfig(run_dir=uri, **kw)).created == m_s3.created  # current: skipped, nothing rewritten
    assert objects(cli, uri) == before
    assert not any(SECRET.encode() in b for b in written.values())
    out = capfd.readouterr()
    assert SECRET not in out.out + out.err
