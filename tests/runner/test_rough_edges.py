"""A new user's rough edges (issue 42, item 7): --check and a plain run agree on the stages a config runs, and one
--force grammar in every job."""

import json
import re
from pathlib import Path

import pytest

from slim.runner import cli
from slim.testing.sources import write_seqrec

ROOT = Path(__file__).resolve().parents[2]
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
    capsys.readouterr()
    assert cli.main_pipeline([*base, "--stages", "data", "--force", "train"]) == 2  # not a stage it runs: refused
    assert "--force train: not among the stages this command runs (data)" in capsys.readouterr().err
    assert _created(run) == last  # nothing rerun
    assert cli.main_stage("data", [*base, "--force", "train"]) == 2
    assert "--force train: jobs/data.py runs data only" in capsys.readouterr().err
    assert cli.main_stage("data", [*base, "--force", "dta"]) == 2
    assert "--force: unknown stage(s) dta" in capsys.readouterr().err
    assert _created(run) == last  # a refused command wrote nothing


def test_scale_line_labels_its_rate():
    from slim.recsys.summary import scale_line

    line = scale_line("train", 12_000, "training targets (all runs and epochs)", 4.0)
    assert line.startswith("[train] 12,000 training targets (all runs and epochs) in 4.0s, 3,000 per second; ")


class _Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_train_eta_counts_epochs_and_does_not_jump_when_runs_finish_in_pairs():
    """Four runs of 3 epochs of 10 s, two at a time: after every epoch the ETA is the true time left (the old ETA,
    finished runs / elapsed, said nothing until the first pair finished and then jumped)."""
    import io

    from slim.runtime.console import Progress
    from slim.train.progress import EpochBoard

    clock, stream = _Clock(), io.StringIO()
    runs = ["gru4rec-id-bce-s0", "gru4rec-id-bce-s1", "sasrec-id-bce-s0", "sasrec-id-bce-s1"]
    board = EpochBoard(runs, 3, Progress("train", 4, "runs", every_s=30.0, stream=stream, clock=clock), clock)
    assert board.eta_s() is None and board.line() == "train: 0/4 runs done"
    for pair, start in ((runs[:2], 0), (runs[2:], 30)):
        for e in range(3):
            clock.t = start + 10 * (e + 1)
            for run in pair:
                board.epoch({"run": run, "epoch": e, "valid_ndcg10": 1.5 + e, "seconds": 10.0})
            assert board.eta_s() == pytest.approx(60 - clock.t), clock.t  # work left / 2 at a time
        for run in pair:
            board.finished(run, 3)
    lines = stream.getvalue().splitlines()
    # off a terminal: the first epoch at once, then at most every 30 s, and the last
    assert lines[0] == ("train: 0/4 runs done; gru4rec-id-bce-s0 epoch 1/3, valid NDCG@10 1.50; ETA 1m50s "
                        "(11 epochs left at ~10s each, 1 at a time)")  # one run seen so far: one at a time, till the next reports
    assert len(lines) <= 4 and lines[-1] == "train: 4/4 runs done in 1m00s"


def test_train_eta_expects_as_many_epochs_as_finished_runs_took():
    """Early stopping: once runs finished after 2 of 10 epochs, the ones still to run are expected to take 2."""
    from slim.runtime.console import Progress
    from slim.train.progress import EpochBoard

    import io

    clock = _Clock()
    board = EpochBoard(["a", "b", "c"], 10, Progress("train", 3, "runs", stream=io.StringIO(), clock=clock), clock)
    for e in range(2):
        board.epoch({"run": "a", "epoch": e, "valid_ndcg10": 1.0, "seconds": 5.0})
    assert board.eta_s() == pytest.approx((8 + 10 + 10) * 5.0)
    board.finished("a", 2)
    assert board.eta_s() == pytest.approx((2 + 2) * 5.0)
    board.epoch({"run": "b", "epoch": 2, "valid_ndcg10": 1.0, "seconds": 5.0})  # b goes on past 2: one more at least
    assert board.left("b") == 1.0 and board.eta_s() == pytest.approx((1 + 2) * 5.0)


