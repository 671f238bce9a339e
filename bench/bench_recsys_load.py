"""Driver memory and time of the recommender stages' data loading at scale, against an earlier commit's loader run
in the same session on the same run directory.

    .venv/bin/python bench/bench_recsys_load.py --users 1000000 [--baseline 2b83ff6] [--inputs DIR]

Prepares a generated input (`slim.testing.sources.write_seqrec`, 100,000 items) with the data stage, then runs
`slim.recsys.data.load` and reads one block's candidates (`evaluate.block_users` users, one protocol: what one
ranking task reads) in a fresh process per code version, and reports its wall time and peak RSS (the loader runs in
one process, with nothing shared, so RSS is its memory).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as `python bench/x.py`: the repository first

from bench import harness  # noqa: E402
from bench.bench_prepare import generated  # noqa: E402
from bench.harness import ROOT  # noqa: E402

PROBE = """
import json, resource, sys, time
from slim.recsys import data as recdata
t0 = time.perf_counter()
d = recdata.load(sys.argv[1])
key, block = ("valid", "uni100"), int(sys.argv[2])
c = d.candidates[key][:block] if isinstance(d.candidates, dict) else d.candidates.subset(0, block)[key]
print("RESULT " + json.dumps({"users": len(d.seqs), "block": list(c.shape), "wall_s": time.perf_counter() - t0,
                              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def probe(code: Path, run: str, block: int) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, run, str(block)], cwd=code, capture_output=True, text=True,
                         env=harness.subprocess_env(code), check=True).stdout
    return json.loads(next(ln for ln in out.splitlines() if ln.startswith("RESULT "))[7:])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--users", type=int, default=1_000_000)
    p.add_argument("--block", type=int, default=50_000, help="users per ranking task (evaluate.block_users)")
    p.add_argument("--baseline", default="2b83ff6", help="commit whose loader read every candidate up front")
    p.add_argument("--inputs", default="", help="folder that keeps the generated inputs between runs")
    p.add_argument("--out", default="bench/results/recsys_load.md")
    a = p.parse_args()
    machine = harness.Machine()
    with harness.scratch() as tmp:
        src = generated(Path(a.inputs or tmp), a.users, 100_000)
        from slim.data import DataConfig
        from slim.data import stage as prepare

        prepare.run(DataConfig(run_dir=f"{tmp}/run", source="jsonl-sequences", path=str(src)))
        old = Path(tmp) / "baseline"
        old.mkdir()
        tar = subprocess.run(["git", "-C", str(ROOT), "archive", a.baseline], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(old)], input=tar, check=True)
        rows = [(f"{a.baseline} (all candidates at load)", probe(old, f"{tmp}/run", a.block)),
                ("this checkout (per protocol and block)", probe(ROOT, f"{tmp}/run", a.block))]
    base = rows[0][1]
    lines = ["| loader | users | block read | wall s | peak RSS MB | x time | x RSS |", "|---|---|---|---|---|---|---|"]
    for name, r in rows:
        lines.append(f"| {name} | {r['users']:,} | {r['block'][0]:,} x {r['block'][1]} | {r['wall_s']:.1f} | "
                     f"{r['peak_rss_mb']:,.0f} | {r['wall_s'] / base['wall_s']:.2f} | "
                     f"{r['peak_rss_mb'] / base['peak_rss_mb']:.2f} |")
    lines += ["", "Each loader runs in a fresh process on the same run directory (the data stage's output for a "
              "generated input with 100,000 items): `slim.recsys.data.load`, then one block's candidates of one "
              "protocol, as one ranking task reads them. x: against the first row."]
    harness.write_results(a.out, f"Recommender data loading at {a.users:,} users", lines, harness.command(), machine)


if __name__ == "__main__":
    main()
