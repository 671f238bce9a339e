"""Portable run directories (issues 39.5 and 42.3): fingerprints by content, so a run directory copied with new
modification times (`cp -r`), synced to a bucket and back, or restored stays current in every stage, while a changed
byte still makes its downstream stages stale; and paths in manifests that mean the same from any working directory.

The run directory: the real data, train and evaluate stages on generated data (seconds), made once for the module
and copied by each test."""

import os
import shutil
import time
from dataclasses import replace
from pathlib import Path

import pytest

from slim.io import columns as C
from slim.io import storage
from slim.io.rundir import Manifest, RunDir, fingerprint
from slim.testing.sources import write_seqrec
from tests.io.test_storage import s3, s3_endpoint  # noqa: F401 (fixtures: moto's server on 127.0.0.1, a fresh bucket)

STAGES = ["data", "train", "evaluate"]


@pytest.fixture(scope="module")
def made(tmp_path_factory, ray_local):
    """-> (run directory, stage configs) after data -> train -> evaluate."""
    from slim.data import DataConfig
    from slim.data import stage as prepare
    from slim.evaluate import stage as evaluate
    from slim.train import stage as train

    tmp = tmp_path_factory.mktemp("portable")
    src, run = write_seqrec(tmp / "src", 120, 150, mean_len=8), tmp / "run"
    cfgs = {"data": DataConfig(run_dir=str(run), source="amazon2018-games", path=str(src)),
            "train": train.TrainConfig(run_dir=str(run), backbones=("gru4rec",), variants=("id",), seeds=(0,),
                                       hidden=16, max_len=10, epochs=1, patience=1, batch_size=64,
                                       test_protocols=("uni100",), cpus_per_run=1.0, threads_per_run=1),
            "evaluate": evaluate.EvaluateConfig(run_dir=str(run), protocols=("uni100",))}
    prepare.run(cfgs["data"])
    train.run(cfgs["train"])
    evaluate.run(cfgs["evaluate"])
    return run, cfgs


def plan(cfgs: dict, run_dir) -> dict:
    """stage -> its --check line, for the run directory `run_dir`."""
    from slim.runner import check

    lines, problems = check.plan({k: replace(c, run_dir=str(run_dir)) for k, c in cfgs.items()}, STAGES, [])
    assert not problems, problems
    return {ln.split()[0]: ln for ln in lines if not ln.startswith(" ")}


def copy_like_cp_r(src: Path, dst: Path) -> Path:
    """`cp -r`: bytes copied, times not; every file then set to a time an hour later, to be sure."""
    shutil.copytree(src, dst, copy_function=shutil.copy)
    later = time.time() + 3600
    for f in dst.rglob("*"):
        os.utime(f, (later, later))
    return dst


def skipped(rows: dict) -> bool:
    return all(" skip " in rows[s] for s in STAGES)


def test_copied_run_dir_is_current_in_every_stage(made, tmp_path):
    run, cfgs = made
    assert skipped(plan(cfgs, run))
    copy = copy_like_cp_r(run, tmp_path / "copy")
    assert all(RunDir(copy).read_manifest(s).digests for s in STAGES)  # written once, by each stage
    rows = plan(cfgs, copy)
    assert skipped(rows), rows
    # the stages' own skip logic agrees with the plan: nothing is rerun
    from slim.evaluate import stage as evaluate
    from slim.train import stage as train

    before = RunDir(copy).read_manifest("train").created
    assert train.run(replace(cfgs["train"], run_dir=str(copy))).created == before
    assert evaluate.run(replace(cfgs["evaluate"], run_dir=str(copy))).created == RunDir(run).read_manifest(
        "evaluate").created


def test_one_changed_byte_makes_downstream_stale(made, tmp_path):
    """The signal the mechanism must find: the same copy with one byte of an upstream output changed (same size;
    its time no different from every other file's in the copy) makes the stage that reads it, and the ones after,
    run; the upstream stage itself stays current (nothing of its own inputs changed)."""
    run, cfgs = made
    copy = copy_like_cp_r(run, tmp_path / "copy")
    f = copy / C.ITEMS_FILE
    blob = bytearray(f.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    st = f.stat()
    f.write_bytes(bytes(blob))
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))  # the time every file of the copy has
    rows = plan(cfgs, copy)
    assert " skip " in rows["data"]
    assert "RUN" in rows["train"] and "inputs changed: data" in rows["train"], rows
    assert "after train" in rows["evaluate"]


