"""How a job ends when it is stopped (Ctrl-C, `kill`, a scheduler's SIGTERM) or cannot start Ray.

Every job's entry point (slim/runner/cli.py) runs under `job_entry`. SIGINT and SIGTERM raise `Stopped` (a
KeyboardInterrupt, so libraries unwind as they do for Ctrl-C and the stage's `finally` blocks run: an offline
teacher's vLLM server is stopped, the stage log is closed). The entry then ends every process the job started (its
private Ray: GCS, raylet, agents, workers; servers it spawned), prints one line and exits 130 (SIGINT) or 143
(SIGTERM) without running the interpreter's exit handlers, where Ray's would print C-level stack lines about a GCS
that is gone. Nothing partial is trusted by a rerun: shards and manifests are renamed into place whole, the
manifest last (slim/io/atomic.py), so the same command resumes.

A Ray that cannot start or be joined (`RayStartError`, raised by slim.runtime.raycluster.init_ray) ends the job
with one line naming the cause and what to try, exit 3.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import sys
import threading
import time

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}  # 128 + the signal's number, as a shell reports it
RAY_START_EXIT = 3
# Seconds each stopped process gets to exit on SIGTERM before SIGKILL; the whole stop stays under STOP_BOUND_S
# (ray.shutdown's own wait included), measured in tests/runner/test_signals.py.
TERM_GRACE_S = 3.0
STOP_BOUND_S = 15.0

_received: dict = {"signum": None}


class Stopped(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived; `signum` says which."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class RayStartError(RuntimeError):
    """Ray could not be started or joined; the message names the cause and what to try."""


def _raise(signum, frame) -> None:
    if _received["signum"] is None:  # the first signal stops the job; a repeat while it unwinds changes nothing
        _received["signum"] = signum
        raise Stopped(signum)


def install() -> dict | None:
    """Route SIGINT and SIGTERM to `Stopped`; -> the handlers they had (None off the main thread, where Python
    allows no handler). ray.init replaces SIGTERM's with its own: init_ray puts ours back (keep_handlers)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return {s: signal.signal(s, _raise) for s in EXIT_CODES}


@contextlib.contextmanager
def keep_handlers():
    """Put back the SIGINT and SIGTERM handlers a library call replaced (ray.init sets a SIGTERM handler that calls
    sys.exit), when they were this module's; elsewhere (a test calling a stage in-process) leave them as they are."""
    before = {s: signal.getsignal(s) for s in EXIT_CODES}
    try:
        yield
    finally:
        if threading.current_thread() is threading.main_thread():
            restore({s: h for s, h in before.items() if h is _raise})


def restore(previous: dict | None) -> None:
    for s, handler in (previous or {}).items():
        signal.signal(s, handler)


def job_entry(main):
    """Decorator of a job's main(argv) -> exit code: the stop and Ray-start paths above around it."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        _received["signum"] = None
        previous = install()
        try:
            return main(*args, **kwargs)
        except RayStartError as e:
            if _received["signum"] is not None:
                stop(_received["signum"])
            print(f"ray error: {' '.join(str(e).split())}", file=_real_stderr(), flush=True)
            return RAY_START_EXIT
        except BaseException as e:
            # also a library's own error raised while it unwound from the signal (a Ray Train failure wrapping it)
            signum = _received["signum"] or (signal.SIGINT if isinstance(e, KeyboardInterrupt) else None)
            if isinstance(e, SystemExit) and e.code == signal.SIGTERM:  # Ray's own handler, while ray.init runs
                signum = signal.SIGTERM
            if signum is None:
                raise
            stop(signum)
        finally:
            restore(previous)

    return wrapper


def _real_stderr():
    return getattr(sys.stderr, "real", sys.stderr)  # past slim.runtime.console's stage-log stream


def stop(signum: int) -> None:
    """End every process this job started, say so in one line, exit 128 + signum. Never returns."""
    for s in EXIT_CODES:  # nothing interrupts the stop itself; it is bounded
        signal.signal(s, signal.SIG_IGN)
    t0 = time.monotonic()
    left = end_children()
    name = signal.Signals(signum).name
    logging.getLogger(__name__).info("stopped by %s in %.1f s; %d process(es) still alive", name,
                                     time.monotonic() - t0, left)
    print(f"stopped by signal {name}; rerun the same command to resume", file=_real_stderr(), flush=True)
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        logging.shutdown()
    os._exit(EXIT_CODES.get(signum, 128 + signum))


def end_children() -> int:
    """ray.shutdown() (the private cluster's daemons and workers), then SIGTERM and, after TERM_GRACE_S, SIGKILL
    to every other process this one started, directly or not: the list is taken first, because a worker whose
    raylet is gone is re-parented and no longer a child. -> how many are still alive afterwards (0 expected)."""
    procs = children()
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        # in a thread: a shutdown that hangs on a cluster in trouble must not hold the job past the bound
        t = threading.Thread(target=_quiet_shutdown, args=(ray,), daemon=True)
        t.start()
        t.join(STOP_BOUND_S - 2 * TERM_GRACE_S)
    return end_processes(procs)


def children() -> list:
    """This process's descendants now (psutil.Process objects)."""
    import psutil

    with contextlib.suppress(psutil.Error):
        return psutil.Process().children(recursive=True)
    return []


def end_processes(procs: list) -> int:
    """SIGTERM, then SIGKILL after TERM_GRACE_S, to those still running; -> how many outlived both."""
    import psutil

    procs = [p for p in procs if p.is_running()]
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.terminate()
    _, alive = psutil.wait_procs(procs, timeout=TERM_GRACE_S)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    _, alive = psutil.wait_procs(alive, timeout=TERM_GRACE_S)
    return len(alive)


def _quiet_shutdown(ray) -> None:
    with contextlib.suppress(Exception):
        ray.shutdown()


def off_main_thread(fn, *args, **kwargs):
    """fn(*args, **kwargs) on a helper thread while the main thread waits for it. Ray Train v2's `fit()`, called
    on the main thread, replaces the SIGINT handler with its own (it aborts the training run and returns) and never
    puts ours back: a job past its distill stage ignored Ctrl-C. Off the main thread it installs none; a signal
    still reaches the main thread, raises `Stopped` there, and the job's stop ends the processes fit started.
    The helper thread is not stopped: a caller that catches `Stopped` and goes on (not `job_entry`, which exits)
    leaves fn running until Ray is shut down."""
    box: dict = {}

    def target():
        try:
            box["value"] = fn(*args, **kwargs)
        except BaseException as e:  # handed to the caller's thread
            box["error"] = e

    worker = threading.Thread(target=target, name=f"slim-{getattr(fn, '__name__', 'call')}", daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(0.2)  # short waits: the main thread runs the signal handler between them
    if "error" in box:
        raise box["error"]
    return box.get("value")
