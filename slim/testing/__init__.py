"""Test doubles, for the tests and benchmarks only: nothing else in `slim` imports this package (a contract in
.importlinter). fault_api: an OpenAI-compatible server that injects faults on a schedule (not a model)."""

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