STATUS = """2026-12-07 17:19:51,147\tINFO autoscaler.py:147 -- The autoscaler took 0.0 seconds to fetch the list of non-terminated nodes.
2026-12-07 17:19:51,147\tINFO autoscaler.py:408 -- 
======== Autoscaler status: 2026-12-07 17:19:51.147591 ========
Node status
---------------------------------------------------------------
Pending Demands:
 {'CPU': 1.0}: 2+ pending tasks/actors
2026-12-07 17:19:51,168\tINFO autoscaler.py:469 -- The autoscaler took 0.021 seconds to complete the update iteration.
""".splitlines()


def test_autoscaler_status_blocks_at_most_once_a_minute_warnings_and_events_always():
    """Ray's monitor log as the worker-output dispatcher hands it over (pid "autoscaler"), every 5 s for 3 minutes:
    three status blocks kept (one a minute), the routine INFO records none, warnings and events each time."""
    from slim.runtime.console import AutoscalerLines

    clock = _Clock()
    f = AutoscalerLines(every_s=60.0, clock=clock)
    kept = []
    for i in range(36):
        clock.t = 5.0 * i
        extra = ["2026-12-07 17:20:00,001\tWARNING autoscaler.py:1 -- planted warning",
                 "2026-12-07 17:20:00,002\tINFO monitor.py:1 -- :event_summary:Adding 1 node(s)"] if i == 7 else []
        kept += f.keep(STATUS[:4])  # a block may arrive split over two batches
        kept += f.keep(STATUS[4:] + extra)
    assert sum(x.startswith("======== Autoscaler status") for x in kept) == 3
    assert kept.count(" {'CPU': 1.0}: 2+ pending tasks/actors") == 3  # the kept blocks are whole
    assert not any("took 0.0" in x or "took 0.021" in x for x in kept)
    assert any("planted warning" in x for x in kept) and any(":event_summary:Adding" in x for x in kept)


LINE = re.compile(r"^train: (\d)/4 runs done; (\S+) epoch (\d)/3, valid NDCG@10 ([\d.]+); ETA (\d+)m(\d\d)s "
                  r"\((\d+) epochs? left at ~([\d.]+)s each, (\d) at a time\)$", re.M)


def test_train_job_console_shows_epochs_and_its_stage_log_no_autoscaler_dumps(tmp_path):
    """jobs/train.py on four tiny runs, as a user runs it (off a terminal, a line at most every
    SLIM_PROGRESS_EVERY_S=0 s): the console has per-epoch lines naming the run and its validation figure with an
    ETA in epochs, and the stage log keeps every epoch but at most one autoscaler status block a minute (Ray's
    monitor writes one every 5 s)."""
    import os
    import subprocess
    import sys
    import time

    import yaml

    from slim.testing import planted as G

    G.write(tmp_path)
    runs = {f"{b}-id-bce-s{s}" for b in ("gru4rec", "sasrec") for s in (0, 1)}
    cfg = {"run_dir": str(tmp_path), "num_cpus": 4,
           "train": {"backbones": ["gru4rec", "sasrec"], "variants": ["id"], "seeds": [0, 1], "epochs": 3,
                     "patience": 3, "hidden": 16, "max_len": 10, "batch_size": 64, "lr": 0.005,
                     "test_protocols": ["uni100"]}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "SLIM_VERBOSE"))}
    env.update(PYTHONPATH=str(ROOT), RAY_AUTH_MODE="disabled", SLIM_PROGRESS_EVERY_S="0")
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "jobs/train.py", "--config", str(tmp_path / "c.yaml")], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
    took = time.monotonic() - t0
    assert r.returncode == 0, r.stderr[-3000:]
    lines = LINE.findall(r.stdout + r.stderr)
    assert len(lines) >= 6, r.stdout + r.stderr  # 12 epochs; two reported in one drain may share a line
    assert {x[1] for x in lines} == runs  # every run's epochs reach the console
    assert all(0 <= float(x[3]) <= 100 for x in lines)
    left = [int(x[6]) for x in lines]
    assert left[0] == 11 and left == sorted(left, reverse=True), left  # 4 runs x 3 epochs - 1, counting down
    assert "train: 4/4 runs done in " in r.stdout + r.stderr
    log = (tmp_path / "logs" / "train.log").read_text()
    assert sum(f"[train] {run} epoch" in log for run in runs) == 4  # the detail stays in the stage log
    blocks = log.count("======== Autoscaler status")
    assert blocks <= 1 + took // 60, (blocks, took)
    assert "The autoscaler took" not in log  # its routine INFO records every 5 s
