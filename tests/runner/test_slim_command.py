"""The installed `slim` command (pyproject [project.scripts] -> slim.runner.main): every job is a subcommand, and a
subcommand is the same program as its jobs/*.py script."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SLIM = Path(sys.executable).parent / "slim"  # the console script `make env` installs beside the venv's python
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def run(*args: str) -> subprocess.CompletedProcess:
    # not a skip when absent: `make env` installs the command (pyproject [project.scripts]), so its absence is a bug
    assert args[0] != str(SLIM) or SLIM.exists(), f"{SLIM} not installed: `make env` (pip install -e .)"
    return subprocess.run([*args], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)


def test_help_lists_every_subcommand_with_its_line():
    from slim.runner.main import COMMANDS

    r = run(str(SLIM), "--help")
    assert r.returncode == 0, r.stderr
    listed = {ln.split()[0] for ln in r.stdout.splitlines() if ln.startswith("    ") and ln.split()}
    assert {"run", "check", "serve", "explain", "migrate", "stage"} <= listed
    assert listed >= set(COMMANDS)
    for name, (line, job, _) in COMMANDS.items():
        assert " ".join(line.split()[:4]) in " ".join(r.stdout.split()), name  # the one-line description
        assert f"python {job}" in r.stdout


def test_run_check_is_the_pipeline_jobs_check():
    """Same exit code, same plan, same warnings as `python jobs/pipeline.py --check`; and `slim check` too."""
    args = ("--config", "configs/tiny.yaml", "--check")
    job = run(sys.executable, "jobs/pipeline.py", *args)
    cmd = run(str(SLIM), "run", *args)
    check = run(str(SLIM), "check", *args[:2])
    assert job.returncode == 0, job.stderr
    assert "stages to run: data, teacher" in job.stdout and "evaluate  RUN" in job.stdout
    for got in (cmd, check):
        assert (got.returncode, got.stdout, got.stderr) == (job.returncode, job.stdout, job.stderr)


def test_a_bad_config_fails_alike():
    """A problem the job reports (an unknown key) is the same one line and exit code 2 from the command."""
    args = ("--config", "configs/tiny.yaml", "--check", "train.no_such_key=1")
    job, cmd = run(sys.executable, "jobs/pipeline.py", *args), run(str(SLIM), "run", *args)
    assert job.returncode == cmd.returncode == 2
    assert "train.no_such_key" in cmd.stderr and cmd.stderr == job.stderr


def test_unknown_subcommand_exits_2_with_usage():
    r = run(str(SLIM), "bogus", "--config", "configs/tiny.yaml")
    assert r.returncode == 2
    assert r.stderr.startswith("usage: slim ") and "invalid choice: 'bogus'" in r.stderr
    assert r.stdout == ""
    none = run(str(SLIM))
    assert none.returncode == 2 and none.stderr.startswith("usage: slim ")


def test_subcommand_help_names_the_subcommand():
    """A job's own parser answers `slim run --help`, under the name the user typed."""
    r = run(str(SLIM), "run", "--help")
    assert r.returncode == 0 and r.stdout.startswith("usage: slim run ") and "--stages" in r.stdout
    s = run(str(SLIM), "stage", "nostage")
    assert s.returncode == 2 and "invalid choice: 'nostage'" in s.stderr and "train" in s.stderr
