"""Run directories from before 0.2 (student/ = distill's, rationales/ = the student's, embeddings/ = encode's): every
stage refuses them with the command that migrates them, and `jobs/migrate.py` moves them to one folder per stage so
that `--check` (the stages' own skip logic) says skip wherever it did before, locally and on a bucket, also after a
kill midway. A stage that was stale before stays stale.

The old layout is written here the way 0.1 wrote it (its folder names, manifest stage names and input keys) with the
real configs of configs/tiny.yaml; the files are placeholders, since only names, sizes and times are fingerprinted."""

import dataclasses
import io
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from slim.runner import check
from slim.runtime import config
from slim.runner import migrate
from slim.runner import pipeline
from slim.runner import stages
from slim.io import storage
from slim.runtime.config import ConfigError
from slim.io.rundir import Manifest, RunDir, content_fingerprint, file_fingerprint
from tests.io.test_storage import root, s3, s3_endpoint  # noqa: F401 (fixtures: the same test on a bucket)

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "tiny.yaml"
SMALL = ["train.backbones=[sasrec]", "train.seeds=[0]", "train.losses=[ce]", "train.variants=[id,id_text,slim]",
         "train.rationale_positions=[all]", "encode.sources=[student,teacher]"]
STAGES = ["data", "teacher", "distill", "student", "encode", "train", "evaluate"]


def _cfgs(run_dir: str) -> dict:
    return stages.load_all(config.load_raw(TINY, [f"run_dir={run_dir}", *SMALL]))


def put(rd: RunDir, rel: str, data: bytes = b"x") -> None:
    p = rd.root / rel
    p.parent.mkdir(parents=True, exist_ok=True)  # nothing to do on a bucket
    p.write_bytes(data)


def write_old_layout(run_dir: str, stale_encode: bool = False) -> list:
    """A finished run directory as 0.1 left it. -> the train runs' specs."""
    from slim.data import stage as prepare
    from slim.encode.stage import stage_config as encode_conf
    from slim.distill import stage as distill
    from slim.student import stage as generate
    from slim.teacher import stage as teacher

    cfgs, rd = _cfgs(run_dir), RunDir(run_dir)
    put(rd, "data/users.parquet")
    rd.write_manifest(Manifest("data", prepare.stage_config(cfgs["data"]), prepare._inputs(cfgs["data"]),
                               outputs=["data/users.parquet"], counts={"users": 3}))
    put(rd, "teacher/rationales/part-0.parquet")
    rd.write_manifest(Manifest("teacher", teacher.stage_config(cfgs["teacher"]), {"data": rd.upstream("data")},
                               outputs=["teacher/rationales"]))
    put(rd, "student/adapter/adapter_config.json", b"{}")
    put(rd, "student/adapter/adapter_model.safetensors", b"weights")
    rd.write_manifest(Manifest("student", distill.stage_config(cfgs["distill"]),
                               {"data": rd.upstream("data"), "teacher": rd.upstream("teacher")},
                               outputs=["student/adapter"]))
    adapter = str(rd.root / "student" / "adapter")
    fp = file_fingerprint(adapter)
    put(rd, "rationales/part-0.parquet")
    sm = Manifest("rationales", generate.stage_config(cfgs["student"]), {"data": rd.upstream("data"), "model": fp},
                  outputs=["rationales"], counts={"users": 3},
                  extra={"model": {"kind": "adapter", "path": adapter, "fingerprint": fp,
                                   "merged_into": str(rd.root / "rationales" / f"_merged-{fp}")}})
    put(rd, "rationales/_state.json", json.dumps({"key": sm.key()}).encode())
    rd.write_manifest(sm)
    buf = io.BytesIO()
    np.save(buf, np.ones((5, 4), np.float16))
    put(rd, "embeddings/items.npy", buf.getvalue())
    put(rd, "embeddings/users_rationale.parquet")
    ups = {"data": rd.upstream("data"), "rationales": rd.upstream("rationales"), "teacher": rd.upstream("teacher")}
    if stale_encode:
        ups["rationales"] = "written-from-older-rationales"
    rd.write_manifest(Manifest("embeddings", encode_conf(cfgs["encode"]), ups,
                               outputs=["embeddings/items.npy", "embeddings/users_rationale.parquet"]))
    return _old_train(rd, cfgs)


def _old_train(rd: RunDir, cfgs: dict) -> list:
    import torch

    from slim.train import stage as job

    tcfg = cfgs["train"]
    specs = job.specs(tcfg, {("slim", "whole"): 4})
    inputs = {"data": rd.upstream("data"), "item_text": content_fingerprint(rd.root / "embeddings/items.npy"),
              "embeddings": rd.upstream("embeddings")}
    for s in specs:
        buf = io.BytesIO()
        torch.save({"spec": dataclasses.asdict(s), "num_items": 4, "state_dict": {}}, buf)
        put(rd, f"models/{s.name}/model.pt", buf.getvalue())
        put(rd, f"models/{s.name}/metrics.json", json.dumps({"run": s.name, "fingerprint": "as 0.1 did"}).encode())
    rd.write_manifest(Manifest("train", job.stage_config(tcfg), inputs, outputs=[f"models/{s.name}" for s in specs]))
    ev = cfgs["evaluate"]
    put(rd, "reports/results.md", b"report")
    rd.write_manifest(Manifest("evaluate", {"protocols": list(ev.protocols), "split": ev.split},
                               {"train": rd.upstream("train")}, outputs=["reports/results.md"]))
    return specs


