"""Data stage: wall time and peak memory (PSS) on generated inputs of growing size, against the in-memory stage of an
earlier commit run on the smallest input in the same session.

    .venv/bin/python bench/bench_prepare.py [--sizes 200000,1000000,5000000] [--items N] [--baseline 8e6c2ae]
        [--nodes 1,4,16]

Each input is `slim.testing.sources.write_seqrec` (9 events per user on average; 5% as many items as users, at least
20,000, or `--items` for every size: the driver keeps per-item state by design, so a fixed item count shows what
grows with users alone). Memory is the PSS of the driver and every process it started (Ray's included), sampled every 0.2 s: the
peak of the sum, of the driver, and of the largest other process. The 50M-user projection is computed from the
largest run's measured rates (see `projection`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as `python bench/x.py`: the repository first

from bench import harness  # noqa: E402
from bench.harness import ROOT  # noqa: E402
from bench.memwatch import DRIVER, PeakMem  # noqa: E402
from slim.data import DataConfig  # noqa: E402
from slim.data import stage as prepare  # noqa: E402
from slim.testing.sources import write_seqrec  # noqa: E402

BASELINE_RUN = """
import json, sys, time
from slim.data import DataConfig
try:
    from slim.data import stage as prepare
except ImportError:  # the layout of the baseline commits, before the stage faces (issue 28)
    from slim.data import prepare
