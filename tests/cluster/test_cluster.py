"""Jobs submitted to a Ray head on 127.0.0.1 as a user submits them: the head from cluster/start_local.sh, jobs from
cluster/submit.sh (`ray job submit` with cluster/runtime_env.yaml); a stopped train job resubmitted with the same
command finishes the runs without redoing or duplicating any.

The head is this module's own: start_local.sh picks free ports and a fresh --temp-dir, so that nothing else joins
it (the session's `ray_local` cluster is private, started with address="local"; RAY_ADDRESS is set only in the
submitting subprocess), and cluster/stop_local.sh ends exactly its processes: `ray stop` would end every Ray
process of this user on the machine, other test sessions' clusters included.
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

import pytest
import yaml

from slim.io import columns as C
from slim.testing.sources import write_seqrec
from tests.cluster.test_loopback import listeners, off_loopback

ROOT = Path(__file__).resolve().parents[2]
SEEDS = list(range(8))  # 8 training runs, 2 at a time (slim_cores=2): the stop lands with most still to do


def _env(**extra) -> dict:
    """The environment of a user's shell: the venv's `ray` and `python` first on PATH, no cluster address."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1", **extra}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("RAY_ADDRESS", None)
    return env


def _stop_head(temp_dir: str) -> None:
    """End the processes of the head started with `temp_dir` (what cluster/stop_local.sh does), when the script
    could not: a start that failed half-way, a test that failed before its stop."""
    _helper().stop(temp_dir)


def test_stop_takes_only_rays_client_server_off_a_port(tmp_path):
    """stop_local.sh frees the head's ports by stopping what listens there, but only Ray's client server: another
    process that holds a port since (its command line even says "ray") is found by the same port and left alone."""
    code = ("import socket,sys,time; s=socket.socket(); s.bind(('127.0.0.1',0)); s.listen(); "
            "print(s.getsockname()[1], flush=True); time.sleep(60)")
    for argv, ours in (([sys.executable, "-c", code, "/home/ray/array"], False),
                       ([sys.executable, "-c", code, "-m", "ray.util.client.server"], True)):
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        try:
            port = int(p.stdout.readline())
            found = {q.pid for q in _helper().listening_on({port})}
            assert (p.pid in found) is ours, (argv[-1], found)
        finally:
            p.kill()
            p.wait()


