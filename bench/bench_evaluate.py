"""The evaluate stage's driver-side ranking with torch's old thread count (one per core) against the new one
(slim.runtime.threads: one, evaluate.threads = 0), on the same run directory, in alternating rounds.

  PYTHONPATH=. .venv/bin/python bench/bench_evaluate.py --users 800 --items 800 --rounds 3

Issue 42 measured a forced evaluate of the demo run at 92 s with the driver ranking on two torch threads, 15 s with
OMP_NUM_THREADS=1, on a shared 2-core machine. Here: a generated run directory (Zipf-ish histories of 5..40
items, the data stage's files, 100 sampled negatives per protocol), four runs trained by the train stage for one
epoch (sasrec and gru4rec, ID, two seeds; the weights' values do not change what ranking costs), then `evaluate.run`
forced with evaluate.threads = the cores (what torch did by default before) and = 0 (now: one), after one
warm-up run, in alternating order round by round so that drifting machine load hits both alike. Figures: the
stage's own rank_s and total_s from its manifest; median over rounds. The results of the two settings are checked
to be the same.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as `python bench/x.py`: the repository first

from bench import harness  # noqa: E402
from bench.verdicts import speedup  # noqa: E402


def make_run(root: Path, n_users: int, n_items: int, seed: int = 0) -> None:
    """data/users.parquet, items.parquet and candidates as the data stage writes them, and its manifest."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from slim.io import columns as C
    from slim.io.rundir import Manifest, RunDir
    from slim.testing.planted import candidates, users_table

    rng = np.random.default_rng(seed)
    (root / C.CANDIDATES_DIR).mkdir(parents=True, exist_ok=True)
    pop = 1.0 / np.arange(1, n_items + 1) ** 0.8
    seqs = []
    for _ in range(n_users):  # distinct items per user: the candidates are drawn outside the history
        seqs.append((rng.choice(n_items, size=rng.integers(5, 41), replace=False, p=pop / pop.sum()) + 1)
                    .astype(np.int32))
    pq.write_table(users_table(seqs), root / C.USERS_FILE)
    pq.write_table(pa.table({C.ITEM_ID: pa.array(np.arange(1, n_items + 1, dtype=np.int32)),
                             C.TEXT: [f"Game {i}" for i in range(1, n_items + 1)]}), root / C.ITEMS_FILE)
    pq.write_table(candidates(seqs, n_items, rng), root / C.CANDIDATES_DIR / "part-0.parquet")
    RunDir(root).write_manifest(Manifest("data", {"generated": seed, "users": n_users, "items": n_items}))


def train(root: Path) -> float:
    from slim.train import stage as job

    with harness.timed() as t:
        job.run(job.TrainConfig(run_dir=str(root), backbones=("sasrec", "gru4rec"), variants=("id",), seeds=(0, 1),
                                hidden=32, max_len=20, epochs=1, patience=1, batch_size=256,
                                test_protocols=("uni100",), cpus_per_run=1.0))
    return t.s


def evaluate(root: Path, threads: int) -> tuple[dict, dict]:
    from slim.evaluate import stage as ev

    m = ev.run(ev.EvaluateConfig(run_dir=str(root), threads=threads), force=True)
    res = json.loads((root / "reports" / "results.json").read_text())
    return m.timings, {r["run"]: r["eval"] for r in res["runs"]}


def main() -> None:
    import torch

    old = torch.get_num_threads()  # torch's default in this process, before anything sets it: one per core
    p = argparse.ArgumentParser()
    p.add_argument("--users", type=int, default=800)
    p.add_argument("--items", type=int, default=800)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--run-dir", default="/tmp/slim_bench_evaluate")
    p.add_argument("--out", default="bench/results/evaluate.md")
    a = p.parse_args()
    root = Path(a.run_dir)
    made = root / "data" / "manifest.json"
    sizes = json.loads(made.read_text())["config"] if made.exists() else {}
    trained = (root / "train" / "manifest.json").exists()
    if (sizes.get("users"), sizes.get("items")) != (a.users, a.items) or not trained:
        shutil.rmtree(root, ignore_errors=True)  # made for other sizes (or half made): the figures must be these
        make_run(root, a.users, a.items)
        print(f"trained 4 runs in {train(root):.0f} s", flush=True)
    evaluate(root, 0)  # warm-up, not counted: the first run in a process pays imports and first-call costs
    machine, runs, same = harness.Machine(), {"old": [], "new": []}, True
    for r in range(a.rounds):
        order = (("old", old), ("new", 0)) if r % 2 == 0 else (("new", 0), ("old", old))
        got = {k: evaluate(root, n) for k, n in order}
        same &= got["old"][1] == got["new"][1]
        for k in runs:
            runs[k].append(got[k][0])
        t_old, t_new = got["old"][0], got["new"][0]
        print(f"round {r}: rank {t_old['rank_s']:.1f} s with {old} threads, {t_new['rank_s']:.1f} s with 1; "
              f"total {t_old['total_s']:.1f} / {t_new['total_s']:.1f} s", flush=True)
    write(a, runs, old, same, machine)


def write(a, runs: dict, old: int, same: bool, machine: harness.Machine) -> None:
    med = {k: {f: float(np.median([t[f] for t in v])) for f in ("rank_s", "total_s")} for k, v in runs.items()}
    lines = [
        "Where other work runs beside this benchmark (the load average above), this is the situation issue 42 "
        f"measured. Run directory: {a.users:,} generated users, "
        f"{a.items:,} items, four runs (sasrec, gru4rec; ID; two seeds) trained one epoch by the train stage. "
        f"`evaluate.run(force=True)` with evaluate.threads = {old} (torch's default here: one per core, what the "
        "driver ranked with before) and 0 (now: one thread), after one uncounted warm-up run, in alternating order "
        "(old first in even rounds); "
        "the protocols uni100, pop100, full and full_keep; one block of users, ranked in the driver.", "",
        "| setting | torch threads | rank s (median) | total s (median) | rank s per round |",
        "|---|---:|---:|---:|---|",
        *[f"| {k} | {old if k == 'old' else 1} | {med[k]['rank_s']:.1f} | {med[k]['total_s']:.1f} | "
          + ", ".join(f"{t['rank_s']:.1f}" for t in runs[k]) + " |" for k in ("old", "new")], "",
        speedup(med["old"]["rank_s"], med["new"]["rank_s"], "Ranking, one thread against one per core") + "; "
        + speedup(med["old"]["total_s"], med["new"]["total_s"], "the whole stage") + ".",
        f"Metrics of every run under the two settings: {'identical' if same else '**different**'}.", "",
    ]
    harness.write_results(
        a.out, "Evaluate: the driver's ranking with one torch thread per core (before) vs one (slim.runtime.threads)",
        lines, harness.command(f"--users {a.users} --items {a.items} --rounds {a.rounds}"), machine)


if __name__ == "__main__":
    main()
