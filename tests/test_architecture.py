"""The import contract (`.importlinter`, checked by `lint-imports` in `make test`) holds for the package, and fails
on a deliberately added cycle and on an upward import into the foundations: the check can fail."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT = str(Path(sys.executable).with_name("lint-imports"))


def _lint(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([LINT, str(ROOT / ".importlinter")], cwd=root, env={"PYTHONPATH": str(root)},
                          capture_output=True, text=True, timeout=300)


def _copy(tmp: Path) -> Path:
    shutil.copytree(ROOT / "slim", tmp / "slim", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp / "tests").mkdir()
    (tmp / "tests" / "__init__.py").write_text("")
    return tmp


def test_contract_holds_and_fails_on_a_new_cycle_or_upward_import(tmp_path):
    r = _lint(ROOT)
    assert r.returncode == 0 and "0 broken" in r.stdout, r.stdout[-3000:] + r.stderr[-2000:]

    cyc = _copy(tmp_path / "cycle")  # atomic <- storage already; storage -> atomic closes a loop
    with open(cyc / "slim" / "atomic.py", "a") as f:
        f.write("\nfrom slim import rundir  # noqa\n")
    r = _lint(cyc)
    assert r.returncode == 1 and "No import cycles" in r.stdout and "BROKEN" in r.stdout, r.stdout[-3000:]

    up = _copy(tmp_path / "upward")
    with open(up / "slim" / "columns.py", "a") as f:
        f.write("\nfrom slim.recsys import report  # noqa\n")
    r = _lint(up)
    assert r.returncode == 1 and "slim.columns -> slim.recsys.report" in r.stdout, r.stdout[-3000:]
