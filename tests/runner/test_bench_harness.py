"""The bench harness (bench/harness.py): a results file written from given measurements carries the header every
results file has (title, the command that reruns it, the machine notes), and bench/run_all.py reads that command
back; every bench script runs on the harness; nothing in bench/ imports the tests."""

import ast
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from bench import harness, run_all

ROOT = Path(__file__).resolve().parents[2]
TEST_MODULES = {p.stem for p in (ROOT / "tests").rglob("*.py")} | {"tests"}


def test_results_file_from_measurements_has_the_machine_notes_and_the_command(tmp_path, monkeypatch):
    machine = harness.Machine(cores=2, load_start=(1.25, 0.5, 0.25), commit="abc1234", date="2026-12-07 21:00 UTC",
                              arch="x86_64", python="3.11.9")
    monkeypatch.setattr(sys, "argv", [str(ROOT / "bench" / "bench_x.py"), "--users", "10", "--out", "a b.md"])
    rows = [("ddp", 2, 1234.5), ("deepspeed", 2, 987.25)]  # the measurements a bench would pass
    body = ["Two workers.", "", "| strategy | workers | tokens/s |", "|---|---:|---:|",
            *[f"| {s} | {w} | {t:.1f} |" for s, w, t in rows]]
    out = tmp_path / "results" / "x.md"
    text = harness.write_results(out, "X benchmark", body, harness.command(), machine, echo=False)
    assert out.read_text() == text
    lines = text.splitlines()
    assert lines[0] == "# X benchmark" and lines[1] == "" and lines[3] == ""
    assert lines[2] == "Command: `PYTHONPATH=. .venv/bin/python bench/bench_x.py --users 10 --out 'a b.md'`"
    notes = lines[4]
    assert notes.startswith("Machine: 2 CPU cores (x86_64), Python 3.11.9; load average (1/5/15 min) 1.2/0.5/0.2 "
                            "at the start, ") and "commit abc1234; 2026-12-07 21:00 UTC." in notes
    assert lines[6:] == body and text.endswith("|\n")
    # run_all reruns what the file records, with this interpreter, from the repository root
    cmd = harness.recorded_command(text)
    assert run_all.to_argv(cmd) == [sys.executable, "bench/bench_x.py", "--users", "10", "--out", "a b.md"]
    nice = harness.command(["--rows", "3"], script="bench/bench_teacher.py", nice=True)
    assert run_all.to_argv(nice) == ["nice", sys.executable, "bench/bench_teacher.py", "--rows", "3"]
    # no command or machine given (a projection, a pipeline run's report): the header is the title only
    bare = harness.write_results(tmp_path / "y.md", "Y", ["Written by: `...`"], echo=False)
    assert bare == "# Y\n\nWritten by: `...`\n" and harness.recorded_command(bare) is None


def test_machine_notes_name_this_checkout_and_the_load_now():
    m = harness.Machine()
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    assert m.cores == os.cpu_count() and m.commit.split(" ")[0] == head
    end = (9.0, 8.0, 7.0)
    assert re.search(r"at the start, 9\.0/8\.0/7\.0 at the end", m.line(end))
    assert re.search(r"UTC\.$", m.line())


def test_timed_env_and_rows_generated(monkeypatch):
    with harness.timed() as t:
        time.sleep(0.05)
    assert 0.05 <= t.s < 30  # generous: a loaded 2-core machine
    assert harness.rows_generated({"generated": 3, "new": 10, "users": 40}) == 3  # a refresh: `new` is new users
    assert harness.rows_generated({"new": 5, "users": 5}) == 5  # a manifest from before the refresh counts
    assert harness.subprocess_env(None, X_BENCH="1").get("PYTHONPATH") == os.environ.get("PYTHONPATH")
    assert harness.subprocess_env(X_BENCH="1")["PYTHONPATH"] == str(ROOT)
    monkeypatch.setenv("X_BENCH_SET", "mine")
    monkeypatch.delenv("X_BENCH_UNSET", raising=False)
    harness.env_defaults({"X_BENCH_SET": "1", "X_BENCH_UNSET": "2"})  # a default never overrides what is set
    assert (os.environ["X_BENCH_SET"], os.environ["X_BENCH_UNSET"]) == ("mine", "2")
    monkeypatch.delenv("X_BENCH_UNSET")


def test_the_import_checker_finds_each_form_of_importing_the_tests(tmp_path):
    """The checker below finds a bench file that imports the tests, in every form: by package, by a module of
    tests/ put on sys.path, or by putting tests/ on sys.path; and passes one that does not."""
    bad = {"a.py": "from tests.slimdata import write\n", "b.py": "import tests.datagen as g\n",
           "c.py": "def f():\n    from serve_app import start\n",
           "d.py": "import sys\nsys.path.insert(0, str(ROOT / 'tests'))\n"}
    for name, src in bad.items():
        (tmp_path / name).write_text(src)
        assert _imports_tests(tmp_path / name), name
    (tmp_path / "ok.py").write_text("from slim.testing.planted import write\nfrom bench import harness\n")
    assert _imports_tests(tmp_path / "ok.py") == []


def test_bench_imports_nothing_from_tests_and_every_script_uses_the_harness():
    found = {str(p.relative_to(ROOT)): _imports_tests(p) for p in sorted((ROOT / "bench").rglob("*.py"))}
    assert not {k: v for k, v in found.items() if v}, found
    scripts = [p for p in (ROOT / "bench").glob("*.py") if 'if __name__ == "__main__"' in p.read_text()]
    assert len(scripts) >= 15
    missing = [p.name for p in scripts if "from bench import harness" not in p.read_text()]
    assert not missing, f"bench scripts not on bench/harness.py: {missing}"


def test_a_bench_script_starts_without_pythonpath():
    """Run as the recorded commands run them, from the repository root: the script finds the harness itself."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "bench/run_all.py", "--list"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert re.search(r"^encode: .*bench/bench_encode\.py --users", out.stdout, re.M), out.stdout


def _imports_tests(path: Path) -> list[str]:
    """The lines of a Python file that import the tests (see test_the_import_checker_finds_each_form_of_importing_the_tests)."""
    hits = []
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.Call) and ast.unparse(node.func).startswith("sys.path."):
            if "tests" in ast.unparse(node):
                hits.append(f"{node.lineno}: {ast.unparse(node)}")
        hits += [f"{node.lineno}: {n}" for n in names if n.split(".")[0] in TEST_MODULES]
    return hits