def _helper():
    """cluster/local_head.py (the scripts' helper, not a package module)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("cluster_local_head", ROOT / "cluster" / "local_head.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _state(path: Path) -> dict:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line and line[0] != "#")


def start_local(num_cpus: int, cores: int, state: Path, **env_extra) -> tuple[subprocess.CompletedProcess, dict]:
    """cluster/start_local.sh as a user runs it (a fresh temp dir, the ports it picks) -> (result, environment)."""
    env = _env(NUM_CPUS=str(num_cpus), SLIM_CORES=str(cores), SLIM_RAY_STATE=str(state), **env_extra)
    for attempt in range(2):
        # Ray gives the raylet a fixed 30 s to register; on a busy 2-core machine that can pass: start again.
        r = subprocess.run([str(ROOT / "cluster" / "start_local.sh"), "--object-store-memory=300000000"], cwd=ROOT,
                           env=env, capture_output=True, text=True, timeout=420, start_new_session=True)
        if r.returncode == 0 or "timed out during startup" not in r.stdout + r.stderr:
            break
    return r, env


def stop_local(env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([str(ROOT / "cluster" / "stop_local.sh")], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


@contextlib.contextmanager
def local_head(num_cpus: int, cores: int):
    """cluster/start_local.sh -> (dashboard URL, the environment to submit from); cluster/stop_local.sh at the end."""
    tmp = Path(tempfile.mkdtemp(prefix="slimstate-"))
    state, temp = tmp / "head.env", None
    try:
        r, env = start_local(num_cpus, cores, state)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        st = _state(state)
        url, temp = st["RAY_ADDRESS"], st["RAY_TEMP_DIR"]
        assert f"export RAY_ADDRESS={url}" in r.stdout  # the script prints the address to submit to
        yield url, {**env, "RAY_ADDRESS": url}
    finally:
        if state.exists():
            temp = temp or _state(state).get("RAY_TEMP_DIR")
            stop_local(_env(SLIM_RAY_STATE=str(state)))
        if temp:
            _stop_head(temp)
            shutil.rmtree(temp, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)


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
    r = submit(head, path, job="data", submit_args="--submission-id data-1")
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


def test_port_choice():
    """A port someone holds is never chosen: the default moves to a free one; a variable naming it is refused."""
    lh = _helper()
    with socket.socket() as held, socket.socket() as spare:
        held.bind(("127.0.0.1", 0))  # loopback only, as a private `ray.init()` holds its agent's port
        held.listen()
        spare.bind(("127.0.0.1", 0))
        busy, free = held.getsockname()[1], spare.getsockname()[1]
        spare.close()
        lh.PORTS = {"A": ("--a", busy), "B": ("--b", free), "C": ("--c", None)}
        got = lh.choose({})
        assert got["A"] != busy and got["B"] == free and len(set(got.values())) == 3
        assert lh.choose({"A": str(got["A"])})["A"] == got["A"]
        with pytest.raises(SystemExit, match=f"A={busy} is in use"):
            lh.choose({"A": str(busy)})


def _hold(ports: list[int]) -> list[socket.socket]:
    """Listen on each port nobody holds yet (what another Ray on its defaults does); taken ones are held already."""
    out = []
    for p in ports:
        s = socket.socket()
        try:
            s.bind(("0.0.0.0", p))
            s.listen()
            out.append(s)
        except OSError:
            s.close()
    return out


def test_start_local_beside_another_ray(head, tmp_path):
    """Ray's default ports held by another Ray (and the module's head running): start_local.sh still gives a head
    that takes a job, on other ports; stop_local.sh ends that head and leaves the other one running."""
    defaults = [6379, 8265, 52365, 10001]
    held = _hold(defaults)
    try:
        r, env = start_local(2, 1, tmp_path / "head.env")
    finally:
        for s in held:
            s.close()
    try:
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        st = _state(tmp_path / "head.env")
        ports = {int(v) for k, v in st.items() if k.endswith("_PORT")}
        assert len(ports) == 9 and not ports & set(defaults), st
        url = st["RAY_ADDRESS"]
        assert f"export RAY_ADDRESS={url}" in r.stdout and url != head[0]
        job = subprocess.run(["ray", "job", "submit", "--submission-id", "beside-1", "--", "python", "-c",
                              "import ray; ray.init(); print('slim_cores', ray.cluster_resources()['slim_cores'])"],
                             cwd=ROOT, env={**env, "RAY_ADDRESS": url}, capture_output=True, text=True, timeout=300)
        assert job.returncode == 0 and "slim_cores 1.0" in job.stdout, job.stdout[-3000:] + job.stderr[-3000:]
        # the head listens on the loopback only (issue 42), on its ports among others
        procs = _helper().head_processes(st["RAY_TEMP_DIR"]) + _helper().listening_on(ports)  # + client server
        found = listeners({p.pid for p in procs})
        assert {int(st["RAY_PORT"]), int(st["CLIENT_PORT"])} <= {e[3] for e in found}, found
        assert not off_loopback(found), off_loopback(found)
    finally:
        t0 = time.monotonic()
        stop = stop_local(env)
        print(f"stop_local.sh returned in {time.monotonic() - t0:.1f} s: {stop.stdout.strip()}")
    assert stop.returncode == 0, stop.stderr
    # stop_local.sh returned once nothing listens on the head's ports (the client server's held its port ~45 s)
    assert "its ports are free" in stop.stdout and all(_helper().is_free(p) for p in ports), stop.stdout
    assert not _helper().head_processes(st["RAY_TEMP_DIR"]) and not (tmp_path / "head.env").exists()
    assert not Path(st["RAY_TEMP_DIR"]).exists()
    # the other head still answers, and is the one start_local.sh made ready before this test
    assert any(j.submission_id.startswith("start-local-ready-") for j in client(head).list_jobs())


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

    r = submit(head, config, job="train", submit_args="--no-wait --submission-id train-1")
    assert r.returncode == 0, r.stderr[-3000:]
    _wait_for(lambda: done() or job_status(head, "train-1") in ("FAILED", "SUCCEEDED"), 300, "a finished run")
    client(head).stop_job("train-1")  # what `ray job stop train-1` does, without the CLI's seconds of start-up
    _wait_for(lambda: job_status(head, "train-1") in ("STOPPED", "SUCCEEDED", "FAILED"), 120, "the job to end")
    before = {n: (models / n / "metrics.json").read_bytes() for n in done()}
    assert job_status(head, "train-1") == "STOPPED" and 1 <= len(before) < len(names), \
        f"the stop did not land halfway: {job_status(head, 'train-1')}, runs done {sorted(before)}"
    assert not (run / "train" / "manifest.json").exists()

    r = submit(head, config, job="train", submit_args="--submission-id train-2")  # the same command
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert job_status(head, "train-2") == "SUCCEEDED"
    assert sorted(p.name for p in models.iterdir()) == names and done() == names
    for n, b in before.items():  # finished before the stop: kept as they were, not trained again
        assert (models / n / "metrics.json").read_bytes() == b
    m = json.loads((run / "train" / "manifest.json").read_text())
    assert m["counts"]["runs"] == len(names) and m["counts"]["trained_now"] == len(names) - len(before)
    assert f"{len(names) - len(before)} of {len(names)} runs to do" in r.stdout


def test_stop_and_resubmit_forced_train(head, prepared):
    """`--force` train stopped midway, then the plain command: the runs the forced job retrained are kept, the rest
    are trained (not skipped over the old manifest, not all trained again)."""
    config, run, r = prepared
    assert r.returncode == 0, r.stderr[-3000:]
    models, names = run / "models", sorted(f"gru4rec-id-ce-s{s}" for s in SEEDS)
    r = submit(head, config, job="train", submit_args="--submission-id force-0")  # every run done
    assert r.returncode == 0 and job_status(head, "force-0") == "SUCCEEDED", r.stdout[-3000:] + r.stderr[-3000:]
    old = {n: (models / n / "metrics.json").stat().st_mtime_ns for n in names}
    redone = lambda: [n for n in names if (models / n / "metrics.json").exists()  # noqa: E731
                      and (models / n / "metrics.json").stat().st_mtime_ns != old[n]]

    r = submit(head, config, "--force", job="train", submit_args="--no-wait --submission-id force-1")
    assert r.returncode == 0, r.stderr[-3000:]
    _wait_for(lambda: redone() or job_status(head, "force-1") in ("FAILED", "SUCCEEDED"), 300, "a retrained run")
    client(head).stop_job("force-1")
    _wait_for(lambda: job_status(head, "force-1") in ("STOPPED", "SUCCEEDED", "FAILED"), 120, "the job to end")
    kept = {n: (models / n / "metrics.json").read_bytes() for n in redone()}
    assert job_status(head, "force-1") == "STOPPED" and 1 <= len(kept) < len(names), \
        f"the stop did not land halfway: {job_status(head, 'force-1')}, runs retrained {sorted(kept)}"
    # the forced job marked the rest not done and dropped the manifest before training: nothing old looks finished
    assert sorted(p.parent.name for p in models.glob("*/metrics.json")) == sorted(kept)
    assert not (run / "train" / "manifest.json").exists()

    r = submit(head, config, job="train", submit_args="--submission-id force-2")  # the plain command
    assert r.returncode == 0 and job_status(head, "force-2") == "SUCCEEDED", r.stdout[-3000:] + r.stderr[-3000:]
    for n, b in kept.items():
        assert (models / n / "metrics.json").read_bytes() == b
    m = json.loads((run / "train" / "manifest.json").read_text())
    assert m["counts"]["trained_now"] == len(names) - len(kept) and sorted(redone()) == names


def test_submitted_job_refuses_a_relative_run_dir(monkeypatch):
    """Under `ray job submit` a relative run_dir would land in the job's temporary copy of the working directory."""
    from slim.runner import check
    from slim.runtime import config
    from slim.runner import stages
    from slim.runtime.config import ConfigError

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

    from slim.runtime.raycluster import server_host

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


