"""The job entry points as a user runs them: a subprocess per command."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(args, cwd=ROOT):
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_config_error_names_the_key(tmp_path):
    r = _run(["jobs/data.py", "--config", "configs/tiny.yaml", "data.min_histroy=2"])
    assert r.returncode == 2 and "data.min_histroy" in r.stderr and "Traceback" not in r.stderr
    r = _run(["jobs/pipeline.py", "--config", "configs/tiny.yaml", "--stages", "nope"])
    assert r.returncode == 2 and "nope" in r.stderr



def test_retry_failed_flag_reaches_the_stage_config(monkeypatch, capsys):
    """--retry-failed sets <stage>.retry_failed (over the config's value) for the stages that keep failed rows, in
    the stage's own job and in the pipeline; without the flag the config decides; other jobs do not offer it."""
    import pytest

    from slim.runner import cli
    from slim.runner import stages

    seen = {}
    monkeypatch.setattr(stages, "run", lambda stage, cfg, force=False: seen.__setitem__(stage, cfg))
    local = ["teacher.local_server=true"]  # the default teacher has no endpoint: --check refuses it
    assert cli.main_stage("student", []) == 0 and seen.pop("student").retry_failed is False
    assert cli.main_stage("student", ["--retry-failed"]) == 0 and seen.pop("student").retry_failed is True
    assert cli.main_stage("teacher", [*local, "teacher.retry_failed=false"]) == 0
    assert seen.pop("teacher").retry_failed is False
    assert cli.main_stage("teacher", ["--retry-failed", *local, "teacher.retry_failed=false"]) == 0
    assert seen.pop("teacher").retry_failed is True  # the flag wins over the config
    with pytest.raises(SystemExit) as e:
        cli.main_stage("encode", ["--retry-failed"])
    assert e.value.code == 2 and "unrecognized arguments: --retry-failed" in capsys.readouterr().err
    assert not seen
    base = ["--config", "configs/tiny.yaml", "--stages", "teacher,student"]
    monkeypatch.chdir(ROOT)
    assert cli.main_pipeline(base) == 0 and not seen["student"].retry_failed and seen["teacher"].retry_failed
    assert cli.main_pipeline([*base, "--retry-failed", "student", "teacher.retry_failed=false"]) == 0
    assert seen["student"].retry_failed and not seen["teacher"].retry_failed
    assert cli.main_pipeline([*base, "--retry-failed", "student,encode"]) == 2
    assert "--retry-failed: encode keeps no failed rows to redo" in capsys.readouterr().err


def test_pipeline_data_stage_then_skip(tmp_path, cache_dir):
    args = ["jobs/pipeline.py", "--config", "configs/tiny.yaml", "--stages", "data",
            f"run_dir={tmp_path}", f"data.cache_dir={cache_dir}", "data.max_users=120"]
    r = _run(args)
    assert r.returncode == 0, r.stderr[-2000:]
    m = json.loads((tmp_path / "data" / "manifest.json").read_text())
    assert m["counts"]["users"] == 120 and m["counts"]["candidate_rows"] == 480
    assert "pipeline summary" in r.stdout
    r2 = _run(args)  # same command again: the manifest matches, nothing is rewritten
    assert r2.returncode == 0 and r2.stdout.count("data: manifest matches, skipping") == 1
    assert json.loads((tmp_path / "data" / "manifest.json").read_text())["created"] == m["created"]
