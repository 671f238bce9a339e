"""Configs and command lines checked before any work starts (issue 21): `--check`, cross-stage constraints, one-line
errors for bad input, and training fan-out sized by real cores."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from slim.runtime import config
from slim.runner import cli, pipeline
from slim.io.rundir import content_fingerprint
from slim.testing.sources import write_seqrec

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
NOWHERE = ["data.source=amazon2018-games", "data.path=/nonexistent/seqrec"]  # the data stage fails at once


def _py(code: str, cwd=ROOT) -> subprocess.CompletedProcess:
    # RAY_ADDRESS points nowhere: anything that tried to join a cluster would fail loudly
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1",
           "RAY_ADDRESS": "127.0.0.1:9"}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _job(script: str, *args) -> subprocess.CompletedProcess:
    return _py(f"import sys, runpy; sys.argv = {[script, *args]!r}; runpy.run_path({script!r}, run_name='__main__')")


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_config_file_passes_check_without_ray(path, tmp_path):
    src = write_seqrec(tmp_path / "src", 30, 150)  # games.yaml's ../shared/data is not on every machine
    args = ["--config", str(path), "--check", f"run_dir={tmp_path / 'run'}", f"data.path={src}"]
    wanted = ["data", "teacher", "distill", "student", "encode", "train", "evaluate"]
    doc = yaml.safe_load(path.read_text())
    if "stages" in doc:  # the stages the file is for (games_fusion: no teacher endpoint, no LLM stage)
        wanted = doc["stages"]
    assert "teacher" in doc or "teacher" not in wanted  # without an endpoint --check refuses (test_teacher_budget)
    r = _py("import sys; from slim.runner.cli import main_pipeline; rc = main_pipeline(" + repr(args) + ");"
            "print('ray imported:', 'ray' in sys.modules); sys.exit(rc)")
    if path.name == "games_gpu.yaml":  # passes apart from its 7B hub student, which --check names (no hub here)
        problems = [x for x in r.stderr.splitlines() if x.startswith("problem:")]
        assert r.returncode == 2 and len(problems) == 2, r.stdout + r.stderr
        assert all("Qwen/Qwen2.5-7B-Instruct is neither a local path nor in the Hugging Face cache" in x
                   for x in problems), problems
    else:
        assert r.returncode == 0, r.stdout + r.stderr
    assert "ray imported: False" in r.stdout and "Traceback" not in r.stderr
    for stage in wanted:
        assert re.search(rf"^{stage} +RUN ", r.stdout, re.M), r.stdout
    assert not (tmp_path / "run").exists()  # nothing written


def test_dry_run_alias_and_missing_paths_named(tmp_path):
    r = _job("jobs/pipeline.py", "--config", "configs/games.yaml", "--dry-run", f"run_dir={tmp_path}",
             "data.path=/nonexistent/seqrec", "distill.base_model=./no/such/model",
             "student.base_model=./no/such/model",
             "encode.model=nobody/no-such-encoder")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "problem: data.path: /nonexistent/seqrec not found" in r.stderr
    assert "problem: distill.base_model: ./no/such/model not found" in r.stderr
    assert re.search(r"problem: encode.model: nobody/no-such-encoder is neither a local path nor in the Hugging Face "
                     "cache", r.stderr)


def test_check_says_skip_for_finished_stages_and_why_others_run(tmp_path, ray_local):
    from slim.runner import check
    from slim.data import stage as prepare

    src = write_seqrec(tmp_path / "src", 60, 150)
    base = [f"run_dir={tmp_path / 'run'}", f"data.path={src}", "data.source=amazon2018-games",
            "train.variants=[id,id_text]"]  # no rationales: train reads data only
    cfgs, _ = pipeline.prepare(config.load_raw(CONFIGS[0], base), ["data"])
    prepare.run(cfgs["data"])

    def plan(*extra, stages=("data", "train", "evaluate")):
        cfgs, wanted = pipeline.prepare(config.load_raw(CONFIGS[0], base + list(extra)), list(stages))
        lines, problems = check.plan(cfgs, wanted, [])
        return {ln.split()[0]: ln for ln in lines if not ln.startswith(" ")}, problems

    rows, problems = plan()
    assert "skip" in rows["data"] and "manifest matches" in rows["data"] and not problems
    assert "RUN" in rows["train"] and "no manifest yet" in rows["train"]
    assert "after train" in rows["evaluate"] and "not selected" in rows["teacher"]
    rows, _ = plan("data.seed=7")
    assert "config changed: data.seed" in rows["data"] and "after data" in rows["train"]
    (src / "items.tsv").write_text((src / "items.tsv").read_text() + "9999\tA new game\n")
    rows, _ = plan()
    assert re.search(r"RUN +inputs changed: .*src", rows["data"])
    _, problems = plan(f"run_dir={tmp_path / 'empty'}", stages=("train",))
    assert any(p.startswith("train reads the output of data, which has not finished") for p in problems)


def test_force_stage_names_checked(tmp_path, capsys):
    rc = cli.main_pipeline(["--config", str(CONFIGS[0]), "--stages", "data", "--force", "dta",
                        f"run_dir={tmp_path}", *NOWHERE])
    assert rc == 2 and "--force: unknown stage(s) dta; stages: data, teacher" in capsys.readouterr().err


@pytest.mark.parametrize("stages_,override,message", [
    ("data,train", "data.num_negatives=20", r"data\.num_negatives=20, but train\.test_protocols=uni100"),
    ("data,student", "student.base_model=Qwen/Qwen2.5-0.5B-Instruct",
     r"student\.base_model='Qwen/Qwen2.5-0.5B-Instruct' but .* distill\.base_model='smollm2-135m-instruct'"),
])
def test_cross_stage_constraints_checked_before_the_first_stage(tmp_path, capsys, stages_, override, message):
    # the data stage would fail on its missing input at once: the constraint must be reported before that
    rc = cli.main_pipeline(["--config", str(CONFIGS[0]), "--stages", stages_, f"run_dir={tmp_path}", *NOWHERE, override])
    err = capsys.readouterr().err
    assert rc == 2 and re.search("config error: " + message, err), err


def test_bad_row_is_one_line_naming_file_line_and_key(tmp_path):
    """An items.tsv row with a field too many, after a quoted title holding a newline (one field, two lines)."""
    src = write_seqrec(tmp_path / "src", 40, 150)
    with open(src / "items.tsv", "a") as f:
        f.write('777\t"Zelda: Collector\'s\nEdition"\n778\tZelda\textra\n')
    bad_line = 150 + 4  # header, 150 items, the two lines of the quoted title, then the bad row
    for script, extra in (("jobs/data.py", []), ("jobs/pipeline.py", ["--stages", "data"])):
        r = _job(script, "--config", str(CONFIGS[0]), *extra, f"run_dir={tmp_path / 'run'}",
                 "data.source=amazon2018-games", f"data.path={src}")
        errors = [ln for ln in r.stderr.splitlines() if "error" in ln.lower()]
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
        assert len(errors) == 1 and errors[0].startswith("data error: ")
        assert f"items.tsv:{bad_line}:" in errors[0] and "data.on_bad_row=skip" in errors[0]


def test_unfinished_upstream_is_one_line(tmp_path):
    r = _job("jobs/train.py", "--config", str(CONFIGS[0]), f"run_dir={tmp_path}")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert re.search(r"^error: stage 'data' has not finished in .*run it first$", r.stderr, re.M)


def test_text_encoder_decides_the_item_vectors(tmp_path):
    """train.text_encoder is in the train fingerprint, so it must also decide which vectors train uses."""
    from slim.recsys import itemtext as T

    (tmp_path / "encode").mkdir()
    enc = tmp_path / "encode" / "items.npy"
    np.save(enc, np.zeros((4, 8), np.float16))
    assert T.item_text_path(tmp_path, "all-MiniLM-L6-v2") != enc  # no manifest: a killed encode stage
    (tmp_path / "encode" / "manifest.json").write_text(json.dumps({"config": {"model": "all-MiniLM-L6-v2"}}))
    assert T.item_text_path(tmp_path, "all-minilm-l6-v2") == enc
    assert T.fingerprint(tmp_path, "all-MiniLM-L6-v2") == content_fingerprint(enc)
    other = T.item_text_path(tmp_path, "BAAI/bge-small-en-v1.5")
    assert other != enc and other.name == "item_text_BAAI_bge-small-en-v1.5.npy"
    assert T.fingerprint(tmp_path, "BAAI/bge-small-en-v1.5") == "missing"


def test_submit_usage_run_dir_is_accepted(monkeypatch):
    usage = [ln for ln in (ROOT / "cluster" / "submit.sh").read_text().splitlines() if "run_dir=" in ln]
    dirs = [m for ln in usage for m in re.findall(r"run_dir=(\S+)", ln)]
    assert dirs
    # the refusal of a relative run_dir only fires in a submitted job's driver: be one
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")
    with pytest.raises(config.ConfigError, match="run_dir 'runs/x' is relative"):
        pipeline.prepare(config.load_raw(CONFIGS[0], ["run_dir=runs/x"]))
    for d in dirs:
        pipeline.prepare(config.load_raw(CONFIGS[0], [f"run_dir={d}"]))  # the usage's own run_dir is accepted


def test_training_fanout_runs_at_most_one_run_per_core(tmp_path, ray_local):
    """The local cluster declares more logical CPUs than cores; single-threaded runs must not share a core."""
    from dataclasses import replace

    from slim.runner import check
    from slim.data import DataConfig
    from slim.data import stage as prepare
    from slim.evaluate import stage as evaluate
    from slim.train import stage as job

    src = write_seqrec(tmp_path / "src", 300, 150, mean_len=12)
    data = DataConfig(run_dir=str(tmp_path), source="amazon2018-games", path=str(src))
    prepare.run(data)
    seeds = tuple(range(2 * (os.cpu_count() or 1)))
    train = job.TrainConfig(run_dir=str(tmp_path), backbones=("gru4rec",), variants=("id",), seeds=seeds,
                            hidden=64, max_len=20, epochs=4, patience=4, batch_size=32, test_protocols=("uni100",),
                            cpus_per_run=1.0, threads_per_run=1)
    job.run(train)
    ev = evaluate.EvaluateConfig(run_dir=str(tmp_path), protocols=("uni100",))
    evaluate.run(ev)
    # --check's plan agrees with the stages' own skip logic, and names what changed
    stages = ["data", "train", "evaluate"]
    lines, problems = check.plan({"data": data, "train": train, "evaluate": ev}, stages, [])
    assert [ln.split()[1] for ln in lines if not ln.startswith(" ")] == ["skip"] * 3 and not problems
    lines, _ = check.plan({"data": data, "train": replace(train, epochs=5), "evaluate": ev}, stages, [])
    assert "config changed: train.epochs" in lines[-2] and "after train" in lines[-1]
    lines, _ = check.plan({"data": data, "train": train, "evaluate": replace(ev, split="valid")}, stages, [])
    assert "skip" in lines[-2] and "config changed: evaluate.split" in lines[-1]
    spans = []
    for s in seeds:
        p = tmp_path / "models" / f"gru4rec-id-bce-s{s}" / "metrics.json"
        end = p.stat().st_mtime
        spans.append((end - json.loads(p.read_text())["wall_seconds"], end))
    overlap = max(sum(a <= t < b for a, b in spans) for t, _ in spans)
    assert 1 <= overlap <= (os.cpu_count() or 1), spans
