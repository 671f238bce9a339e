"""MLflow tracking (slim.runtime.tracking) against a real `mlflow server` with a sqlite store on 127.0.0.1: a tiny
train + evaluate with `tracking:` on leaves one MLflow run per trained model (spec params, per-epoch validation,
test metrics under every protocol, the model folder) and the report as artifacts; with tracking off, or the server
down, the stages run as before and nothing is logged."""

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from slim.runner import stages
from slim.runtime import tracking
from tests.stages.test_recsys import _write_run
from tests.support.ports import free_port

mlflow = pytest.importorskip("mlflow", reason="mlflow (the dev extra) is not installed: run `make env`")

# two runs, ID-only (no sentence encoder to load), three epochs each: a history of three points per run
TRAIN = {"backbones": ["gru4rec", "sasrec"], "variants": ["id"], "seeds": [0], "hidden": 16, "max_len": 8,
         "epochs": 3, "patience": 3, "batch_size": 64, "lr": 5e-3}


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """`mlflow server` with a sqlite backend store and a local artifacts folder, on 127.0.0.1 only."""
    root, port = tmp_path_factory.mktemp("mlflow"), free_port()
    exe = Path(sys.executable).parent / "mlflow"
    log = open(root / "server.log", "w")
    proc = subprocess.Popen([str(exe), "server", "--backend-store-uri", f"sqlite:///{root}/mlflow.db",
                             "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1",
                             "--port", str(port), "--workers", "1"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})  # no job workers
    url, deadline = f"http://127.0.0.1:{port}", time.time() + 240  # ~45 s to start on a loaded 2-core machine
    while True:
        try:
            if urllib.request.urlopen(f"{url}/health", timeout=5).status == 200:
                break
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"mlflow server did not start: {(root / 'server.log').read_text()[-2000:]}")
        time.sleep(1)
    yield url
    os.killpg(proc.pid, signal.SIGTERM)  # its own session: the server and its workers, nothing else
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # whatever of its session is still there
    proc.wait()
    log.close()


def run_stages(run_dir, tracking_section, names=("train", "evaluate"), train=None):
    """The stages as jobs run them: the top-level `tracking:` reaches train and evaluate through the config."""
    raw = {"run_dir": str(run_dir), "train": {**TRAIN, **(train or {})}, "evaluate": {"protocols": ["uni100", "full"]}}
    if tracking_section is not None:
        raw["tracking"] = tracking_section
    cfgs = stages.load_all(raw)
    for name in names:
        stages.run(name, cfgs[name])
    return cfgs


def records(run_dir) -> dict:
    return {p.parent.name: json.loads(p.read_text()) for p in (Path(run_dir) / "models").glob("*/metrics.json")}