def test_synced_to_a_bucket_and_back_is_current(made, s3, tmp_path):  # noqa: F811 (fixture)
    """Checked directly on the bucket copy, and on a local copy downloaded from it (new times everywhere)."""
    run, cfgs = made
    uri, _ = s3
    storage.upload(run, uri)
    assert skipped(plan(cfgs, uri)), plan(cfgs, uri)
    back = storage.download(uri, tmp_path / "back")
    rows = plan(cfgs, back)
    assert skipped(rows), rows


def _old_form(rd: RunDir, stage: str) -> str:
    """An upstream fingerprint as run directories recorded it before content fingerprints (name, size and time of
    each output file; a folder's manifest included), computed here independently of slim.io.rundir."""
    def old(p: Path) -> str:
        if p.is_dir():
            return fingerprint([old(f) for f in sorted(p.rglob("*")) if f.is_file()])
        st = p.stat()
        return fingerprint([p.name, st.st_size, st.st_mtime_ns])

    m = rd.read_manifest(stage)
    return fingerprint({"key": m.key(), "counts": m.counts,
                        "outputs": {o: old(rd.root / o) if (rd.root / o).exists() else "missing" for o in m.outputs}})


def test_run_dir_made_before_content_fingerprints_stays_current_until_moved(made, tmp_path):
    """Migration: a downstream manifest holding the old form of its upstream's fingerprint is current while the files
    are where and as they were (no rerun after the upgrade); once they are copied with new times it runs."""
    run, cfgs = made
    old = tmp_path / "old"
    shutil.copytree(run, old)  # copy2: times kept, as the same directory before and after an upgrade
    rd = RunDir(old)
    m = rd.read_manifest("train")
    m.inputs = {**m.inputs, "data": _old_form(rd, "data")}
    assert m.inputs["data"] != rd.upstream("data")
    rd.write_manifest(m)
    em = rd.read_manifest("evaluate")
    em.inputs = {**em.inputs, "train": rd.upstream("train")}  # the train manifest it reads was rewritten above
    rd.write_manifest(em)
    assert skipped(plan(cfgs, old)), plan(cfgs, old)
    rows = plan(cfgs, copy_like_cp_r(old, tmp_path / "moved"))
    assert "inputs changed: data" in rows["train"], rows


def test_migrate_rewrites_old_form_fingerprints_so_a_copy_stays_current(made, tmp_path):
    """`jobs/migrate.py` on such a run directory: the old-form fingerprints that hold are rewritten in the content
    form (and the manifests that read the rewritten ones after them), so a copy made afterwards is current; one that
    did not hold stays stale."""
    from slim.runner import migrate

    run, cfgs = made
    old = tmp_path / "old"
    shutil.copytree(run, old)
    rd = RunDir(old)
    m = rd.read_manifest("train")
    m.inputs = {**m.inputs, "data": _old_form(rd, "data")}
    rd.write_manifest(m)
    em = rd.read_manifest("evaluate")
    em.inputs = {**em.inputs, "train": rd.upstream("train")}
    rd.write_manifest(em)
    assert migrate.migrate(old, dry_run=True)["manifests"] == ["train (content fingerprints)",
                                                                "evaluate (content fingerprints)"]
    assert rd.read_manifest("train").inputs["data"] == m.inputs["data"]  # a dry run changes nothing
    res = migrate.migrate(old)
    assert res["note"] == "done" and len(res["manifests"]) == 2
    assert rd.read_manifest("train").inputs["data"] == rd.upstream("data")
    assert skipped(plan(cfgs, old)) and skipped(plan(cfgs, copy_like_cp_r(old, tmp_path / "moved")))
    assert migrate.migrate(old)["note"] == "already current"
    # a fingerprint that no longer held is not made current by the rewrite
    stale = tmp_path / "stale"
    shutil.copytree(run, stale)
    rs = RunDir(stale)
    m = rs.read_manifest("train")
    m.inputs = {**m.inputs, "data": "0123456789abcdef"}
    rs.write_manifest(m)
    assert migrate.migrate(stale)["note"] == "already current"
    assert "inputs changed: data" in plan(cfgs, stale)["train"]


