"""Every job's error path as a user meets it (issue 29): one line on stderr naming the key or file, exit code 2, no
traceback, and nothing started (RAY_ADDRESS points nowhere: a job that tried to start work would fail loudly)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TINY = "configs/tiny.yaml"


def _job(args: list[str], cwd=ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1",
           "RAY_ADDRESS": "127.0.0.1:9"}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


UNFINISHED = r"^error: stage '{}' has not finished in .*run it first$"

CASES = {
    "data": (["data.source=amazon2018-games", "data.path=/nonexistent/seqrec"],
             r"^data error: .*/nonexistent/seqrec"),
    "teacher": (["teacher.local_server=false", "teacher.base_url=https://api.example.com/v1"],
                r"^config error: teacher\.price_in_per_mtok / teacher\.price_out_per_mtok: not set for "
                r"the paid API at https://api\.example\.com/v1"),
    "distill": ([], UNFINISHED.format("data")),
    "student": ([], r"^error: no student model: neither .*/run/distill/merged .* run the distill stage"),
    "encode": ([], UNFINISHED.format("data")),
    "train": (["train.use_gpu=true", "train.strategy=fanout"],
              r"^config error: train\.use_gpu=true needs train\.strategy ddp or deepspeed"),
    "evaluate": ([], UNFINISHED.format("train")),
    "serve": ([], r"^serve: .*"),
    "pipeline": (["--retry-failed", "encode"],
                 r"^config error: --retry-failed: encode keeps no failed rows to redo; stages that do: teacher, "
                 r"student$"),
}


def _one_error_line(r: subprocess.CompletedProcess, pattern: str) -> None:
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    lines = [ln for ln in r.stderr.splitlines() if re.search(pattern, ln)]
    assert len(lines) == 1, r.stderr[-3000:]
    assert not [ln for ln in r.stderr.splitlines() if ln.startswith(("config error", "data error", "error:"))
                and ln not in lines], r.stderr[-3000:]


@pytest.mark.parametrize("job", CASES)
def test_job_error_is_one_line_exit_2(job, tmp_path):
    extra, pattern = CASES[job]
    r = _job([f"jobs/{job}.py", "--config", TINY, f"run_dir={tmp_path / 'run'}", *extra])
    _one_error_line(r, pattern)
    if job != "serve":
        assert not (tmp_path / "run").exists() or not any((tmp_path / "run").rglob("manifest.json"))


def test_explain_errors_are_one_line_exit_2(tmp_path):
    """The README promises exit 2; a config without run_dir says which key is missing, not "explain: 'run_dir'"."""
    cfg = tmp_path / "no_run_dir.yaml"
    cfg.write_text("data: {source: ml-100k}\n")
    r = _job(["jobs/explain.py", "--config", str(cfg), "--user", "3"])
    _one_error_line(r, rf"^config error: {re.escape(str(cfg))}: no run_dir .* pass run_dir=PATH$")
    r = _job(["jobs/explain.py", "--config", TINY, "--user", "3", f"run_dir={tmp_path / 'empty'}"])
    _one_error_line(r, r"^error: .*empty")


@pytest.mark.parametrize("job", ["encode", "data", "distill", "train", "evaluate", "serve"])
def test_retry_failed_is_offered_only_where_it_means_something(job, tmp_path):
    r = _job([f"jobs/{job}.py", "--config", TINY, "--retry-failed", f"run_dir={tmp_path}"])
    assert r.returncode == 2 and "unrecognized arguments: --retry-failed" in r.stderr, r.stderr[-2000:]
    r = _job([f"jobs/{job}.py", "--help"])
    assert r.returncode == 0 and "--retry-failed" not in r.stdout
    for offered in ("teacher", "student"):
        r = _job([f"jobs/{offered}.py", "--help"])
        assert r.returncode == 0 and "--retry-failed" in r.stdout


def test_user_errors_from_the_stages_reach_the_one_line_handler(tmp_path, monkeypatch, capsys):
    """The errors a run directory can raise deep in a stage (unreadable shard, item vectors of the wrong size,
    rationale vectors missing) end the job with one line and exit 2, also when raised inside a Ray task."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ray.exceptions import RayTaskError

    from slim.runner import cli
    from slim.io import shards
    from slim.runner import stages
    from slim.recsys import usertext
    from slim.recsys import itemtext as text

    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "part-1.parquet").write_text("not parquet")
    (tmp_path / "data").mkdir()
    pq.write_table(pa.table({"item_id": pa.array([1, 2, 3], pa.int32()), "text": ["a", "b", "c"]}),
                   tmp_path / "data" / "items.parquet")
    (tmp_path / "encode").mkdir()
    np.save(tmp_path / "encode" / "items.npy", np.zeros((7, 4), np.float32))  # 3 items + 1 rows expected
    (tmp_path / "encode" / "manifest.json").write_text('{"config": {"model": "all-MiniLM-L6-v2"}}')
    raisers = {
        "shard": lambda: shards.read_shards(tmp_path / "shards", columns=["user_id"]),
        "item text": lambda: text.item_text(tmp_path),
        "user text": lambda: usertext.check_cut(tmp_path, "slim"),  # no student/manifest.json
    }
    for name, fn in raisers.items():
        with pytest.raises(cli.user_errors()):
            fn()
        for wrap in (False, True):
            def run(stage, cfg, force=False, fn=fn, wrap=wrap):
                try:
                    fn()
                except Exception as e:  # noqa: BLE001 - re-raised as Ray raises a task's error in the driver
                    raise (RayTaskError("f", "Traceback ...\n  File x", e).as_instanceof_cause() if wrap else e)

            monkeypatch.setattr(stages, "run", run)
            assert cli.main_stage("train", [f"run_dir={tmp_path}"]) == 2, name
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and err[0].startswith("data error: ") and "Traceback" not in err[0], (name, err)
            assert str(tmp_path) in err[0], (name, err)
