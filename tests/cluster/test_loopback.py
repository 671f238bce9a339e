"""The Ray a job starts for itself listens on the loopback only (issue 42), and a served job stops fast and whole.

jobs/serve.py runs as a user runs it, without RAY_ADDRESS: its own Ray (slim.runtime.raycluster.init_ray) and Ray
Serve's HTTP proxy. Every TCP socket in LISTEN state held by the job or any process under it (GCS, raylet, agents,
workers, replicas, the proxy) is read with psutil and must be on 127.0.0.0/8.
"""

import ipaddress
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml
from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
STOPPED = "stopped by signal {}; rerun the same command to resume"


def listeners(pids) -> list[tuple[int, str, str, int]]:
    """(pid, process name, address, port) of every TCP socket in LISTEN state the processes hold."""
    out = []
    for pid in pids:
        try:
            p = psutil.Process(pid)
            name = p.name()
            conns = p.net_connections(kind="tcp")
        except psutil.Error:  # ended meanwhile: a short-lived worker
            continue
        out += [(pid, name, c.laddr.ip, c.laddr.port) for c in conns if c.status == psutil.CONN_LISTEN]
    return out


def off_loopback(found) -> list:
    """The listeners outside 127.0.0.0/8 (`::`, `0.0.0.0` and a network address are; ::ffff:127.x is not)."""
    bad = []
    for entry in found:
        ip = ipaddress.ip_address(entry[2].split("%")[0])
        ip = getattr(ip, "ipv4_mapped", None) or ip
        if not (ip.version == 4 and ip in ipaddress.ip_network("127.0.0.0/8")):
            bad.append(entry)
    return bad


def tree(pid: int) -> set[int]:
    try:
        p = psutil.Process(pid)
        return {pid} | {c.pid for c in p.children(recursive=True)}
    except psutil.Error:
        return set()


def test_the_check_finds_a_listener_off_the_loopback():
    """The check above is not vacuous: a wildcard and a loopback listener of this process, each found as such."""
    with socket.socket() as wild, socket.socket() as lo:
        wild.bind(("0.0.0.0", 0))
        lo.bind(("127.0.0.1", 0))
        wild.listen()
        lo.listen()
        found = listeners([os.getpid()])
        ports = {e[3]: e for e in found}
        assert wild.getsockname()[1] in ports and lo.getsockname()[1] in ports
        assert [e[3] for e in off_loopback(found)] == [wild.getsockname()[1]]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A run directory with one tiny trained model (seconds), what the serve job needs."""
    from slim.recsys import data as D
    from slim.recsys.checkpoint import save_run
    from slim.recsys.spec import RunSpec
    from slim.train.loop import fit
    from tests.stages.test_recsys import _write_run

    root = tmp_path_factory.mktemp("loopback")
    _write_run(root)
    spec = RunSpec("gru4rec", "id", 0, hidden=16, max_len=10, epochs=1, batch_size=32)
    model, rec = fit(spec, D.load(root), None, "uni100", ("uni100",))
    save_run(root / "models" / spec.name, model, spec, D.load(root).num_items, rec, "test")
    return root


def _wait_for_line(path: Path, text: str, proc: subprocess.Popen, timeout: float) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if text in path.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            break
        time.sleep(0.5)
    raise AssertionError(f"no {text!r} after {time.time() - t0:.0f} s (exit {proc.poll()}):\n"
                         + path.read_text(errors="replace")[-3000:])


def test_served_job_listens_on_loopback_only_and_stops_fast(trained_run, tmp_path):
    from slim.runtime.signals import STOP_BOUND_S

    port = free_port()
    cfg = tmp_path / "serve.yaml"
    cfg.write_text(yaml.safe_dump({"run_dir": str(trained_run), "num_cpus": 4,
                                   "serve": {"port": port, "replica_cpus": 0.25}}))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    for name in ("RAY_ADDRESS", "SLIM_RAY_HOST", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"):
        env.pop(name, None)  # Ray's defaults: the job itself must choose the loopback
    out, err = tmp_path / "out.txt", tmp_path / "err.txt"
    with open(out, "w") as o, open(err, "w") as e:
        job = subprocess.Popen([sys.executable, "jobs/serve.py", "--config", str(cfg)], cwd=ROOT, env=env,
                               stdout=o, stderr=e, start_new_session=True)
    try:
        _wait_for_line(out, "serving http://", job, 240)
        pids = tree(job.pid)
        found = listeners(pids)
        names = {e[1] for e in found}
        # several listeners, among them the GCS's, the raylet's and the HTTP proxy's port: the listing sees them
        assert len(found) >= 8 and {"gcs_server", "raylet"} <= names, found
        assert port in {e[3] for e in found}, found
        assert not off_loopback(found), off_loopback(found)

        # Ctrl-C as a terminal sends it: to the job's whole process group
        t0 = time.monotonic()
        os.killpg(job.pid, signal.SIGINT)
        code = job.wait(timeout=60)
        took = time.monotonic() - t0
        print(f"jobs/serve.py: exit {code} {took:.1f} s after Ctrl-C; {len(found)} listeners, all on loopback")
        # every process of the job gone within the bound
        while time.monotonic() - t0 < STOP_BOUND_S and any(psutil.pid_exists(p) for p in pids):
            time.sleep(0.2)
        left = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    text = out.read_text() + err.read_text()
    assert code == 130, text[-3000:]
    assert text.count(STOPPED.format("SIGINT")) == 1 and "Traceback" not in text, text[-3000:]
    assert not left, [psutil.Process(p).cmdline() for p in left if psutil.pid_exists(p)]
    assert took < 8, f"jobs/serve.py took {took:.1f} s to exit on Ctrl-C"  # 7-9 s before (serve.shutdown)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_ray_host_setting(tmp_path, monkeypatch, capsys):
    """The config's top-level ray_host reaches the private cluster's bind address; a value that is not one address
    of a machine is one config error naming the key, before any work."""
    from slim.runner import cli
    from slim.runtime import raycluster

    monkeypatch.setenv(raycluster.RAY_HOST_ENV, "")  # restored (unset) after the test, whatever it sets
    monkeypatch.delenv(raycluster.RAY_HOST_ENV)
    assert raycluster.bind_host() == "127.0.0.1"  # the default
    for bad, why in (("nonsense", "is not an IP address"), ("0.0.0.0", "is not one address")):
        cfg = tmp_path / "c.yaml"
        cfg.write_text(yaml.safe_dump({"ray_host": bad, "run_dir": str(tmp_path / "run")}))
        assert cli.main_stage("train", ["--config", str(cfg)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("config error: ray_host: ") and bad in err and why in err and "Traceback" not in err
        assert not (tmp_path / "run").exists()
    raycluster.set_bind_host("10.1.2.3")
    assert os.environ[raycluster.RAY_HOST_ENV] == "10.1.2.3" and raycluster.bind_host() == "10.1.2.3"
