"""Helpers of cluster/start_local.sh and cluster/stop_local.sh (run by them; no `slim` import).

  python cluster/local_head.py ports             # "NAME PORT FLAG" lines, every port a Ray head binds
  python cluster/local_head.py alive TEMP_DIR    # exit 0 when a process of the head using TEMP_DIR runs
  python cluster/local_head.py stop TEMP_DIR [PORT ...]  # end exactly the processes of that head; wait
                                                         # until nothing listens on its ports

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


# stop: the longest wait for the head's ports to be free once its processes are gone (SIGTERM, 15 s, SIGKILL first)
PORTS_FREE_WAIT_S = 30.0


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


CLIENT_SERVER = "ray.util.client.server"  # `python -m ray.util.client.server ...`: how Ray starts its client server


def listening_on(ports: set[int]) -> list:
    """Ray client servers holding a listening socket on one of `ports` (the head's: they were free when it
    started). Only those: another process that took a port since (a later head, any service) is not ours to stop."""
    import psutil

    procs = []
    for p in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            if CLIENT_SERVER in (p.info["cmdline"] or []) and any(
                    c.status == psutil.CONN_LISTEN and c.laddr.port in ports for c in p.net_connections("tcp")):
                procs.append(p)
    return procs


def stop(temp_dir: str, ports: set[int] = frozenset()) -> int:
    """SIGTERM, then SIGKILL after 15 s, to the head's processes and their children; -> how many there were.
    Also the processes listening on the head's `ports`: Ray's client server names neither the temp dir nor a
    parent that survives `ray start`, and went on holding its port for ~45 s after the rest had stopped."""
    import psutil

    procs = head_processes(temp_dir)
    procs += [p for p in listening_on(set(ports)) if p.pid not in {q.pid for q in procs} and p.pid != os.getpid()]
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.terminate()
    _, alive = psutil.wait_procs(procs, timeout=15)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(alive, timeout=10)
    return len(procs)


def wait_free(ports: set[int], timeout: float) -> list[int]:
    """Poll until nothing listens on `ports` (at most `timeout` s); -> the ports still held."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        held = sorted(p for p in ports if not is_free(p))
        if not held or time.monotonic() >= deadline:
            return held
        time.sleep(0.2)


def main(argv: list[str]) -> int:
    if argv[:1] == ["ports"]:
        for name, port in choose(dict(os.environ)).items():
            print(name, port, PORTS[name][0])
        return 0
    if len(argv) == 2 and argv[0] == "alive":
        return 0 if head_processes(argv[1]) else 1
    if len(argv) >= 2 and argv[0] == "stop":
        ports = {int(p) for p in argv[2:]}
        n = stop(argv[1], ports)
        held = wait_free(ports, PORTS_FREE_WAIT_S)
        if held:
            print(f"stopped {n} process(es) of the Ray head in {argv[1]}; ports {held} still in use after "
                  f"{PORTS_FREE_WAIT_S:.0f} s", file=sys.stderr)
            return 1
        print(f"stopped {n} process(es) of the Ray head in {argv[1]}; its ports are free")
        return 0
    print("usage: local_head.py ports | alive TEMP_DIR | stop TEMP_DIR [PORT ...]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
