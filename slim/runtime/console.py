"""What a person sees while a job runs.

By default the console carries only what the person asked for: one live progress line per stage (done/total, rate,
ETA), each stage's summary, warnings and errors, and the pipeline's headline. Everything the libraries say (Ray,
Ray Data, Ray Train, Ray Serve, vLLM, and our own INFO lines) goes to `<run_dir>/logs/<stage>.log`; `--verbose`
(or SLIM_VERBOSE=1) shows it all on the console as well. On a cluster, `ray job logs` shows the same console.

Each library is routed with its own switch, not by filtering its text: Python logging for our loggers and Ray's
(`ray` propagates to the root's handlers instead of a console handler of its own), RAY_DATA_LOGGING_CONFIG and
RAY_DATA_DISABLE_PROGRESS_BARS for Ray Data, and Ray's worker-output dispatcher (what `log_to_driver` prints) for every
task's and actor's stdout and stderr, vLLM's and Ray Train's included. One exception reads text: the local
autoscaler's monitor log, which comes through that dispatcher whole (a status block every 5 s), is thinned to its
warnings, events and one status block a minute (AutoscalerLines).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import time
from pathlib import Path

VERBOSE_ENV = "SLIM_VERBOSE"
PROGRESS_EVERY_ENV = "SLIM_PROGRESS_EVERY_S"  # off a terminal, a progress line at most this often (default 30 s)
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_RAY_DATA_LOGGING = Path(__file__).with_name("ray_data_logging.yaml")
_state = {"file": None, "setup": False}  # file: the open stage log (a text file), or None outside a stage


class _StageStream:
    """sys.stdout / sys.stderr of a job's driver while a stage runs: what is written goes to the stage log (and the
    console with --verbose). The net for what prints without a logging switch of its own: tqdm bars
    (transformers' "Loading weights"), DeepSpeed's and ray.llm's own stream handlers, Ray's messages from the
    raylet. A handler created during a stage keeps writing through it later: to the stage log of the moment,
    or to the console between stages."""

    def __init__(self, real):
        self.real = real

    def write(self, text: str) -> int:
        f = _state["file"]
        if f is None or verbose():
            self.real.write(text)
        if f is not None:
            f.write(text)
        return len(text)

    def flush(self) -> None:
        self.real.flush()
        if _state["file"] is not None:
            _state["file"].flush()

    def isatty(self) -> bool:
        return _state["file"] is None and self.real.isatty()  # no live bars in a log file

    def __getattr__(self, name):  # fileno, encoding, ...: the real stream's
        return getattr(self.real, name)


def _real(stream):
    return stream.real if isinstance(stream, _StageStream) else stream


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0", "false")


class _ConsoleFilter(logging.Filter):
    """Quiet console: warnings from our code, errors from anyone; records already printed by `say` never twice."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "said", False):
            return False
        if verbose():
            return True
        ours = record.name == "__main__" or record.name.startswith("slim")
        return record.levelno >= (logging.WARNING if ours else logging.ERROR)


def setup(verbose_flag: bool = False) -> None:
    """Configure logging for a job's driver; call before Ray is imported (Ray Data reads its switches at import)."""
    if verbose_flag:
        os.environ[VERBOSE_ENV] = "1"
    os.environ.setdefault("RAY_DATA_LOGGING_CONFIG", str(_RAY_DATA_LOGGING))  # to the root logger's handlers
    if not verbose():
        os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    _state["setup"] = True
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    if not any(getattr(h, "slim_console", False) for h in root.handlers):
        h = logging.StreamHandler(_real(sys.stderr))
        h.slim_console = True
        h.setFormatter(logging.Formatter(FORMAT))
        h.addFilter(_ConsoleFilter())
        root.addHandler(h)


def quiet_ray() -> None:
    """After ray.init: Ray's own loggers and every worker's output reach the stage log, and the console only with
    --verbose (errors always)."""
    ray_logger = logging.getLogger("ray")
    for h in list(ray_logger.handlers):  # Ray's own console handler; the root's handlers take over
        if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
            ray_logger.removeHandler(h)
    ray_logger.propagate = True
    if not verbose():  # a local cluster's autoscaler logs a 25-line status every 5 s from the driver
        logging.getLogger("ray.autoscaler").setLevel(logging.WARNING)
    try:
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
    except ImportError:  # Ray moved it: worker output stays on the console rather than being lost
        logging.getLogger(__name__).warning("Ray's worker-output dispatcher not found: worker logs stay on the console")
        return
    if verbose():  # Ray prints them to sys.stdout, a _StageStream during a stage: the console and the stage log
        return
    dispatcher.remove_handler("ray_print_logs")  # the handler log_to_driver installs: prints to the console
    dispatcher.remove_handler("slim_stage_log")
    dispatcher.add_handler("slim_stage_log", _worker_lines)


def _worker_lines(data: dict) -> None:
    """Ray's worker-output batch (actor/task name, pid, lines) -> the stage log."""
    f = _state["file"]
    if f is None:
        return
    who = data.get("actor_name") or data.get("task_name") or ""
    prefix = f"({who} pid={data.get('pid')}) " if data.get("pid") not in ("raylet", "autoscaler") else ""
    lines = data.get("lines", [])
    if data.get("pid") == "autoscaler":
        lines = _AUTOSCALER.keep(lines)
    f.write("".join(f"{prefix}{line}\n" for line in lines))
    f.flush()


class AutoscalerLines:
    """The local cluster's autoscaler (its monitor log reaches the driver with pid "autoscaler") logs a 25-line
    status block and two INFO records every 5 s; log_to_driver's own printer shows only its events. Here: every
    warning, error and event (`:event_summary:`), and a status block at most once per `every_s` (which shows
    pending resource demands when tasks wait); the routine INFO records go."""

    RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d[,.]\d+\s+([A-Z]+)\s")
    STATUS = "======== Autoscaler status"

    def __init__(self, every_s: float = 60.0, clock=time.monotonic):
        self.every_s, self.clock = every_s, clock
        self.last = -float("inf")  # when a status block was last kept
        self.keeping = False  # whether the lines of the current record are kept

    def keep(self, lines: list) -> list:
        out = []
        for line in lines:
            record = self.RECORD.match(line)
            if record:
                self.keeping = record.group(1) not in ("INFO", "DEBUG") or ":event_summary:" in line
            elif line.startswith(self.STATUS):  # a continuation of an (empty) INFO record: the block
                now = self.clock()
                self.keeping = now - self.last >= self.every_s
                self.last = now if self.keeping else self.last
            if self.keeping or ":event_summary:" in line:
                out.append(line)
        return out


_AUTOSCALER = AutoscalerLines()


def say(msg: str, err: bool = False) -> None:
    """A line for the person: the console (stdout; stderr with err=True) and the stage log."""
    print(msg, file=_real(sys.stderr if err else sys.stdout), flush=True)
    logging.getLogger("slim.runtime.console").info(msg, extra={"said": True})


@contextlib.contextmanager
def stage_log(stage: str, run_dir):
    """Send this stage's logs to <run_dir>/logs/<stage>.log (appended: a rerun keeps the earlier run's lines).
    A run directory on object storage gets the file when the stage ends, done or failed."""
    from slim.io import storage

    remote = storage.is_remote(run_dir)
    local = (storage.scratch("logs", storage.key_of(run_dir)) if remote else Path(run_dir) / "logs") / f"{stage}.log"
    local.parent.mkdir(parents=True, exist_ok=True)
    f = open(local, "a", encoding="utf-8")
    f.write(f"\n===== {stage} started {time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(sys.argv)} =====\n")
    handler = logging.StreamHandler(f)
    handler.setFormatter(logging.Formatter(FORMAT))
    root, before, streams = logging.getLogger(), _state["file"], (sys.stdout, sys.stderr)
    root.addHandler(handler)
    _state["file"] = f
    if _state["setup"]:  # a job's driver (slim.runtime.console.setup): what prints goes to the stage log too
        sys.stdout, sys.stderr = (s if isinstance(s, _StageStream) else _StageStream(s) for s in streams)
    try:
        yield local
    finally:
        _state["file"] = before
        sys.stdout, sys.stderr = streams
        root.removeHandler(handler)
        f.close()
        if remote:
            storage.upload(local, storage.path(run_dir) / "logs" / f"{stage}.log")


def duration(seconds: float) -> str:
    """1h05m, or 4m25s under an hour: an ETA or an elapsed time on a progress line."""
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class Progress:
    """One live line: `student: 120/943 users (12%), 3.1 users/s, ETA 4m25s`. On a terminal it is rewritten in
    place; elsewhere (CI, `ray job logs`, a pipe) a new line at most every `every_s` seconds (default 30, or
    SLIM_PROGRESS_EVERY_S), and the last one."""

    def __init__(self, stage: str, total: int, unit: str, every_s: float | None = None, stream=None,
                 clock=time.monotonic):
        every_s = float(os.environ.get(PROGRESS_EVERY_ENV) or 30.0) if every_s is None else every_s
        self.stage, self.total, self.unit, self.every_s = stage, total, unit, every_s
        self.stream, self.clock = stream or _real(sys.stderr), clock
        self.t0 = self.last = clock()
        self.done, self.shown, self.open = 0, -1, False
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def line(self, extra: str = "") -> str:
        dt = max(self.clock() - self.t0, 1e-9)
        rate = self.done / dt
        pct = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        eta = f", ETA {duration((self.total - self.done) / rate)}" if rate > 0 and self.done < self.total else ""
        tail = f", {extra}" if extra else ""
        speed = f"{rate:.1f} {self.unit}/s" if rate >= 1 else f"{60 * rate:.1f} {self.unit}/min"  # slow: per minute
        return f"{self.stage}: {self.done:,}/{self.total:,} {self.unit}{pct}, {speed}{eta}{tail}"

    def update(self, done: int, extra: str = "") -> None:
        self.done = done
        if self.due(done, done >= self.total):
            self.show(self.line(extra), done, done >= self.total, now=True)

    def due(self, key, final: bool) -> bool:
        """Whether a line for `key` (what it shows: done, or any value that changes with it) is due now."""
        return key != self.shown and (final or self.clock() - self.last >= (0.5 if self.tty else self.every_s))

    def show(self, text: str, key, final: bool = False, now: bool = False) -> None:
        """Print `text` (a line of the caller's own) if due; now=True: whenever it shows something new."""
        if key == self.shown or not (now or self.due(key, final)):
            return
        self.last, self.shown = self.clock(), key
        logging.getLogger("slim.progress").info(text, extra={"said": True})
        if self.tty:
            self.stream.write("\r\x1b[2K" + text + ("\n" if final else ""))
            self.open = not final
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        """End the live line (a stage that stops early leaves no half-written line behind)."""
        if self.open:
            self.stream.write("\n")
            self.stream.flush()
            self.open = False
