"""`--check --force`: the bare --force (FORCE_ALL) marks every selected stage, the stages are selected once per
command, and a named --force marks only the stages it names."""

from __future__ import annotations

from pathlib import Path

from slim.runtime import config
from slim.runner import cli, pipeline

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "tiny.yaml"


def _rows(capsys) -> dict:
    out = capsys.readouterr().out
    return {ln.split()[0]: ln for ln in out.splitlines() if ln and not ln.startswith((" ", "config OK"))}


def test_check_force_all_and_named(tmp_path, monkeypatch, capsys):
    calls, real = [], pipeline.selected
    monkeypatch.setattr(pipeline, "selected", lambda raw, only=None: (calls.append(only), real(raw, only))[1])
    raw = config.load_raw(TINY, [f"run_dir={tmp_path / 'run'}"])
    wanted = ["data", "train"]
    pipeline.dry_run(raw, wanted, [cli.FORCE_ALL])
    rows = _rows(capsys)
    assert all("--force" in rows[s] for s in wanted), rows
    assert len(calls) == 1  # selected once per --check
    pipeline.dry_run(raw, wanted, ["train"])
    rows = _rows(capsys)
    assert "--force" in rows["train"] and "--force" not in rows["data"], rows
    pipeline.dry_run(raw, wanted, [])
    rows = _rows(capsys)
    assert not any("--force" in rows[s] for s in wanted), rows
    assert cli.FORCE_ALL == pipeline.FORCE_ALL == "all"


def test_a_forced_stage_the_command_does_not_run_is_an_error(tmp_path):
    raw = config.load_raw(TINY, [f"run_dir={tmp_path / 'run'}"])
    for go in (pipeline.dry_run, pipeline.run):
        try:
            go(raw, ["data"], ["train"])
        except config.ConfigError as e:
            assert "--force train: not among the stages this command runs (data)" in str(e)
        else:
            raise AssertionError(f"{go.__name__}: --stages data --force train was accepted")
    assert not (tmp_path / "run").exists()  # refused before anything was written
    assert pipeline.forced_names(["data"], ["data"]) == ["data"]  # the same force for a stage that runs is fine
    assert pipeline.forced_names([pipeline.FORCE_ALL], ["data", "train"]) == ["data", "train"]