def test_submitted_evaluate_labels_the_run_dirs_own_student(head, prepared, tmp_path, monkeypatch):
    """Issue 42.3: the student's manifest written by a stage run with a relative run_dir in one working directory
    (runs/tiny, its student from runs/tiny/distill), then train + evaluate submitted through the head, whose driver
    runs in a temporary copy of the working directory: the report names the student as this run directory's own,
    not "cross-domain". The student manifest is written with the stage's own path code (no LLM: a checkpoint stub)."""
    from slim.io.rundir import Manifest, RunDir
    from slim.student import engines
    from slim.student.stage import stored_model

    _, run, r = prepared
    assert r.returncode == 0, r.stderr[-3000:]
    work = tmp_path / "work"
    shutil.copytree(run / "data", work / "runs" / "tiny" / "data")  # the submitted data job's output
    merged = work / "runs" / "tiny" / C.STUDENT_MERGED
    merged.mkdir(parents=True)
    (merged / "config.json").write_text("{}")
    (merged / "model.safetensors").write_bytes(b"stub")
    monkeypatch.chdir(work)
    _, info = engines.resolve_model("runs/tiny", "auto", "base", Path("cache"))
    rd = RunDir("runs/tiny")
    rd.write_manifest(Manifest("student", {}, extra={"model": stored_model(rd, info)}))
    cfg = {"run_dir": str(work / "runs" / "tiny"), "data": {"source": "amazon2018-games", "path": "unused"},
           "train": {"backbones": ["gru4rec"], "variants": ["id"], "losses": ["ce"], "seeds": [0], "hidden": 16,
                     "epochs": 1, "patience": 1, "batch_size": 64, "test_protocols": ["uni100"],
                     "cpus_per_run": 1.0, "threads_per_run": 1},
           "evaluate": {"protocols": ["uni100"]}}
    (tmp_path / "eval.yaml").write_text(yaml.safe_dump(cfg))
    r = submit(head, tmp_path / "eval.yaml", "--stages", "train,evaluate", submit_args="--submission-id label-1")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    report = (work / "runs" / "tiny" / "reports" / "results.md").read_text()
    assert f"written by the student `{C.STUDENT_MERGED}` (merged)." in report, report[:3000]
    assert "cross-domain" not in report


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
    for stage in C.STAGE_DIRS:
        assert (run / stage / "manifest.json").exists(), stage
    assert "teacher: local vLLM server at http://127.0.0.1:" in r.stdout
    assert (run / "reports" / "results.md").read_text().count("gru4rec") >= 1