def test_manifest_paths_mean_the_same_from_any_working_directory(tmp_path, monkeypatch):
    """The student stage run with a relative run_dir in one working directory; its manifest read, and the evaluate
    label computed, from another (as a job submitted with `ray job submit` runs in a copy of the working directory)."""
    from slim.evaluate.stage import student_model
    from slim.student import engines
    from slim.student.stage import stored_model

    def checkpoint(d: Path) -> Path:  # what engines.is_model takes for a merged student
        d.mkdir(parents=True)
        (d / "config.json").write_text("{}")
        (d / "model.safetensors").write_bytes(b"weights")
        return d

    (tmp_path / "a").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    checkpoint(Path("runs/tiny") / C.STUDENT_MERGED)
    other = checkpoint(tmp_path / "elsewhere" / "distill" / "merged").parent
    for adapter, cross in (("auto", False), (str(other), True)):
        rd = RunDir("runs/tiny")
        _, info = engines.resolve_model("runs/tiny", adapter, "base", Path("cache"))
        rd.write_manifest(Manifest("student", {}, extra={"model": stored_model(rd, info)}))
        stored = rd.read_manifest("student").extra["model"]["path"]
        assert stored == (C.STUDENT_MERGED if not cross else str(other / "merged"))
        monkeypatch.chdir(tmp_path)  # elsewhere, with the absolute run directory a submitted job must be given
        got = student_model(RunDir(tmp_path / "a" / "runs" / "tiny"))
        assert got["cross_domain"] is cross, got
        assert RunDir(tmp_path / "a" / "runs" / "tiny").resolve(stored).is_dir()
        monkeypatch.chdir(tmp_path / "a")
    # a manifest written before: the path relative to the stage's working directory
    rd = RunDir(tmp_path / "a" / "runs" / "tiny")
    for old, cross in (("runs/tiny/distill/merged", False), ("runs/other/distill/merged", True)):
        rd.write_manifest(Manifest("student", {}, extra={"model": {"kind": "merged", "path": old}}))
        monkeypatch.chdir(tmp_path)
        assert student_model(rd)["cross_domain"] is cross, old


def test_scratch_and_bookkeeping_files_are_not_content(tmp_path, monkeypatch):
    """A stage's output folder: files whose names Parquet readers skip ("_", "." at any depth: the student's merged
    model cache and shard state, a killed writer's temporary file) leave its fingerprint as it was; a new shard not."""
    monkeypatch.setenv("SLIM_SCRATCH", str(tmp_path / "scratch"))
    rd = RunDir(tmp_path / "run")
    out = rd.stage_dir("student")
    (out / "part-0.parquet").write_bytes(b"rows")
    rd.write_manifest(Manifest("student", {}, outputs=["student"]))
    before = rd.upstream("student")
    (out / "_merged-abc").mkdir()
    (out / "_merged-abc" / "model.safetensors").write_bytes(b"weights")
    (out / "_state.json").write_text("{}")
    (out / ".tmp-part-1.parquet").write_bytes(b"half")
    assert rd.upstream("student") == before
    (out / "part-1.parquet").write_bytes(b"more rows")
    assert rd.upstream("student") != before


def test_paths_stored_for_a_bucket_run_dir(s3, tmp_path):  # noqa: F811 (fixture)
    """On a bucket run directory: its own objects relative to it, a local path (the merge kept off the bucket)
    absolute, another bucket's URI as is; and back."""
    uri, _ = s3
    rd = RunDir(uri)
    assert rd.stored(f"{uri}/{C.STUDENT_ADAPTER}") == C.STUDENT_ADAPTER
    assert rd.stored(tmp_path / "merged") == str(tmp_path / "merged")
    assert rd.stored("s3://elsewhere/run/distill/adapter") == "s3://elsewhere/run/distill/adapter"
    assert str(rd.resolve(C.STUDENT_ADAPTER)) == f"{uri}/{C.STUDENT_ADAPTER}"
    assert rd.resolve(str(tmp_path / "merged")) == tmp_path / "merged"
