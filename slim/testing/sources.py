"""Generated raw inputs in the data stage's source formats, for the tests and the scale benchmarks (bench_prepare,
bench_recsys_load)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np


def write_seqrec(root: Path, num_users: int, num_items: int, mean_len: float = 9.0, seed: int = 0,
                 bad_lines: dict | None = None, items_without_title: tuple = ()) -> Path:
    """sequences.jsonl.gz + items.tsv like the SeqRecBenchmark export; Zipf-ish item popularity."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    pop = 1.0 / np.arange(1, num_items + 1) ** 0.8
    pop /= pop.sum()
    bad_lines = bad_lines or {}
    with gzip.open(root / "sequences.jsonl.gz", "wt") as f:
        chunk = 100_000
        for start in range(0, num_users, chunk):
            n = min(chunk, num_users - start)
            lens = np.maximum(5, rng.poisson(mean_len - 5, n) + 5)
            items = rng.choice(num_items, size=int(lens.sum()), p=pop) + 100
            t0 = rng.integers(1_300_000_000, 1_500_000_000, n)
            off = np.r_[0, np.cumsum(lens)]
            lines = []
            for j in range(n):
                uid = start + j
                if uid in bad_lines:
                    lines.append(bad_lines[uid])
                    continue
                ids = items[off[j]:off[j + 1]].tolist()
                ts = (t0[j] + 86400 * np.arange(lens[j])).tolist()
                lines.append(json.dumps({"user_id": uid, "item_ids": ids, "timestamps": ts}))
            f.write("\n".join(lines) + "\n")
    with open(root / "items.tsv", "w") as f:
        f.write("ItemID\tTitle\n")
        for i in range(num_items):
            title = "" if i + 100 in items_without_title else f"Game {i} - Console {i % 7}"
            f.write(f"{i + 100}\t{title}\n")
    return root


def write_amazon_raw(root: Path, reviews: list[tuple], meta: dict, gz: bool = True) -> tuple[Path, Path]:
    """reviews: [(reviewerID, asin, unixReviewTime)], meta: asin -> {title, category, brand}."""
    root.mkdir(parents=True, exist_ok=True)
    op = (lambda p: gzip.open(p, "wt")) if gz else (lambda p: open(p, "w"))
    ext = ".json.gz" if gz else ".json"
    rp, mp = root / f"reviews{ext}", root / f"meta{ext}"
    with op(rp) as f:
        for u, i, t in reviews:
            f.write(json.dumps({"reviewerID": u, "asin": i, "unixReviewTime": t, "overall": 5.0}) + "\n")
    with op(mp) as f:
        for asin, m in meta.items():
            f.write(json.dumps({"asin": asin, **m}) + "\n")
    return rp, mp