def test_train_and_evaluate_are_tracked(tmp_path, mlflow_server, ray_local):
    run_dir = tmp_path / "run"
    _write_run(run_dir)
    cfgs = run_stages(run_dir, {"mlflow_uri": mlflow_server})
    assert cfgs["train"].tracking.mlflow_uri == mlflow_server and "tracking" not in stages.face(
        "train").stage_config(cfgs["train"])  # where the numbers go is not what they are: no fingerprint change
    client = mlflow.tracking.MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name(os.path.abspath(run_dir))  # one experiment per run directory
    assert exp is not None
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    recs = records(run_dir)
    assert set(recs) == {"gru4rec-id-bce-s0", "sasrec-id-bce-s0"}
    assert set(runs) == set(recs) | {"evaluate"}
    for name, rec in recs.items():
        r = runs[name]
        assert r.info.status == "FINISHED" and r.data.tags["stage"] == "train"
        p = r.data.params
        assert (p["backbone"], p["variant"], p["loss"], p["seed"]) == (name.split("-")[0], "id", "bce", "0")
        assert (float(p["lr"]), int(p["hidden"]), int(p["epochs"]), p["valid_protocol"]) == (5e-3, 16, 3, "full")
        assert "backbone_cfg.dropout" in p  # the backbone's own section, flattened
        assert r.data.tags["model_dir"] == str(run_dir / "models" / name)
        hist = client.get_metric_history(r.info.run_id, "valid_NDCG10")
        assert [(m.step, round(m.value, 6)) for m in sorted(hist, key=lambda m: m.step)] == [
            (h["epoch"], round(h["valid_ndcg10"], 6)) for h in rec["history"]]
        assert len(client.get_metric_history(r.info.run_id, "loss")) == rec["epochs_run"] == 3
        for protocol in ("uni100", "pop100", "full"):  # train.test_protocols: every one
            for metric, value in rec["test"][protocol].items():
                assert r.data.metrics[f"test.{protocol}.{metric.replace('@', '')}"] == pytest.approx(value)
        assert r.data.metrics["valid.full.NDCG10"] == pytest.approx(rec["valid"]["full"]["NDCG@10"])
    ev = runs["evaluate"]
    names = {f.path for f in client.list_artifacts(ev.info.run_id)}
    assert {"results.md", "results.json", "plots"} <= names
    plots = {Path(f.path).name for f in client.list_artifacts(ev.info.run_id, "plots")}
    assert plots == {p.name for p in (run_dir / "reports" / "plots").iterdir()} and "ndcg10_uni100_bce.png" in plots
    got = mlflow.artifacts.download_artifacts(run_id=ev.info.run_id, artifact_path="results.md",
                                              dst_path=str(tmp_path / "dl"), tracking_uri=mlflow_server)
    assert Path(got).read_text() == (run_dir / "reports" / "results.md").read_text()

    # the teacher's tokens and cost (the mapping slim.teacher.stage._finish writes to teacher/cost.json), as metrics
    cost = {"model": "gpt-4o-mini", "mode": "online", "users": 3, "ok": 2, "malformed": 1, "failed": 0,
            "tokens_in": 1200, "tokens_out": 300, "cost_usd": 0.0042, "prices_usd_per_mtok": {"in": 0.15, "out": 0.6},
            "this_run": {"rows": 1, "tokens_in": 400, "tokens_out": 100, "cost_usd": 0.0014}}
    tracking.Tracker(cfgs["train"].tracking, str(run_dir)).teacher(cost)
    (t,) = client.search_runs([exp.experiment_id], "tags.stage = 'teacher'")
    assert t.data.params["model"] == "gpt-4o-mini" and t.data.params["price_usd_per_mtok.out"] == "0.6"
    assert {k: t.data.metrics[k] for k in ("tokens_in", "tokens_out", "cost_usd", "this_run.tokens_in")} == {
        "tokens_in": 1200, "tokens_out": 300, "cost_usd": 0.0042, "this_run.tokens_in": 400}

    # tracking off (no `tracking:`): the same stages in a copy of the run directory log nothing anywhere
    off = tmp_path / "off"
    shutil.copytree(run_dir, off, ignore=shutil.ignore_patterns("models", "train", "evaluate", "reports"))
    before = len(client.search_runs([e.experiment_id for e in client.search_experiments()]))
    run_stages(off, None, train={"backbones": ["gru4rec"], "epochs": 1})
    assert len(records(off)) == 1 and (off / "reports" / "results.md").exists()
    assert client.get_experiment_by_name(os.path.abspath(off)) is None
    assert len(client.search_runs([e.experiment_id for e in client.search_experiments()])) == before


def test_server_down_is_one_warning_not_a_failure(tmp_path, caplog, ray_local):
    """Tracking at a port nobody listens on: the train stage finishes, says so once, and the metrics are on disk."""
    run_dir = tmp_path / "run"
    _write_run(run_dir)
    dead = f"http://127.0.0.1:{free_port()}"
    with caplog.at_level(logging.WARNING, logger="slim.runtime.tracking"):
        run_stages(run_dir, {"mlflow_uri": dead}, names=("train",), train={"epochs": 1})
    assert len(records(run_dir)) == 2  # both runs trained and saved
    warnings = [r for r in caplog.records if r.name == "slim.runtime.tracking"]
    assert len(warnings) == 1 and dead in warnings[0].getMessage()
    assert "off for the rest of this stage" in warnings[0].getMessage()


def test_tracking_config_keeps_secrets_out():
    from slim.runtime.config import ConfigError

    with pytest.raises(ConfigError, match="credentials"):
        stages.load_all({"tracking": {"mlflow_uri": "https://me:hunter2@mlflow.example.com"}})
    with pytest.raises(ConfigError, match=r"unknown key\(s\) tracking.token"):
        stages.load_all({"tracking": {"token": "x"}})
    assert tracking.safe_uri("https://mlflow.example.com/x?token=abc") == "https://mlflow.example.com/x"
    assert tracking.Tracker(None, "runs/x").on is False
