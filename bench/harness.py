"""The one harness every benchmark script runs on: set-up, timing, machine notes, and the results file.

A script starts with the repository on sys.path (run as `python bench/x.py`, its own folder is first there) and
imports this module; importing it sets the environment the benchmarks run under, unless already set: the Makefile's
and tests/conftest.py's defaults (no token on a private Ray cluster, no model hub at run time, tokenizers without
their own thread pool). `env_defaults(VLLM_CPU)`: vLLM's CPU KV cache at 1 GiB for an engine a bench starts itself,
as the student stage gives its engines (student.kv_cache_gib); before vLLM is imported.

- `ray(num_cpus)`: a private local Ray cluster on 127.0.0.1 (slim.runtime.raycluster.init_ray), once per process.
- `scratch()`: a temporary folder under $BENCH_TMP (else the system's), removed at the end.
- `subprocess_env(**extra)`: this environment with the repository on PYTHONPATH, for the child processes.
- `timed()`: the wall seconds of a block.
- `Machine`: taken when a bench starts; its `line()` says the cores, the load average at the start and now, the
  commit, the date and Python: every results file carries one, so a figure can be set beside the load it ran under.
- `command(args)`: the command line a results file records; bench/run_all.py reruns it (`recorded_command`).
- `write_results(out, title, body, command, machine)`: the header every results file has (title, "Command:",
  "Machine:"), then the bench's own text and tables, written and printed.
- `rows_generated(counts)`: rationales a student run generated, from its manifest's counts.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parents[1]
ENV_DEFAULTS = {"RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
VLLM_CPU = {"VLLM_CPU_KVCACHE_SPACE": "1"}
COMMAND = "Command: `{}`"  # bench/run_all.py finds a results file's command by this line
PYTHON = ".venv/bin/python"


def env_defaults(extra: dict | None = None) -> None:
    """ENV_DEFAULTS and `extra` in this process's environment, where not already set."""
    for k, v in {**ENV_DEFAULTS, **(extra or {})}.items():
        os.environ.setdefault(k, v)


env_defaults()


def ray(num_cpus: int | None = None):
    """A private local Ray cluster (or RAY_ADDRESS's), started once; -> the ray module. num_cpus None: init_ray's
    default (more logical CPUs than cores)."""
    import ray as _ray

    from slim.runtime.raycluster import init_ray

    init_ray(None, num_cpus)
    return _ray


@contextlib.contextmanager
def scratch(prefix: str = "slim-bench-") -> Iterator[Path]:
    """A temporary folder under $BENCH_TMP (a disk with room for the large inputs), removed when the block ends."""
    with tempfile.TemporaryDirectory(prefix=prefix, dir=os.environ.get("BENCH_TMP")) as tmp:
        yield Path(tmp)


def subprocess_env(pythonpath: str | Path | None = ROOT, **extra: str) -> dict:
    """This process's environment for a child: `pythonpath` (the repository; another checkout for a baseline; None
    leaves PYTHONPATH as it is, for a process of another virtual environment) and `extra` variables."""
    env = {**os.environ, **extra}
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return env


@dataclass
class Timer:
    start: float = field(default_factory=time.perf_counter)
    s: float = 0.0


@contextlib.contextmanager
def timed() -> Iterator[Timer]:
    """`with timed() as t: ...` then t.s: the block's wall seconds (set when it ends, also on an exception)."""
    t = Timer()
    try:
        yield t
    finally:
        t.s = time.perf_counter() - t.start


def commit() -> str:
    """The checkout's commit, and whether tracked files differ from it: the code a figure was measured with."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=30,
                              check=True).stdout.strip()
    try:
        head = git("rev-parse", "--short", "HEAD")
        return head + (" with uncommitted changes" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"


@dataclass
class Machine:
    """What a figure ran on, taken when the bench starts; `line()` adds the load average at the time it is called."""
    cores: int = field(default_factory=lambda: os.cpu_count() or 1)
    load_start: tuple = field(default_factory=os.getloadavg)
    commit: str = field(default_factory=commit)
    date: str = field(default_factory=lambda: datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
    arch: str = field(default_factory=platform.machine)
    python: str = field(default_factory=platform.python_version)

    def line(self, load_end: tuple | None = None) -> str:
        end = load_end or os.getloadavg()
        fmt = lambda la: "/".join(f"{x:.1f}" for x in la)  # noqa: E731
        return (f"Machine: {self.cores} CPU cores ({self.arch}), Python {self.python}; load average (1/5/15 min) "
                f"{fmt(self.load_start)} at the start, {fmt(end)} at the end (the cores may be shared with other "
                f"work); commit {self.commit}; {self.date}.")


def command(args: str | list[str] | None = None, script: str | None = None, nice: bool = False) -> str:
    """The command that reruns this bench from the repository root: `args` as given (a string the bench composed
    with its defaults spelt out), or a list, or this process's own arguments."""
    if script is None:
        path = Path(sys.argv[0]).resolve()
        script = path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else str(path)
    if args is None:
        args = sys.argv[1:]
    tail = args if isinstance(args, str) else shlex.join(args)
    return " ".join(w for w in ("PYTHONPATH=.", "nice" if nice else "", PYTHON, script, tail) if w)


def recorded_command(text: str) -> str | None:
    """The command a results file records (its "Command:" line), or None."""
    m = re.search("^" + re.escape(COMMAND).replace(r"\{\}", "([^`]+)") + "$", text, re.M)
    return m.group(1) if m else None


def write_results(out: str | Path, title: str, body: list[str], command: str | None = None,
                  machine: Machine | None = None, echo: bool = True) -> str:
    """Write a results file: `# title`, the Command and Machine lines (where given), then `body` (the bench's own
    lines: its set-up in words, its tables, its verdicts); printed too unless `echo` is False. -> the text."""
    head = [f"# {title}", ""]
    if command:
        head += [COMMAND.format(command), ""]
    if machine:
        head += [machine.line(), ""]
    text = "\n".join(head + list(body)).rstrip("\n") + "\n"
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    if echo:
        print(text, flush=True)
    return text


def rows_generated(counts: dict) -> int:
    """Rationales a student run generated: `generated` (a refresh also counts `new` users, a different thing);
    `new` in manifests written before the refresh counts existed, when it meant the rows generated."""
    return int(counts["generated"] if "generated" in counts else counts.get("new", 0))
