"""The import contract (`.importlinter`, checked by `lint-imports` in `make test`) holds for the package, and fails
on a deliberately added cycle, an upward import into the foundations, a stage importing another stage and a
stage importing a test double: the check can fail. And each run-directory folder is spelled in one place."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LINT = str(Path(sys.executable).with_name("lint-imports"))


def _lint(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([LINT, str(ROOT / ".importlinter")], cwd=root, env={"PYTHONPATH": str(root)},
                          capture_output=True, text=True, timeout=300)


def _copy(tmp: Path) -> Path:
    shutil.copytree(ROOT / "slim", tmp / "slim", ignore=shutil.ignore_patterns("__pycache__"))
    for pkg in ("tests", "bench"):  # the contract's other root packages, empty
        (tmp / pkg).mkdir()
        (tmp / pkg / "__init__.py").write_text("")
    return tmp


def test_contract_holds_and_fails_on_a_new_cycle_or_upward_import(tmp_path):
    r = _lint(ROOT)
    assert r.returncode == 0 and "0 broken" in r.stdout, r.stdout[-3000:] + r.stderr[-2000:]

    cyc = _copy(tmp_path / "cycle")  # atomic <- storage already; storage -> atomic closes a loop
    with open(cyc / "slim" / "io" / "atomic.py", "a") as f:
        f.write("\nfrom slim.io import rundir  # noqa\n")
    r = _lint(cyc)
    assert r.returncode == 1 and "No import cycles" in r.stdout and "BROKEN" in r.stdout, r.stdout[-3000:]

    up = _copy(tmp_path / "upward")
    with open(up / "slim" / "io" / "columns.py", "a") as f:
        f.write("\nfrom slim.recsys import report  # noqa\n")
    r = _lint(up)
    assert r.returncode == 1 and "slim.io.columns -> slim.recsys.report" in r.stdout, r.stdout[-3000:]

    double = _copy(tmp_path / "double")  # a stage that reaches for a test double
    with open(double / "slim" / "encode" / "stage.py", "a") as f:
        f.write("\nfrom slim import testing  # noqa\n")
    r = _lint(double)
    assert r.returncode == 1 and "slim.encode.stage -> slim.testing" in r.stdout, r.stdout[-3000:]

    across = _copy(tmp_path / "across")  # one stage reaching into another instead of reading its run directory
    with open(across / "slim" / "evaluate" / "stage.py", "a") as f:
        f.write("\nfrom slim.train import stage as _train  # noqa\n")
    r = _lint(across)
    assert r.returncode == 1 and "slim.evaluate.stage -> slim.train.stage" in r.stdout, r.stdout[-3000:]


# One name per stage: a run-directory folder is spelled only in slim/io/columns.py (and the old ones only in
# slim/runner/migrate.py); everything else names it through the constants. What the grep in the README looks for:
FOLDER_PATH = re.compile(r"[\"'](data|teacher|distill|student|encode|train|evaluate)/")
MANIFEST_BY_LITERAL = re.compile(r"\b(read_manifest|upstream|is_current|invalidate|stage_dir|write_manifest|Manifest)"
                                 r"\([\"']")
OLD_FOLDER = re.compile(r"[\"'](rationales|embeddings)/|/ [\"'](rationales|embeddings)[\"']")
ALLOWED = {FOLDER_PATH: {"slim/io/columns.py"}, MANIFEST_BY_LITERAL: set(), OLD_FOLDER: {"slim/runner/migrate.py"}}


def spelled_outside(files: dict) -> list[str]:
    """path -> text: 'path:line: text' for each folder name spelled where it should not be."""
    return [f"{path}:{i}: {line.strip()}" for path, text in files.items()
            for i, line in enumerate(text.splitlines(), 1)
            for rx, allowed in ALLOWED.items() if path not in allowed and rx.search(line)]


def test_stage_folders_are_spelled_in_one_place():
    files = {str(p.relative_to(ROOT)): p.read_text() for d in ("slim", "jobs")
             for p in sorted((ROOT / d).rglob("*.py"))}
    assert spelled_outside(files) == []
    planted = {"slim/train/stage.py": 'x = rd.read_manifest("encode")\n',
               "slim/serve/model.py": 'p = root / "encode/items.npy"\n',
               "slim/encode/stage.py": 'p = root / "embeddings"\n'}
    assert len(spelled_outside(planted)) == 3  # each kind is found
    assert spelled_outside({"slim/io/columns.py": 'ITEM = "encode/items.npy"\n',
                            "slim/runner/migrate.py": 'old = root / "rationales"\n'}) == []


def test_every_stage_shows_the_same_face():
    """slim/runner/stages.py's interface, which --check, the planner and the manifests read (no per-stage branch in
    slim/runner/check.py): each stage module has it, named after the stage and its folder."""
    from slim.runner import stages
    from slim.io.columns import STAGE_DIRS

    face = ("CONFIG", "run", "STAGE", "WRITES", "reads", "stage_config", "own_inputs", "resources")
    for name in stages.names():
        f = stages.face(name)
        assert [a for a in face if not hasattr(f, a)] == [], name
        assert f.STAGE == name and stages.REGISTRY[name]() == (f.CONFIG, f.run)
        assert f.__name__ == f"slim.{name}.stage"  # one name: the stage's package, job script, folder, section
        assert (ROOT / "jobs" / f"{name}.py").exists()
        assert (f.WRITES[:1] == (name,)) == (name in STAGE_DIRS)  # its folder first; serve writes none
        assert all(u in STAGE_DIRS and stages.ORDER.index(u) < stages.ORDER.index(name) for u in f.reads(f.CONFIG()))
    check = (ROOT / "slim" / "runner" / "check.py").read_text()
    assert not re.search(r"name == [\"']", check)  # no per-stage branch left in the planner
