"""The teacher job killed with SIGKILL at random points and restarted, against the fault-injecting server.

Used by tests/stages/test_teacher_chaos.py (assertions) and bench/bench_resume.py (the measured figures). Each run is the
real job script in its own process group, joined to an existing Ray cluster the way `ray job submit` drivers are.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from slim.io import columns as C
from slim.teacher import shards
from slim.testing import fault_server

ROOT = Path(__file__).resolve().parents[2]  # the repository: jobs/teacher.py runs from it
SCHEDULE = {"429": 5, "500": 11, "timeout": 19, "malformed": 13, "truncated": 17, "empty": 7}
RETRY_AFTER = "0.1|soon|Mon, 99 Foo 2025 99:99:99 GMT|-1|nan|99999"  # garbled ones, and one far too long
CONFIG = {"model": "fault-double", "api_key_env": "", "max_tokens": 100, "requests_per_min": 0,
          "tokens_per_min": 0, "num_actors": 2, "threads_per_actor": 3, "batch_size": 8, "request_timeout_s": 0.6,
          "max_attempts": 12, "backoff_base_s": 0.02, "backoff_max_s": 0.2, "retry_after_max_s": 0.3,
          "price_in_per_mtok": 1.0, "price_out_per_mtok": 4.0}


@dataclass
class Chaos:
    kills: list = field(default_factory=list)  # per kill: seconds after start, billed responses lost, rows kept
    server: dict = field(default_factory=dict)
    cost: dict = field(default_factory=dict)
    final_rc: int = -1
    final_log: str = ""

    @property
    def in_flight_max(self) -> int:
        return CONFIG["num_actors"] * CONFIG["threads_per_actor"]


def _stats(url: str) -> dict:
    return json.loads(urllib.request.urlopen(url[:-3] + "/stats").read())


def _logged(run_dir: Path) -> int:
    return sum(p.read_text().count("\n") for p in (run_dir / C.TEACHER_LOG).glob("*.jsonl"))


def billed_in_rows(run_dir: Path) -> int:
    """Every billed response recorded anywhere: shards (rationales/, archive/) and actors' logs."""
    shards.recover(run_dir / "teacher")
    return int(sum(v or 0 for v in shards.read_all(run_dir / "teacher").column(C.BILLED).to_pylist()))


def _start(cfg: Path, env: dict, out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "jobs/teacher.py", "--config", str(cfg)], cwd=ROOT, env=env,
                            stdout=open(out, "wb"), stderr=subprocess.STDOUT, start_new_session=True)


def run_chaos(tmp: Path, run_dir: Path, ray_address: str, num_users: int, kills: int, seed: int) -> Chaos:
    """Kill the job `kills` times, each after a random number of logged rows plus a random delay, then let a
    last run finish. Responses lost at each kill = what the server billed so far minus what the rows record."""
    rng = random.Random(seed)
    env = {**os.environ, "RAY_ADDRESS": ray_address, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(ROOT)}
    res = Chaos()
    with fault_server(tmp / "fs.log", SCHEDULE, latency_s=0.05, retry_after=RETRY_AFTER, timeout_sleep=1.0) as srv:
        cfg = tmp / "chaos.yaml"
        cfg.write_text(yaml.safe_dump({"run_dir": str(run_dir), "teacher": {
            **CONFIG, "base_url": srv.url, "num_users": num_users, "seed": seed}}))
        for k in range(kills):
            done_before = _logged(run_dir)
            target = done_before + rng.randint(1, max(2, num_users // (kills + 1)))
            p = _start(cfg, env, tmp / f"run{k}.log")
            t0 = time.time()
            while _logged(run_dir) < target and p.poll() is None and time.time() - t0 < 300:
                time.sleep(0.02)
            time.sleep(rng.uniform(0, 0.3))
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            time.sleep(1.5)  # the killed job's actors die with it (Ray reaps a dead driver's actors)
            lost_so_far = len(_stats(srv.url)["billed"]) - billed_in_rows(run_dir)
            res.kills.append({"after_s": round(time.time() - t0, 1), "lost_so_far": lost_so_far,
                              "lost": lost_so_far - sum(k["lost"] for k in res.kills),
                              "rows": shards.read_all(run_dir / "teacher").num_rows,
                              "killed": p.returncode == -signal.SIGKILL, "rc": p.returncode})
        p = _start(cfg, env, tmp / "final.log")
        res.final_rc = p.wait(timeout=600)
        res.final_log = (tmp / "final.log").read_text()[-3000:]
        res.server = _stats(srv.url)
    cost_path = run_dir / "teacher" / "cost.json"
    res.cost = json.loads(cost_path.read_text()) if cost_path.exists() else {}
    return res
