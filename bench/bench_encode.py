"""Encode stage benchmark: the Ray Data job against plain SentenceTransformer.encode on the same texts, and peak
memory (driver + Ray workers) over user slices of growing size, projected to 1,000,000 users.

  PYTHONPATH=. .venv/bin/python bench/bench_encode.py --users 2000 8000 --out bench/results/encode.md

Rationale shards are generated (student-like text, ~180 word pieces each, steps 1-3); items from the same
generator as the tests. Throughput ratios compare runs in this one process; absolute numbers depend on the load.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as `python bench/x.py`: the repository first

from bench import harness  # noqa: E402
from bench.memwatch import PeakMem  # noqa: E402
from slim.io import columns as C  # noqa: E402
from slim.io.rundir import Manifest, RunDir  # noqa: E402
from slim.testing.rundata import WORDS, write_run_data  # noqa: E402


def write_rationales(run_dir: Path, num_users: int, shard_rows: int = 5000, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    out = run_dir / C.STUDENT_SHARDS
    out.mkdir(parents=True, exist_ok=True)
    for start in range(0, num_users, shard_rows):
        n = min(shard_rows, num_users - start)
        w = lambda k: [" ".join(rng.choice(WORDS, k)) for _ in range(n)]  # noqa: E731
        s1 = [f"The user prefers {a} games, mostly {b}." for a, b in zip(w(12), w(8))]
        s2 = [f"1. {a}" for a in w(20)]
        s3 = [f"Under each: {a}" for a in w(90)]
        text = [f"Step 1: {a}\nStep 2: {b}\nStep 3: {c}" for a, b, c in zip(s1, s2, s3)]
        pq.write_table(pa.table({C.USER_ID: pa.array(np.arange(start, start + n, dtype=np.int64)),
                                 C.RATIONALE: text, C.STEP1: s1, C.STEP2: s2, C.STEP3: s3,
                                 C.STATUS: ["ok"] * n}),  # the encode stage reads a row's status
                       out / f"part-bench-{start // shard_rows:06d}.parquet")
    RunDir(run_dir).write_manifest(Manifest(C.STUDENT_DIR, {"generated": num_users}))


def plain_encode(texts: list[str], batch_size: int) -> float:
    from sentence_transformers import SentenceTransformer

    from slim.runtime.llm_models import minilm_path

    st = SentenceTransformer(minilm_path(), device="cpu")
    with harness.timed() as t:
        st.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True)
    return t.s


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--users", type=int, nargs="+", default=[2000, 8000])
    p.add_argument("--items", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=os.cpu_count(),
                   help="torch threads of the job's actor; default: as many as plain encode uses (all cores)")
    p.add_argument("--root", default="/tmp/slim-bench-encode")
    p.add_argument("--out", default="bench/results/encode.md")
    a = p.parse_args()
    from slim.encode.stage import EncodeConfig, run

    machine = harness.Machine()
    harness.ray(6)
    rows = []
    for n in a.users:
        d = Path(a.root) / f"u{n}"
        write_run_data(d, num_users=n, num_items=a.items)
        write_rationales(d, n)
        with PeakMem() as mem:
            m = run(EncodeConfig(run_dir=str(d), batch_size=a.batch_size, num_actors=1, actor_cpus=0.5,
                                 threads=a.threads), force=True)
        texts = 4 * n + a.items
        rss = mem.peak_rss_mb, mem.base_rss / 2**20  # summed RSS, as this table has always shown (bench/memwatch.py)
        rows.append((n, m.timings["total_s"], texts / m.timings["total_s"], *rss))
        print(rows[-1], flush=True)
    # the smallest slice's rationale texts (4 fields) with plain encode, in this process: the texts the job's extra
    # users add between the two slices are the same kind (items are short titles and cost the same in both runs)
    d = Path(a.root) / f"u{a.users[0]}"
    t = pq.ParquetDataset(sorted(str(f) for f in (d / C.STUDENT_SHARDS).glob("part-*.parquet"))).read()
    texts = [str(x) for f in C.USER_EMB_FIELDS for x in t.column(f).to_pylist()]
    plain_s = plain_encode(texts, a.batch_size)
    plain_tps = len(texts) / plain_s
    job_tps = 4 * (rows[-1][0] - rows[0][0]) / (rows[-1][1] - rows[0][1])  # marginal: fixed costs cancel
    n_big, s_big = rows[-1][0], rows[-1][1]
    proj_h = s_big / n_big * 1_000_000 / 3600
    cmd = harness.command(f"--users {' '.join(map(str, a.users))} --items {a.items} --batch-size {a.batch_size} "
                          f"--threads {a.threads}")
    lines = [
        f"One encoder actor (0.5 logical CPU, {a.threads} torch threads, as plain encode uses).", "",
        "| users | texts (4 fields + items) | job wall s | job texts/s | peak RSS MB (driver+Ray) | RSS before MB |",
        "|---:|---:|---:|---:|---:|---:|",
        *[f"| {n:,} | {4 * n + a.items:,} | {s:.1f} | {tps:.1f} | {pk:.0f} | {b:.0f} |" for n, s, tps, pk, b in rows],
        "",
        f"Plain `SentenceTransformer.encode` on the {len(texts):,} rationale texts of the {a.users[0]:,}-user slice, "
        f"same process: {plain_tps:.1f} texts/s. The job per extra text (difference of the two slices, so Ray start, "
        f"model load and the items cancel): {job_tps:.1f} texts/s. **Job / plain: {job_tps / plain_tps:.2f}**. "
        f"Whole job at {a.users[0]:,} users, fixed costs included: {rows[0][2]:.1f} texts/s.", "",
        f"Projection to 1,000,000 users at the {n_big:,}-user rate: {proj_h:.1f} h on this machine with one actor. "
        "Memory over a 50,000-user slice: encode_scale.md.",
    ]
    harness.write_results(a.out, "Encode benchmark (all-MiniLM-L6-v2, CPU)", lines, cmd, machine)


if __name__ == "__main__":
    main()
