"""Benchmarks made of whole pipeline runs (bench_refresh, bench_tuned): each step is one resumable `jobs/pipeline.py`
run whose stage manifests are recorded when it ends, so a killed benchmark restarted with the same command goes on
where it was; and the per-user test metrics of two run directories, paired over the users they share."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np

from bench import harness
from bench.harness import ROOT
from slim.io.columns import MANIFEST, STAGE_DIRS as STAGES


def pipeline(config: str, run_dir: Path, stages: str, overrides: list[str], log: Path) -> None:
    """One pipeline run, its output appended to log. Ctrl-C is handed to the job, which stops its own servers and
    Ray (subprocess.run would SIGKILL it)."""
    cmd = [sys.executable, "jobs/pipeline.py", "--config", config, "--stages", stages, f"run_dir={run_dir}",
           *overrides]  # overrides after the options: argparse takes them as one list
    print("$", " ".join(cmd[1:]), flush=True)
    with open(log, "a") as out:
        child = subprocess.Popen(cmd, cwd=ROOT, env=harness.subprocess_env(), stdout=out, stderr=out)
        try:
            rc = child.wait()
        except KeyboardInterrupt:
            child.send_signal(signal.SIGINT)
            try:
                child.wait(timeout=120)
            except subprocess.TimeoutExpired:  # a stop that hangs: end it rather than leave it running
                child.kill()
                child.wait()
            raise
    if rc:
        raise SystemExit(f"step failed (exit {rc}): see {log}; rerun the same command to resume")


def manifests(run_dir: Path) -> dict:
    """{stage: manifest} of the stages run_dir holds."""
    out = {}
    for s in STAGES:
        p = run_dir / s / MANIFEST
        if p.exists():
            out[s] = json.loads(p.read_text())
    return out


def step(root: Path, name: str, config: str, run_dir: Path, stages: str, overrides: list[str],
         before_record=None) -> dict:
    """Run one step unless its record (root/record/<name>.json) exists; -> {"manifests", "wall_s", "extra"} as it
    ended. The wall time of a resumed step counts from its resumption. before_record(): what must be kept of the
    step before its record says it is done."""
    rec = root / "record" / f"{name}.json"
    if rec.exists():
        return json.loads(rec.read_text())
    rec.parent.mkdir(parents=True, exist_ok=True)
    with harness.timed() as t:
        pipeline(config, run_dir, stages, overrides, root / "record" / f"{name}.log")
    m = {"manifests": manifests(run_dir), "wall_s": t.s, "extra": overrides}
    if before_record:
        before_record()
    rec.write_text(json.dumps(m, indent=1))
    return m


def final_metrics(run_dir: Path, protocol: str = "full") -> dict:
    """(loss, backbone, variant) -> {raw user id: seed-averaged test NDCG@10 under protocol}, ranked anew here from
    the saved models (evaluate's own ranking code), keyed by raw user id so that two run directories line up."""
    import pyarrow.parquet as pq

    from slim.evaluate.stage import per_user, rank_runs
    from slim.io import columns as C
    from slim.io.rundir import RunDir
    from slim.recsys import data as recdata

    rd = RunDir(str(run_dir))
    tm = rd.read_manifest(C.TRAIN_DIR)
    d = recdata.load(rd.root, tm.config["max_users"], tm.config["subsample_seed"])
    _, rk, _, _ = rank_runs(rd, tm.outputs, d, "test", (protocol,))
    u = pq.read_table(run_dir / C.USERS_FILE, columns=[C.USER_ID, C.RAW_USER_ID]).to_pydict()
    raw = dict(zip(u[C.USER_ID], u[C.RAW_USER_ID]))
    keys = [raw[i] for i in d.user_ids]
    return {k: dict(zip(keys, v[protocol])) for k, v in per_user(rk).items()}


def compare(a: dict, b: dict) -> list:
    """Every row in both a and b (final_metrics) -> its users, both means and the paired tests (a against b)."""
    from slim.recsys.report import paired

    rows = []
    for key in sorted(set(a) & set(b)):
        users = sorted(set(a[key]) & set(b[key]))
        x, y = np.array([a[key][u] for u in users]), np.array([b[key][u] for u in users])
        rows.append({"key": key, "row": "-".join(key[1:]) + f" ({key[0]})", "users": len(users),
                     "a": float(x.mean()), "b": float(y.mean()), **paired(x, y)})
    return rows


def home(p: Path) -> str:
    """A path as a results file names it: under the home folder as ~/..., so no machine's home is written."""
    h = Path.home()
    return f"~/{p.relative_to(h)}" if p.is_relative_to(h) else str(p)
