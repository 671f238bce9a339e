"""Run directories on object storage (slim.io.storage): the same writes, reads and answers as on a local disk, against
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

from slim.io import atomic
from slim.io import shards
from slim.io import storage
from slim.io import columns as C
from slim.io.rundir import Manifest, RunDir
from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
SECRET = f"test-secret-{uuid.uuid4().hex}"  # must never appear in anything the stages write


@pytest.fixture(scope="module")
def s3_endpoint():
    """`python -m moto.server` on a free loopback port for this module."""
    port = free_port()
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
def s3(s3_endpoint, monkeypatch, tmp_path):
    """A fresh bucket; the credentials and endpoint only in this test's environment. -> (s3://bucket/run, client)"""
    for k, v in aws_env(s3_endpoint).items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("SLIM_SCRATCH", str(tmp_path / "scratch"))  # local copies and temporary files of this test
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
    dst = storage.path(root) / C.STUDENT_ADAPTER
    with atomic.writing(dst, replace_dir=True) as tmp:
        import shutil

        shutil.copytree(src, tmp)
    assert sorted(str(p)[len(str(dst)) + 1:] for p in dst.rglob("*") if p.is_file()) == ["config.json", "sub/w.bin"]
    copy = storage.local_copy(dst)
    assert isinstance(copy, Path) and (copy / "sub" / "w.bin").read_bytes() == b"\x00" * 1000
    assert storage.local_copy(dst) == copy  # unchanged content: the same copy, not downloaded again
    if storage.is_remote(dst):
        light = storage.local_copy(dst, skip=("*.bin",))  # e.g. a tokenizer without the weights
        assert light != copy and sorted(p.name for p in light.rglob("*") if p.is_file()) == ["config.json"]


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


def test_any_fsspec_filesystem(tmp_path):
    """A scheme pyarrow lacks goes through fsspec (here its in-memory filesystem): the same answers again."""
    uri = f"memory://slim-{uuid.uuid4().hex[:8]}/run"
    assert _shard_answers(uri) == _shard_answers(tmp_path / "run")
    assert _manifest_answers(uri) == [True, False, False, {"users": 2}, True, True, False]


def test_no_secret_travels_with_the_filesystem(s3):
    """Ray pickles the filesystem into every read/write task: it carries the endpoint, never the key."""
    import pickle

    fs, _ = storage.filesystem(s3[0])
    assert SECRET.encode() not in pickle.dumps(fs)


