"""A new user's rough edges (issue 42, item 7): --check and a plain run agree on the stages a config runs, and one
--force grammar in every job."""

import json
import re
from pathlib import Path

import pytest

from slim.runner import cli
from tests.datagen import write_seqrec

ROOT = Path(__file__).resolve().parents[1]
FUSION = str(ROOT / "configs" / "games_fusion.yaml")  # top-level stages: [data, encode, train, evaluate]


def test_check_honours_the_configs_stages_and_says_what_it_left_out(tmp_path, capsys):
    """games_fusion.yaml has no teacher endpoint: --check passes on the stages it lists and names the others as
    not selected; the same file without its `stages:` checks every stage and refuses the teacher, saying how to
    name fewer."""
    src = write_seqrec(tmp_path / "src", 30, 150)
    base = ["--config", FUSION, "--check", f"run_dir={tmp_path / 'run'}", f"data.path={src}"]
    assert cli.main_pipeline(base) == 0
    out = capsys.readouterr().out
    assert "stages to run: data, encode, train, evaluate (from the config's stages:)" in out
    for stage in ("teacher", "distill", "student", "serve"):
        assert f"{stage:9s} -         not selected (the config's stages:)" in out
    assert cli.main_pipeline([*base, "stages=null"]) == 2
    err = capsys.readouterr().err
    assert "teacher: no endpoint" in err and "top-level `stages:` or --stages names fewer" in err
    assert cli.main_pipeline([*base, "--stages", "data,encode"]) == 0  # --stages wins over the file
    assert "stages to run: data, encode (from --stages)" in capsys.readouterr().out
    assert cli.main_pipeline([*base, "stages=[data,teachr]"]) == 2
    assert "stages (the config's top-level key): unknown stage(s) teachr" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # --check writes nothing


def test_a_plain_run_runs_the_configs_stages(tmp_path, monkeypatch):
    """What --check plans is what the run runs: the file's stages, in order, and --stages over them."""
    from slim.runner import stages

    ran = []
    monkeypatch.setattr(stages, "run", lambda stage, cfg, force=False: ran.append((stage, force)))
    monkeypatch.setattr(stages, "closing", lambda stage, cfg: [])  # evaluate's headline: no report here
    base = ["--config", FUSION, f"run_dir={tmp_path}"]
    assert cli.main_pipeline(base) == 0 and ran == [(s, False) for s in ("data", "encode", "train", "evaluate")]
    ran.clear()
    assert cli.main_pipeline([*base, "--stages", "train,evaluate", "--force"]) == 0
    assert ran == [("train", True), ("evaluate", True)]  # bare --force: every stage this command runs


def _created(run_dir: Path) -> float:
    return json.loads((run_dir / "data" / "manifest.json").read_text())["created"]


def test_one_force_grammar_in_every_job(tmp_path, capsys, ray_local):
    """The data stage (the cheapest) rerun through its own job and the pipeline with every form of --force: alone
    (before an override, before another option, last), with the stage's name, with `all`; without --force it is
    skipped, and a stage other than the job's own is refused."""
    src = write_seqrec(tmp_path / "src", 60, 150)
    run = tmp_path / "run"
    base = ["--config", FUSION, f"run_dir={run}", f"data.path={src}"]
    assert cli.main_stage("data", base) == 0
    last = _created(run)
    rows = json.loads((run / "data" / "manifest.json").read_text())["extra"]["input_rows"]
    said = re.search(r"read ([\d,]+) input rows at [\d,]+ rows/s over the stage \([\d,]+ rows/s while reading\)",
                     capsys.readouterr().out)  # a count labelled as one, each rate as a rate
    assert said and int(said.group(1).replace(",", "")) == rows > 0

    def forced(argv, job="data") -> bool:
        nonlocal last
        rc = cli.main_stage("data", argv) if job == "data" else cli.main_pipeline(argv)
        assert rc == 0, capsys.readouterr().err
        before, last = last, _created(run)
        return last != before

    assert not forced(base)  # manifest matches: skipped
    assert forced([base[0], base[1], "--force", *base[2:]])  # the README's `--force data.min_history=5` form
    assert forced([*base, "--force"])
    assert forced([*base, "--force", "data"])
    assert forced(["--force", "--verbose", *base])
    assert not forced([*base, "--stages", "data"], job="pipeline")
    assert forced([*base, "--stages", "data", "--force"], job="pipeline")  # was a usage error
    assert forced([*base, "--stages", "data", "--force", "data"], job="pipeline")
    assert forced([*base, "--stages", "data", "--force=all"], job="pipeline")
    assert not forced([*base, "--stages", "data", "--force", "train"], job="pipeline")  # not a stage it runs
    capsys.readouterr()
    assert cli.main_stage("data", [*base, "--force", "train"]) == 2
    assert "--force train: jobs/data.py runs data only" in capsys.readouterr().err
    assert cli.main_stage("data", [*base, "--force", "dta"]) == 2
    assert "--force: unknown stage(s) dta" in capsys.readouterr().err
    assert _created(run) == last  # a refused command wrote nothing


def test_scale_line_labels_its_rate():
    from slim.recsys.summary import scale_line

    line = scale_line("train", 12_000, "training targets (all runs and epochs)", 4.0)
    assert line.startswith("[train] 12,000 training targets (all runs and epochs) in 4.0s, 3,000 per second; ")
