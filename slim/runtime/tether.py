"""A child process that ends when the process that started it ends, even when that one is killed with SIGKILL
(the OOM killer, a CI or `subprocess.run` timeout, `kill -9`), which no signal handler of ours can see.

Why: the offline teacher starts a vLLM server (2-3 GB of memory and a port) in its own process group, so that
stopping it ends every process it spawned. A job stopped by SIGINT/SIGTERM stops it (slim.runtime.signals); a job
killed outright left it running for good, adopted by init. `tethered(cmd)` runs `cmd` through
`python -m slim.runtime.tether <pid> -- cmd...`, which asks Linux for SIGTERM when its parent dies
(prctl PR_SET_PDEATHSIG) and then execs `cmd` in place; the request survives the exec. Linux ties it to the thread
that forked the child, so call it from the thread that also stops the child (a `with` block does). Elsewhere
than Linux the command runs as given.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def tethered(cmd: list[str]) -> list[str]:
    """`cmd`, wrapped so that it receives SIGTERM when this process dies."""
    if not sys.platform.startswith("linux"):
        return list(cmd)
    return [sys.executable, "-m", "slim.runtime.tether", str(os.getpid()), "--", *cmd]


def main(argv: list[str]) -> None:
    parent, sep, cmd = int(argv[0]), argv[1], argv[2:]
    if sep != "--" or not cmd:
        raise SystemExit("usage: python -m slim.runtime.tether <parent pid> -- command [args...]")
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
        print(f"tether: prctl failed (errno {ctypes.get_errno()}); {cmd[0]} will outlive a killed parent",
              file=sys.stderr, flush=True)
    if os.getppid() != parent:  # the parent died before the request took hold: nobody is left to stop us
        raise SystemExit(f"tether: parent {parent} already gone; not starting {cmd[0]}")
    os.execvp(cmd[0], cmd)


if __name__ == "__main__":
    main(sys.argv[1:])
