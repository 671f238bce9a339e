"""Data stage: wall time and peak memory on Amazon Games and on generated inputs of growing size.

    .venv/bin/python bench/bench_prepare.py [--games ../shared/data/amazon2018-games] [--sizes 50000,200000,1000000]

Prints each run and the growth ratios against the smallest generated input (same session, same machine).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.memwatch import PeakMem  # noqa: E402
from slim.data import DataConfig, prepare  # noqa: E402
from slim.raycluster import init_ray  # noqa: E402
from tests.datagen import write_seqrec  # noqa: E402


def one(name: str, cfg: DataConfig) -> dict:
    with PeakMem() as mem:
        t0 = time.perf_counter()
        m = prepare.run(cfg, force=True)
        wall = time.perf_counter() - t0
    row = {"input": name, **m.counts, "wall_s": round(wall, 1), "peak_rss_mb": round(mem.peak_rss_mb),
           **{k: round(v, 1) for k, v in m.timings.items()}}
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--games", default=str(Path(__file__).resolve().parents[2] / "shared/data/amazon2018-games"))
    p.add_argument("--sizes", default="50000,200000,1000000")
    p.add_argument("--out", default="bench/results/prepare.md")
    a = p.parse_args()
    init_ray()  # started once, outside the timed runs
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if Path(a.games).exists():
            rows.append(one("amazon2018-games", DataConfig(run_dir=f"{tmp}/games", source="jsonl-sequences",
                                                           path=a.games)))
        for n in [int(s) for s in a.sizes.split(",")]:
            t0 = time.perf_counter()
            src = write_seqrec(Path(tmp) / f"gen{n}", n, max(20_000, n // 20), seed=1)
            print(f"generated {n:,} users in {time.perf_counter() - t0:.0f}s", flush=True)
            rows.append(one(f"generated-{n}", DataConfig(run_dir=f"{tmp}/run{n}", source="jsonl-sequences",
                                                         path=str(src))))
    gen = [r for r in rows if r["input"].startswith("generated")]
    base = gen[0] if gen else None
    lines = ["| input | users | items | interactions | wall s | read s | candidates s | peak RSS MB | x users | x time | x memory |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratios = ("", "", "") if base is None else (
            f"{r['users'] / base['users']:.1f}", f"{r['wall_s'] / base['wall_s']:.1f}",
            f"{r['peak_rss_mb'] / base['peak_rss_mb']:.1f}")
        lines.append(f"| {r['input']} | {r['users']:,} | {r['items']:,} | {r['interactions']:,} | {r['wall_s']} | "
                     f"{r['read_s']} | {r['candidates_s']} | {r['peak_rss_mb']:,} | " + " | ".join(ratios) + " |")
    table = "\n".join(lines)
    print(table)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(f"# Data stage scaling\n\nCommand: `{' '.join(sys.argv)}`\n\n{table}\n\n"
                           "Peak RSS is the driver plus every Ray process it started (sampled every 0.2 s); "
                           "ratios are against the smallest generated input.\n")


if __name__ == "__main__":
    main()
