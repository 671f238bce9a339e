"""A server the teacher starts ends with the job even when the job is killed with SIGKILL (slim.runtime.tether).
The server here is the fault-injecting OpenAI test double, started through the same ServerProcess as vLLM; the
control is the same server started without the tether, which a killed parent leaves running."""

import ast
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]

PARENT = """
import subprocess, sys, time, urllib.request
from slim.testing import fault_server
server = fault_server(sys.argv[1])
if sys.argv[2] == "untethered":  # the control: the same command, started as before the tether existed
    untied = subprocess.Popen(server.cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(600):
        try:
            urllib.request.urlopen(server.url + "/models", timeout=2)
            break
        except OSError:
            time.sleep(0.1)
    print(untied.pid, flush=True)
else:
    print(server.start().proc.pid, flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _server_of_killed_parent(tmp_path: Path, mode: str) -> int:
    """Start a parent that starts a server, SIGKILL the parent; -> the server's pid."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(tmp_path / f"{mode}.log"), mode], cwd=ROOT,
                              env=env, stdout=subprocess.PIPE, text=True)
    pid = int(parent.stdout.readline())
    assert _alive(pid)
    parent.send_signal(signal.SIGKILL)
    parent.wait(timeout=10)
    return pid


def _gone_within(pid: int, seconds: float) -> bool:
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        if not _alive(pid):
            return True
        time.sleep(0.1)
    return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the tether is Linux's prctl(PR_SET_PDEATHSIG)")
def test_server_ends_with_a_parent_killed_outright_and_an_untied_one_does_not(tmp_path):
    tied = _server_of_killed_parent(tmp_path, "tethered")
    assert _gone_within(tied, 15), "the tethered server outlived its SIGKILLed parent"

    untied = _server_of_killed_parent(tmp_path, "untethered")
    try:
        assert not _gone_within(untied, 3), "the control ended by itself: the test could not tell the tether works"
    finally:
        try:
            os.killpg(untied, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_tether_refuses_a_parent_that_is_already_gone():
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    r = subprocess.run([sys.executable, "-m", "slim.runtime.tether", str(dead.pid), "--", "sleep", "30"], cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "already gone" in r.stderr


def _grab_sigint():
    """What Ray Train v2's fit() does on the main thread: install its own SIGINT handler and keep it."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, lambda *a: None)
    return "fitted"


def test_a_fit_off_the_main_thread_leaves_the_jobs_sigint_handler():
    from slim.runtime import signals

    previous = signals.install()
    try:
        assert signals.off_main_thread(_grab_sigint) == "fitted"
        assert signal.getsignal(signal.SIGINT) is signals._raise  # still ours: Ctrl-C stops the job
        _grab_sigint()  # the control: called on the main thread, the handler is taken
        assert signal.getsignal(signal.SIGINT) is not signals._raise
        with pytest.raises(ZeroDivisionError):  # an error in the call reaches the caller
            signals.off_main_thread(lambda: 1 / 0)
    finally:
        signals.restore(previous)


def _direct_fits(src: str) -> list[int]:
    """Lines that call a Ray Train trainer's or a Tune tuner's fit() directly (on whatever thread runs them)."""
    return [n.lineno for n in ast.walk(ast.parse(src)) if isinstance(n, ast.Call)
            and isinstance(n.func, ast.Attribute) and n.func.attr == "fit"
            and isinstance(n.func.value, ast.Name) and n.func.value.id in ("trainer", "tuner")]


def test_every_ray_fit_in_the_library_runs_off_the_main_thread():
    assert _direct_fits("def f(trainer):\n    return trainer.fit()\n") == [2]  # the check finds a direct call
    assert _direct_fits("def f(trainer):\n    return off_main_thread(trainer.fit)\n") == []
    files = {p: p.read_text() for p in (ROOT / "slim").rglob("*.py")}
    direct = {str(p.relative_to(ROOT)): lines for p, src in files.items() if (lines := _direct_fits(src))}
    assert direct == {}, f"call these through slim.runtime.signals.off_main_thread: {direct}"
    wrapped = sum(src.count("off_main_thread(trainer.fit)") + src.count("off_main_thread(tuner.fit)")
                  for src in files.values())
    assert wrapped >= 3  # distill, the train stage's Ray Train path, the search