def test_killed_writer_leaves_nothing_a_reader_sees(s3):
    """A writer killed (SIGKILL) inside atomic.writing, its file half written, leaves no object behind."""
    uri, cli = s3
    code = textwrap.dedent(f"""
        import sys, time
        from slim.io import atomic
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


def test_data_stage_on_a_bucket_matches_local_disk(ray_local, cache_dir, s3, tmp_path):
    """The data stage (MovieLens-100K from the recbole wheel) run as a user runs it, `jobs/data.py` with
    run_dir=s3://... (its own Ray cluster, whose workers write the candidates to the bucket with the credentials of
    its environment), writes what it writes on disk, skips when rerun, and no secret lands in any object or in its
    output."""
    from slim.runtime import config
    from slim.runner import stages
    from slim.data.stage import run

    uri, cli = s3
    over = [f"data.cache_dir={cache_dir}", "data.max_users=60"]
    m_local = run(stages.load_all(config.load_raw(str(ROOT / "configs" / "tiny.yaml"),
                                                  over + [f"run_dir={tmp_path / 'run'}"]))["data"])
    job = [sys.executable, "jobs/data.py", "--config", "configs/tiny.yaml", *over, f"run_dir={uri}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    r = subprocess.run(job, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    m_s3 = RunDir(uri).read_manifest("data")
    assert m_s3.counts == m_local.counts and m_s3.key() == m_local.key()
    for f in (C.USERS_FILE, C.ITEMS_FILE):
        assert storage.read_table(f"{uri}/{f}").equals(storage.read_table(tmp_path / "run" / f))
    cand = lambda r: storage.read_table(f"{r}/{C.CANDIDATES_DIR}").sort_by(  # noqa: E731
        [(C.USER_ID, "ascending"), (C.SPLIT, "ascending"), (C.PROTOCOL, "ascending")])
    assert cand(uri).num_rows == m_local.counts["candidate_rows"] and cand(uri).equals(cand(tmp_path / "run"))
    from slim.recsys import data as D  # the recommender stages read a block of users' candidates from the bucket

    k = ("test", "pop100")
    assert np.array_equal(D.load(uri).candidates.subset(10, 30)[k], D.load(tmp_path / "run").candidates[k][10:30])
    written = objects(cli, uri)
    assert "run/data/manifest.json" in written and any(k.startswith("run/data/candidates/") for k in written)
    assert not any(k.startswith("run/data/.scratch/") for k in written)  # the stage's chunks and buckets: removed
    assert not any(SECRET.encode() in b for b in written.values())
    assert SECRET not in r.stdout + r.stderr
    assert run(stages.load_all(config.load_raw(str(ROOT / "configs" / "tiny.yaml"), over + [f"run_dir={uri}"]))[
        "data"]).created == m_s3.created  # current: skipped, nothing rewritten
    assert objects(cli, uri) == written


def test_data_input_from_a_bucket(s3, tmp_path):
    """data.path may be a bucket URI (a KubeRay cluster has no shared disk): read through a local scratch copy, and
    fingerprinted by its objects, so a resubmission sees the same input until an object changes."""
    from slim.data import sources
    from slim.data import stage as prepare
    from slim.data.stage import DataConfig
    from slim.testing.sources import write_seqrec

    uri, _ = s3
    src = write_seqrec(tmp_path / "src", 30, 60)
    storage.upload(src, f"{uri}-input")
    cfg = DataConfig(run_dir=str(tmp_path / "run"), source="jsonl-sequences", path=f"{uri}-input")
    fp = prepare._inputs(cfg)
    local = sources.fetch(cfg.path, str(tmp_path / "cache"))
    assert prepare._inputs(cfg) == fp and sources.fetch(cfg.path, str(tmp_path / "cache")) == local
    assert {f.name: f.read_bytes() for f in local.iterdir()} == {f.name: f.read_bytes() for f in src.iterdir()}
    (src / "items.tsv").write_text((src / "items.tsv").read_text() + "\n")
    storage.upload(src / "items.tsv", f"{uri}-input/items.tsv")  # a changed input: a new fingerprint, a new copy
    assert prepare._inputs(cfg) != fp and sources.fetch(cfg.path, str(tmp_path / "cache")) != local
    with pytest.raises(sources.DataError, match="input not found: s3://"):
        prepare._inputs(DataConfig(source="jsonl-sequences", path=f"{uri}-nothing"))


def test_merged_student_stays_off_the_bucket(s3, cache_dir, tmp_path):
    """The student stage (`jobs/student.py`, its own Ray cluster) on a bucket run directory merges base +
    adapter into a local folder (SLIM_SCRATCH), named in the manifest, and uploads only its shards: the merged fp32
    model (~540 MB here) is not an object."""
    from slim.student import stage as generate
    from slim.testing.rundata import write_run_data
    from slim.testing.adapter import make_tiny_adapter

    uri, cli = s3
    local = write_run_data(tmp_path / "run", num_users=4, num_items=30)
    make_tiny_adapter(local / C.STUDENT_ADAPTER, cache_dir)
    storage.upload(local, uri)
    # a local run directory keeps the merge next to its shards (a cluster's shared mount): the rule is the bucket's
    assert generate.merge_cache(RunDir(local)) == local / C.STUDENT_SHARDS
    job = [sys.executable, "jobs/student.py", f"run_dir={uri}", "num_cpus=4", "student.engine=hf",
           "student.max_users=3", "student.batch_size=3", "student.shard_rows=3", "student.max_model_len=420",
           "student.sampling.max_tokens=8", f"student.cache_dir={cache_dir}", "student.hf_threads=1"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    r = subprocess.run(job, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    m = RunDir(uri).read_manifest(C.STUDENT_DIR)
    merged = Path(m.extra["model"]["merged_into"])
    assert m.counts["users"] == 3 and (merged / "config.json").exists()
    assert merged.is_relative_to(os.environ["SLIM_SCRATCH"])
    size = sum(f.stat().st_size for f in merged.rglob("*") if f.is_file())
    written = objects(cli, uri)
    adapter = sum(len(b) for k, b in written.items() if "/distill/adapter/" in k)
    assert not any("merged" in k for k in written) and sum(map(len, written.values())) - adapter < size / 20
    assert any(k.startswith("run/student/part-") for k in written) and "run/student/manifest.json" in written
    print(f"bucket: {len(written)} objects, {sum(map(len, written.values())) / 1e6:.2f} MB (adapter "
          f"{adapter / 1e6:.2f} MB); merged student kept locally: {size / 1e6:.1f} MB")


def test_check_reads_the_runtime_env(s3, tmp_path):
    """`--check --runtime-env FILE` sees a bucket whose endpoint and keys only the job's runtime_env carries (here
    cluster/runtime_env_s3.yaml with a throwaway server's key added); without it the bucket cannot be read."""
    import yaml

    uri, _ = s3
    rt = yaml.safe_load((ROOT / "cluster" / "runtime_env_s3.yaml").read_text())
    rt["env_vars"].update(aws_env(os.environ["AWS_ENDPOINT_URL"]))
    (tmp_path / "rt.yaml").write_text(yaml.safe_dump(rt))
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}  # the shell has none of them
    cmd = [sys.executable, "jobs/pipeline.py", "--config", "configs/tiny.yaml", "--check", "--stages", "data",
           f"run_dir={uri}"]
    run = lambda *a: subprocess.run(cmd + list(a), cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT)},  # noqa: E731
                                    capture_output=True, text=True, timeout=300)
    r = run("--runtime-env", str(tmp_path / "rt.yaml"))
    assert r.returncode == 0 and "data      RUN       no manifest yet" in r.stdout, r.stdout + r.stderr
    assert "AWS_SECRET_ACCESS_KEY" in r.stdout and SECRET not in r.stdout + r.stderr  # names, never values
    r = run()
    assert r.returncode == 2 and "cannot tell (OSError)" in r.stdout, r.stdout + r.stderr
    r = subprocess.run([sys.executable, "jobs/pipeline.py", "--config", "configs/tiny.yaml", "--runtime-env",
                        str(tmp_path / "rt.yaml")], cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT)},
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "--runtime-env is read by --check only" in r.stderr


