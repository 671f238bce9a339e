"""Jobs submitted to a Ray head on 127.0.0.1 as a user submits them: the head from cluster/start_local.sh, jobs from
cluster/submit.sh (`ray job submit` with cluster/runtime_env.yaml); a stopped train job resubmitted with the same
command finishes the runs without redoing or duplicating any.

The head is this module's own: a unique --temp-dir and free ports, so that nothing else joins it (the session's
`ray_local` cluster is private, started with address="local"; RAY_ADDRESS is set only in the submitting
subprocess). It is stopped by ending exactly its processes: `ray stop` would end every Ray process of this user on
the machine, other test sessions' clusters included.
"""

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
import yaml

from tests.datagen import write_seqrec

ROOT = Path(__file__).resolve().parents[1]
SEEDS = list(range(8))  # 8 training runs, 2 at a time (slim_cores=2): the stop lands with most still to do


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _env(**extra) -> dict:
    """The environment of a user's shell: the venv's `ray` and `python` first on PATH, no cluster address."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1", **extra}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("RAY_ADDRESS", None)
    return env


def _stop_head(temp_dir: str) -> None:
    """End the processes of the head started with `temp_dir`: Ray's daemons and workers name it on their command
    line, job drivers run in a copy of the working directory under it; plus their children."""
    procs = []
    for p in psutil.process_iter(["cmdline", "cwd"]):
        cmd, cwd = " ".join(p.info["cmdline"] or []), p.info["cwd"] or ""
        if temp_dir in cmd or cwd.startswith(temp_dir):
            procs.append(p)
    for p in list(procs):
        with contextlib.suppress(psutil.Error):
            procs += p.children(recursive=True)
    procs = list({p.pid: p for p in procs}.values())
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.terminate()
    _, alive = psutil.wait_procs(procs, timeout=10)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(alive, timeout=10)


@contextlib.contextmanager
def local_head(num_cpus: int, cores: int):
    """cluster/start_local.sh on free ports -> (dashboard URL, the environment to submit from)."""
    temp = tempfile.mkdtemp(prefix="slimray-", dir="/tmp")  # short: Ray's socket paths live under it
    gcs, dash, client, agent, agent_grpc, rt_env, metrics = _free_ports(7)
    env = _env(RAY_PORT=str(gcs), DASHBOARD_PORT=str(dash), NUM_CPUS=str(num_cpus), SLIM_CORES=str(cores))
    args = [f"--temp-dir={temp}", f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={agent}",
            f"--dashboard-agent-grpc-port={agent_grpc}", f"--runtime-env-agent-port={rt_env}",
            f"--metrics-export-port={metrics}", "--object-store-memory=300000000"]
    try:
        for attempt in range(2):
            # Ray gives the raylet a fixed 30 s to register; on a busy 2-core machine that can pass: start again.
            r = subprocess.run([str(ROOT / "cluster" / "start_local.sh"), *args], cwd=ROOT, env=env,
                               capture_output=True, text=True, timeout=240, start_new_session=True)
            if r.returncode == 0 or "timed out during startup" not in r.stderr:
                break
            _stop_head(temp)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        url = f"http://127.0.0.1:{dash}"
        assert url in r.stdout  # the script prints how to submit to it
        yield url, {**env, "RAY_ADDRESS": url}
    finally:
        _stop_head(temp)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def head():
    with local_head(num_cpus=4, cores=2) as h:
        yield h


def submit(head, config, *args, job="pipeline", submit_args="", timeout=600):
    """cluster/submit.sh as a user runs it; blocks until the job ends unless submit_args has --no-wait."""
    env = {**head[1], "SLIM_JOB": job, "SLIM_SUBMIT_ARGS": submit_args}
    return subprocess.run([str(ROOT / "cluster" / "submit.sh"), str(config), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def ray_cli(head, *args, timeout=120):
    return subprocess.run(["ray", *args], cwd=ROOT, env=head[1], capture_output=True, text=True, timeout=timeout)


def client(head):
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(head[0])


def job_status(head, submission_id: str) -> str:
    return str(client(head).get_job_status(submission_id).value)


@pytest.fixture(scope="module")
def prepared(head, tmp_path_factory):
    """A config over generated data and its run directory, after a submitted data job."""
    tmp = tmp_path_factory.mktemp("cluster")
    src = write_seqrec(tmp / "src", 300, 150)
    cfg = {"run_dir": str(tmp / "run"),
           "data": {"source": "amazon2018-games", "path": str(src)},
           # 40 epochs (no early stop): a run takes seconds even on an idle machine, so the stop lands halfway
           "train": {"backbones": ["gru4rec"], "variants": ["id"], "losses": ["ce"], "seeds": SEEDS, "hidden": 16,
                     "epochs": 40, "patience": 40, "batch_size": 64, "test_protocols": ["uni100"],
                     "cpus_per_run": 1.0, "threads_per_run": 1}}
    path = tmp / "cluster.yaml"
    path.write_text(yaml.safe_dump(cfg))
    r = submit(head, path, job="prepare_data", submit_args="--submission-id data-1")
    return path, tmp / "run", r


def test_submitted_data_job_joins_the_head(head, prepared):
    _, run, r = prepared
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert job_status(head, "data-1") == "SUCCEEDED"
    m = json.loads((run / "data" / "manifest.json").read_text())
    assert m["counts"]["users"] == 300 and m["counts"]["candidate_rows"] == 300 * 4
    logs = ray_cli(head, "job", "logs", "data-1")
    assert logs.returncode == 0
    # the driver joined this head (its slim_cores) rather than starting a private cluster, on loopback only
    assert "joined Ray cluster at 127.0.0.1:" in logs.stdout and "'slim_cores': 2.0" in logs.stdout
    assert "'node:127.0.0.1': 1.0" in logs.stdout


def _wait_for(pred, timeout, what):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if pred():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def test_stop_and_resubmit_train(head, prepared):
    config, run, r = prepared
    assert r.returncode == 0, r.stderr[-3000:]
    names = sorted(f"gru4rec-id-ce-s{s}" for s in SEEDS)
    models = run / "models"
    done = lambda: sorted(p.parent.name for p in models.glob("*/metrics.json"))  # noqa: E731

    r = submit(head, config, job="train_recommender", submit_args="--no-wait --submission-id train-1")
    assert r.returncode == 0, r.stderr[-3000:]
    _wait_for(lambda: done() or job_status(head, "train-1") in ("FAILED", "SUCCEEDED"), 300, "a finished run")
    client(head).stop_job("train-1")  # what `ray job stop train-1` does, without the CLI's seconds of start-up
    _wait_for(lambda: job_status(head, "train-1") in ("STOPPED", "SUCCEEDED", "FAILED"), 120, "the job to end")
    before = {n: (models / n / "metrics.json").read_bytes() for n in done()}
    assert job_status(head, "train-1") == "STOPPED" and 1 <= len(before) < len(names), \
        f"the stop did not land halfway: {job_status(head, 'train-1')}, runs done {sorted(before)}"
    assert not (run / "train" / "manifest.json").exists()

    r = submit(head, config, job="train_recommender", submit_args="--submission-id train-2")  # the same command
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert job_status(head, "train-2") == "SUCCEEDED"
    assert sorted(p.name for p in models.iterdir()) == names and done() == names
    for n, b in before.items():  # finished before the stop: kept as they were, not trained again
        assert (models / n / "metrics.json").read_bytes() == b
    m = json.loads((run / "train" / "manifest.json").read_text())
    assert m["counts"]["runs"] == len(names) and m["counts"]["trained_now"] == len(names) - len(before)
    assert f"{len(names) - len(before)} of {len(names)} runs to do" in r.stdout


def test_submitted_job_refuses_a_relative_run_dir(monkeypatch):
    """Under `ray job submit` a relative run_dir would land in the job's temporary copy of the working directory."""
    from slim import check, config, stages
    from slim.config import ConfigError

    cfgs = stages.load_all(config.load_raw(str(ROOT / "configs" / "tiny.yaml"), ["run_dir=runs/x"]))
    check.validate(cfgs, ["data"])  # run by hand: relative paths are fine
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")  # what Ray's job supervisor sets for the driver
    with pytest.raises(ConfigError, match="data.run_dir 'runs/x' is relative"):
        check.validate(cfgs, ["data"])
    cfgs = stages.load_all(config.load_raw(str(ROOT / "configs" / "tiny.yaml"), ["run_dir=/abs/x"]))
    check.validate(cfgs, ["data"])


