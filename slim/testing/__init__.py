"""Test doubles and generated data, for the tests and the benchmarks only: nothing else in `slim` imports this package
(a contract in .importlinter names its only importers: tests and bench).

It lives here, not in tests/ or bench/, because both use it and neither should import the other (bench/ imports
nothing from tests/: tests/runner/test_bench_harness.py checks it): a module of the package is importable from either, and
the library never imports it.
- fault_api: an OpenAI-compatible server that injects faults on a schedule (not a model); chaos: the teacher job
  killed at random points against it.
- planted: a run directory with a planted rationale signal and the train settings that find it (tests/stages/test_slim.py,
  bench/planted_figures.py).
- rundata: a finished data stage written directly; sources: raw inputs in the source formats; teacher_mock: templated
  teacher rationales (a named mock); adapter: a tiny real LoRA adapter.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from slim.teacher.local_server import ServerProcess, free_port


def fault_server(log_path: str | Path, schedule: dict | None = None, latency_s: float = 0.0,
                 port: int | None = None, **kwargs) -> ServerProcess:
    """The fault-injecting test double (slim/testing/fault_api.py) as a separate process."""
    port = port or free_port()
    cmd = [sys.executable, "-m", "slim.testing.fault_api", "--port", str(port),
           "--schedule", json.dumps(schedule or {}), "--latency", str(latency_s)]
    for k, v in kwargs.items():
        cmd += [f"--{k.replace('_', '-')}", str(v)]
    root = str(Path(__file__).resolve().parents[2])
    env = {"PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return ServerProcess(cmd, port, log_path, env=env, startup_timeout_s=60)