def plan_rows(run_dir: str) -> dict:
    cfgs, wanted = pipeline.prepare(config.load_raw(TINY, [f"run_dir={run_dir}", *SMALL]), STAGES)
    lines, _ = check.plan(cfgs, wanted, [])
    return {ln.split()[0]: ln for ln in lines if not ln.startswith(" ") and ln.split()[0] in STAGES}


def files(run_dir: str) -> set:
    r = storage.path(run_dir)
    return {str(p)[len(str(r)):] for p in r.rglob("*") if p.is_file()}


def test_old_layout_refused_then_migrated_with_nothing_to_rerun(root):  # noqa: F811 (fixture)
    from slim.train import stage as job
    from slim.recsys.checkpoint import is_done

    specs = write_old_layout(root)
    with pytest.raises(ConfigError, match=r"older version \(student/, rationales/, embeddings/.*"
                                          r"run `python jobs/migrate\.py .*` once"):
        pipeline.prepare(config.load_raw(TINY, [f"run_dir={root}", *SMALL]), ["train"])
    before = files(root)
    res = migrate.migrate(root, dry_run=True)
    assert res["moved"] == ["student/ -> distill/", "rationales/ -> student/", "embeddings/ -> encode/"]
    assert files(root) == before  # a dry run changes nothing

    res = migrate.migrate(root)
    assert res["train_runs"] == len(specs) and len(res["manifests"]) == 7
    after = files(root)
    moved = {re.sub(r"^/(student|rationales|embeddings)/", lambda m: f"/{migrate.NEW[m[1]]}/", f) for f in before}
    assert after == moved  # every file kept, under its new folder; no plan file left
    rows = plan_rows(root)
    assert all(" skip " in rows[s] for s in STAGES), rows  # the stages' own skip logic: nothing reruns
    cfgs, rd = _cfgs(root), RunDir(root)
    inputs = rd.read_manifest("train").inputs
    assert set(inputs) == {"data", "item_text", "encode"} and set(rd.read_manifest("encode").inputs) == {
        "data", "student", "teacher"}
    assert all(is_done(rd.root / "models" / s.name, job.run_fingerprint(s, inputs, cfgs["train"])) for s in specs)
    st = rd.read_manifest("student")
    assert st.extra["model"]["path"].endswith("/distill/adapter") and "/student/_merged-" in st.extra["model"][
        "merged_into"]
    assert json.loads((rd.root / "student" / "_state.json").read_text())["key"] == st.key()
    assert migrate.migrate(root)["note"] == "already current"  # idempotent


def test_a_migration_stopped_midway_is_finished_by_the_same_command(tmp_path, monkeypatch):
    run = str(tmp_path / "run")
    write_old_layout(run)
    real, calls = storage.move_tree, []

    def killed_on_second(src, dst):
        calls.append(src)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        real(src, dst)

    monkeypatch.setattr(storage, "move_tree", killed_on_second)
    with pytest.raises(KeyboardInterrupt):
        migrate.migrate(run)
    assert (tmp_path / "run" / "distill").is_dir() and (tmp_path / "run" / migrate.PLAN_FILE).exists()
    with pytest.raises(ConfigError, match="midway through a migration; run `python jobs/migrate.py"):
        migrate.refuse_old_layout(run)
    monkeypatch.setattr(storage, "move_tree", real)
    assert migrate.migrate(run)["note"] == "done"
    assert all(" skip " in ln for ln in plan_rows(run).values())


def test_a_stage_stale_before_the_migration_stays_stale(tmp_path):
    run = str(tmp_path / "run")
    write_old_layout(run, stale_encode=True)
    migrate.migrate(run)
    rows = plan_rows(run)
    assert all(" skip " in rows[s] for s in ("data", "teacher", "distill", "student")), rows
    assert re.search(r"encode +RUN +inputs changed: student", rows["encode"]), rows["encode"]
    assert "after encode" in rows["train"] and "after train" in rows["evaluate"]


def test_the_job_script_migrates_and_says_what_it_did(tmp_path):
    import subprocess
    import sys

    run = str(tmp_path / "run")
    write_old_layout(run)
    r = subprocess.run([sys.executable, "jobs/explain.py", "--config", str(TINY), "--user", "1", f"run_dir={run}"],
                       cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 2 and re.search(r"^config error: .* run `python jobs/migrate\.py .*` once", r.stderr, re.M)
    r = subprocess.run([sys.executable, "jobs/migrate.py", run], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "moved rationales/ -> student/" in r.stdout and "train runs re-fingerprinted: 3" in r.stdout
    r = subprocess.run([sys.executable, "jobs/migrate.py", str(tmp_path / "nothing-here")], cwd=ROOT,
                       capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0 and "already current" in r.stdout