def test_teacher_server_host(monkeypatch):
    """The offline teacher's server: loopback on a private cluster, the node's address on a joined one."""
    import ray

    from slim.raycluster import server_host

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert server_host("auto") == "127.0.0.1"
    assert server_host("10.0.0.5") == "10.0.0.5"
    # joined a cluster: the address Ray knows this node by (no traffic is sent to it here)
    monkeypatch.setattr(ray.util, "get_node_ip_address", lambda: "10.1.2.3")
    assert server_host("auto", "10.0.0.1:6379") == "10.1.2.3"
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert server_host("auto") == "10.1.2.3"


@pytest.mark.slow
def test_offline_teacher_submitted(head, tmp_path):
    """The teacher stage with its vLLM server started by a submitted driver and called by actors of the cluster
    (the node's address as Ray knows it: 127.0.0.1 for this single-machine head). ~3-4 min on 2 cores."""
    src = write_seqrec(tmp_path / "src", 60, 150)
    cfg = {"run_dir": str(tmp_path / "run"), "data": {"source": "amazon2018-games", "path": str(src)},
           "teacher": {"local_server": True, "model": "smollm2-135m-instruct", "api_key_env": "", "num_users": 6,
                       "max_tokens": 32, "requests_per_min": 600, "tokens_per_min": 0, "num_actors": 1,
                       "threads_per_actor": 3, "batch_size": 3, "request_timeout_s": 300}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    r = submit(head, tmp_path / "c.yaml", "--stages", "data,teacher", submit_args="--submission-id teacher-1",
               timeout=1500)
    assert r.returncode == 0, r.stdout[-5000:] + r.stderr[-3000:]
    assert "teacher: local vLLM server at http://127.0.0.1:" in r.stdout
    cost = json.loads((tmp_path / "run" / "teacher" / "cost.json").read_text())
    assert cost["users"] == 6 and cost["failed"] == 0 and cost["tokens_out"] > 0


@pytest.mark.slow
def test_tiny_pipeline_submitted(tmp_path, cache_dir):
    """configs/tiny.yaml, every stage, submitted to a head with the local cluster's resources; the offline teacher's
    vLLM server binds to the node's address (127.0.0.1 here). ~20+ min on 2 cores."""
    run = tmp_path / "tiny"
    with local_head(num_cpus=max(4, 2 * (os.cpu_count() or 2)), cores=os.cpu_count() or 1) as h:
        r = submit(h, "configs/tiny.yaml", f"run_dir={run}", f"data.cache_dir={cache_dir}",
                   submit_args="--submission-id tiny-1", timeout=3600)
        assert r.returncode == 0, r.stdout[-5000:] + r.stderr[-3000:]
        assert job_status(h, "tiny-1") == "SUCCEEDED"
    for stage in ("data", "teacher", "student", "rationales", "embeddings", "train", "evaluate"):
        assert (run / stage / "manifest.json").exists(), stage
    assert "teacher: local vLLM server at http://127.0.0.1:" in r.stdout
    assert (run / "reports" / "results.md").read_text().count("gru4rec") >= 1
