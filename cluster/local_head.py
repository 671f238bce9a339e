"""Helpers of cluster/start_local.sh and cluster/stop_local.sh (run by them; no `slim` import).

  python cluster/local_head.py ports             # "NAME PORT FLAG" lines, every port a Ray head binds
  python cluster/local_head.py alive TEMP_DIR    # exit 0 when a process of the head using TEMP_DIR runs
  python cluster/local_head.py stop TEMP_DIR     # end exactly the processes of that head

A head is known by its --temp-dir, which start_local.sh makes for it alone: Ray's daemons and workers name it on
their command line, and job drivers run in a copy of the working directory under it. `ray stop` instead ends every
Ray process of the user on the machine, other heads included.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys

# env var -> (`ray start` flag, Ray's default port: kept when free; None: Ray would pick one, we pick a free one)
PORTS = {
    "RAY_PORT": ("--port", 6379),  # the GCS
    "DASHBOARD_PORT": ("--dashboard-port", 8265),  # the job API (RAY_ADDRESS)
    "DASHBOARD_AGENT_PORT": ("--dashboard-agent-listen-port", 52365),  # the agent `ray job submit` goes through
    "DASHBOARD_AGENT_GRPC_PORT": ("--dashboard-agent-grpc-port", None),
    "METRICS_PORT": ("--metrics-export-port", None),
    "NODE_MANAGER_PORT": ("--node-manager-port", None),
    "OBJECT_MANAGER_PORT": ("--object-manager-port", None),
    "RUNTIME_ENV_AGENT_PORT": ("--runtime-env-agent-port", None),
    "CLIENT_PORT": ("--ray-client-server-port", 10001),
}


def is_free(port: int) -> bool:
    """Nothing listens on `port` on any address: a wildcard bind fails when any address holds it (Linux)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a port in TIME_WAIT is free for Ray's servers too
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def choose(env: dict) -> dict:
    """env var -> port: the variable's value (it must be free), else Ray's default when free, else a free one."""
    chosen, held = {}, []
    try:
        for name, (_, default) in PORTS.items():
            if env.get(name):
                port = int(env[name])
                if not is_free(port):
                    raise SystemExit(f"start_local.sh: {name}={port} is in use on this machine; pick another port "
                                     "or leave it unset for a free one")
            elif default is not None and default not in chosen.values() and is_free(default):
                port = default
            else:  # held open until all are chosen, so no two names get the same port
                s = socket.socket()
                s.bind(("0.0.0.0", 0))
                held.append(s)
                port = s.getsockname()[1]
            chosen[name] = port
    finally:
        for s in held:
            s.close()
    return chosen


def head_processes(temp_dir: str) -> list:
    import psutil

    temp_dir = os.path.realpath(temp_dir)
    procs = []
    for p in psutil.process_iter(["cmdline", "cwd"]):
        cmd, cwd = " ".join(p.info["cmdline"] or []), p.info["cwd"] or ""
        if temp_dir in cmd or cwd == temp_dir or cwd.startswith(temp_dir + os.sep):
            procs.append(p)
    for p in list(procs):
        with contextlib.suppress(psutil.Error):
            procs += p.children(recursive=True)
    me = os.getpid()
    return [p for p in {p.pid: p for p in procs}.values() if p.pid != me]


def stop(temp_dir: str) -> int:
    """SIGTERM, then SIGKILL after 15 s, to the head's processes and their children; -> how many there were."""
    import psutil

    procs = head_processes(temp_dir)
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.terminate()
    _, alive = psutil.wait_procs(procs, timeout=15)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(alive, timeout=10)
    return len(procs)


def main(argv: list[str]) -> int:
    if argv[:1] == ["ports"]:
        for name, port in choose(dict(os.environ)).items():
            print(name, port, PORTS[name][0])
        return 0
    if len(argv) == 2 and argv[0] == "alive":
        return 0 if head_processes(argv[1]) else 1
    if len(argv) == 2 and argv[0] == "stop":
        print(f"stopped {stop(argv[1])} process(es) of the Ray head in {argv[1]}")
        return 0
    print("usage: local_head.py ports | alive TEMP_DIR | stop TEMP_DIR", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