t0 = time.perf_counter()
m = prepare.run(DataConfig(run_dir=sys.argv[1], source="jsonl-sequences", path=sys.argv[2]), force=True)
print("RESULT " + json.dumps({"counts": m.counts, "timings": m.timings, "wall": time.perf_counter() - t0}))
"""


def measured(name: str, mem: PeakMem, wall: float, counts: dict, timings: dict, rows: int) -> dict:
    others = [(t, mb) for t, mb in mem.process_peaks_mb(10) if t != DRIVER]
    heaps = [(t, mb) for t, mb in mem.process_peaks_mb(10, anon=True) if t != DRIVER]
    at_peak = sorted(((t, b / 2**20) for t, b in mem.peak_titles.items()), key=lambda r: -r[1])[:6]
    row = {"input": name, **counts, "input_rows": rows, "wall_s": round(wall, 1),
           "peak_pss_mb": round(mem.peak_mb), "driver_pss_mb": round(dict(mem.process_peaks_mb(50)).get(DRIVER, 0)),
           "top_process": others[0][0] if others else "", "top_process_pss_mb": round(others[0][1]) if others else 0,
           "peak_rss_sum_mb": round(mem.peak_rss_mb), "load1": round(os.getloadavg()[0], 1),
           "top_heap": heaps[0][0] if heaps else "", "top_heap_mb": round(heaps[0][1]) if heaps else 0,
           "pss_at_peak_mb": {t: round(mb) for t, mb in at_peak},
           **{k: round(v, 1) for k, v in timings.items()}}
    print(json.dumps(row), flush=True)
    return row


def one(name: str, cfg: DataConfig) -> dict:
    with PeakMem() as mem, harness.timed() as t:
        m = prepare.run(cfg, force=True)
    return {**measured(name, mem, t.s, m.counts, m.timings, m.extra["input_rows"]),
            "buckets": m.extra["buckets"], "passes": m.extra["kcore_passes"]}


def baseline(commit: str, src: Path, tmp: str, rows: int) -> dict:
    """The data stage as of `commit` (git archive into `tmp`), run in a subprocess on the same input."""
    code = Path(tmp) / f"code-{commit}"
    code.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(code)], input=archive, check=True)
    with PeakMem() as mem, harness.timed() as t:
        out = subprocess.run([sys.executable, "-c", BASELINE_RUN, f"{tmp}/base", str(src)], cwd=code,
                             env=harness.subprocess_env(code), capture_output=True, text=True, check=True).stdout
    res = json.loads(next(ln for ln in out.splitlines() if ln.startswith("RESULT "))[7:])
    return measured(f"{src.name} @{commit} (in memory)", mem, t.s, res["counts"], res["timings"], rows)


def projection(r: dict, users: int, nodes: list, cores: int) -> list:
    """Hours for `users` users on N nodes of `cores` cores, from run `r`: reading (one driver parsing one gzip
    stream) at the rate measured, everything after it (buckets, k-core passes, users, candidates) at the measured
    rows per core-second spread over N x cores, as independent tasks over buckets are (storage not the limit)."""
    scale = users / r["users"]
    here = os.cpu_count() or 1
    read = r["read_s"] * scale
    rest_core_s = (r["wall_s"] - r["read_s"]) * here * scale
    return [(n, (read + rest_core_s / (n * cores)) / 3600) for n in nodes]


def generated(root: Path, users: int, items: int) -> Path:
    """The generated input for (users, items), written unless a finished one is there (`--inputs`: kept)."""
    src = root / f"gen{users}-{items}"
    if not (src / "done").exists():
        with harness.timed() as t:
            write_seqrec(src, users, items, seed=1)
        (src / "done").touch()
        print(f"generated {users:,} users in {t.s:.0f}s", flush=True)
    return src


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", default="200000,1000000,5000000")
    p.add_argument("--baseline", default="8e6c2ae", help="commit of the in-memory stage, run on the smallest size")
    p.add_argument("--items", type=int, default=0, help="items in every input (default: 5%% of users)")
    p.add_argument("--inputs", default="", help="folder that keeps the generated inputs between runs")
    p.add_argument("--nodes", default="1,4,16")
    p.add_argument("--node-cores", type=int, default=16)
    p.add_argument("--out", default="bench/results/prepare.md")
    a = p.parse_args()
    rows, base, machine = [], None, harness.Machine()
    with harness.scratch() as tmp:
        for k, n in enumerate(int(s) for s in a.sizes.split(",")):
            src = generated(Path(a.inputs or tmp), n, a.items or max(20_000, n // 20))
            if k == 0 and a.baseline:  # before this process starts Ray: the baseline's job starts its own
                base = baseline(a.baseline, src, tmp, 0)
            harness.ray()  # started once, outside the timed runs
            rows.append(one(f"generated-{n}", DataConfig(run_dir=f"{tmp}/run{n}", source="jsonl-sequences",
                                                         path=str(src))))
            if base and not base["input_rows"]:
                base["input_rows"] = rows[-1]["input_rows"]
            if not a.inputs:
                prepare.storage.remove_tree(src)
            prepare.storage.remove_tree(f"{tmp}/run{n}")
            write_report(a, rows, base, machine)  # after every size: a bench stopped early keeps what it measured


def write_report(a, rows: list, base: dict | None, machine: harness.Machine) -> None:
    first = rows[0]
    lines = ["| input | users | items | interactions | buckets | wall s | read s | buckets s | k-core s (passes) | users s | "
             "candidates s | rows/s | peak PSS MB (all) | driver PSS MB | largest other process PSS MB | "
             "x users | x time | x PSS | load |", "|" + "---|" * 19]
    for r in ([base] if base else []) + rows:
        lines.append(
            f"| {r['input']} | {r['users']:,} | {r['items']:,} | {r['interactions']:,} | {r.get('buckets', '')} | {r['wall_s']} | "
            f"{r['read_s']} | {r.get('buckets_s', '')} | {r.get('kcore_s', '')} ({r.get('passes', '')}) | "
            f"{r.get('users_s', '')} | {r['candidates_s']} | {r['input_rows'] / r['wall_s']:,.0f} | "
            f"{r['peak_pss_mb']:,} | {r['driver_pss_mb']:,} | {r['top_process_pss_mb']:,} ({r['top_process']}) | "
            f"{r['users'] / first['users']:.1f} | {r['wall_s'] / first['wall_s']:.2f} | "
            f"{r['peak_pss_mb'] / first['peak_pss_mb']:.2f} | {r['load1']} |")
    if base:
        lines.append(f"\nSame input ({first['users']:,} users), in-memory stage at {a.baseline} / streaming: "
                     f"time x{base['wall_s'] / first['wall_s']:.1f}, peak PSS x{base['peak_pss_mb'] / first['peak_pss_mb']:.1f}, "
                     f"driver PSS x{base['driver_pss_mb'] / max(first['driver_pss_mb'], 1):.1f} "
                     "(the baseline's driver is a subprocess: its PSS is under 'largest other process').")
    proj = projection(rows[-1], 50_000_000, [int(n) for n in a.nodes.split(",")], a.node_cores)
    lines.append(f"\nProjected for 50,000,000 users (from {rows[-1]['input']}; reading stays one driver stream at "
                 f"{rows[-1]['input_rows'] / rows[-1]['read_s']:,.0f} rows/s, the rest spread over "
                 f"{a.node_cores}-core nodes at the rows per core-second measured here on {os.cpu_count()} cores): " +
                 ", ".join(f"{n} node(s) {h:.1f} h" for n, h in proj) + ".")
    harness.write_results(a.out, "Data stage scaling", lines + [
        "",
        "PSS (proportional set size) splits each shared page among the processes mapping it, so the sum counts it "
        "once; the columns give the peak of the sum over the driver and every process it started (Ray's too), "
        "the driver's own peak, and the highest peak of any other single process (its title then). Sampled every "
        "0.2 s; x ratios are against the first row of the streaming stage. load: the machine's 1-minute load "
        "average when the run ended."], harness.command(), machine)


if __name__ == "__main__":
    main()