@pytest.mark.slow
def test_tiny_pipeline_submitted_with_a_bucket_run_dir(s3_endpoint, cache_dir, tmp_path, monkeypatch):
    """configs/tiny.yaml, every stage, submitted to a head on 127.0.0.1 (tests/cluster/test_cluster.py's) with
    run_dir=s3://...: the head has no AWS variables, the job and its workers get them from the runtime_env only.
    ~20+ min on 2 cores."""
    import yaml

    from tests.cluster.test_cluster import job_status, local_head, submit

    for k in aws_env(s3_endpoint):
        monkeypatch.delenv(k, raising=False)
    bucket = f"slim-{uuid.uuid4().hex[:12]}"
    cli = _boto(s3_endpoint)
    cli.create_bucket(Bucket=bucket)
    uri = f"s3://{bucket}/tiny"
    rt = yaml.safe_load((ROOT / "cluster" / "runtime_env_s3.yaml").read_text())  # the shipped bucket example
    rt["env_vars"].update(aws_env(s3_endpoint))  # a throwaway server's key: a real one stays in the nodes' env
    (tmp_path / "runtime_env.yaml").write_text(yaml.safe_dump(rt))
    cores = os.cpu_count() or 1
    with local_head(num_cpus=max(4, 2 * cores), cores=cores) as (url, env):
        assert not any(k in env for k in aws_env(s3_endpoint))  # no key or endpoint on the head
        h = (url, {**env, "SLIM_RUNTIME_ENV": str(tmp_path / "runtime_env.yaml")})
        r = submit(h, "configs/tiny.yaml", f"run_dir={uri}", f"data.cache_dir={cache_dir}",
                   submit_args="--submission-id tiny-s3", timeout=3600)
        assert r.returncode == 0, r.stdout[-5000:] + r.stderr[-3000:]
        assert job_status(h, "tiny-s3") == "SUCCEEDED"
    for k, v in aws_env(s3_endpoint).items():
        monkeypatch.setenv(k, v)
    rd = RunDir(uri)
    m = {s: rd.read_manifest(s) for s in C.STAGE_DIRS}
    assert all(m.values()), [s for s, v in m.items() if v is None]
    assert m["data"].counts["users"] == 150 and m["teacher"].counts["users"] == 24
    assert shards.read_latest(rd.path(C.TEACHER_SHARDS), columns=[C.USER_ID]).num_rows == 24
    assert shards.read_shards(rd.path(C.STUDENT_SHARDS), columns=[C.USER_ID]).num_rows == 150  # no duplicates
    assert m["student"].counts["users"] == 150 and m["encode"].counts["users"] == 150
    assert storage.load_npy(rd.path(C.ITEM_EMB_FILE)).shape[0] == m["data"].counts["items"] + 1
    runs = m["train"].outputs
    assert m["train"].counts["runs"] == len(runs) == m["evaluate"].counts["runs"] > 0
    assert all((rd.root / o / "model.pt").exists() and (rd.root / o / "metrics.json").exists() for o in runs)
    assert "gru4rec" in rd.path("reports/results.md").read_text()
    written = objects(cli, uri)
    assert not any(SECRET.encode() in b for b in written.values())
    # the merged student is local scratch named in the manifest, not an object of the run directory
    merged = m["student"].extra["model"].get("merged_into", "")
    assert not any("merged" in k for k in written) and merged and "://" not in merged
    local = sum(f.stat().st_size for f in Path(merged).rglob("*") if f.is_file())
    print(f"bucket run dir: {len(written)} objects, {sum(map(len, written.values())) / 1e6:.1f} MB; merged student "
          f"kept locally at {merged}: {local / 1e6:.1f} MB")
