"""A finished `data` stage written directly (users.parquet, items.parquet, manifest), without running it.

The data stage itself is tested in test_data.py; the student, encode and teacher tests and their benchmarks need only
its two tables, and sampling candidates would cost a minute on 2 cores. Two shapes:
- `write_run_data`: user_id, item_ids, history_len (streamed in chunks: the benchmarks write 1M users), items with
  generated titles; the student and encode stages' input.
- `write_data_stage`: every column the data stage writes (raw ids, timestamps, valid/test items) and items with
  category and brand; the teacher's input.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from slim.io import columns as C
from slim.io.rundir import Manifest, RunDir

WORDS = ("space", "racing", "puzzle", "dragon", "soccer", "zombie", "pixel", "quest", "ninja", "farm", "galaxy",
         "kart", "chess", "legend", "shadow", "robot", "island", "castle", "hero", "tactics")


def item_titles(num_items: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, 3)).title() + f" {i}" for i in range(1, num_items + 1)]


def write_run_data(run_dir: str | Path, num_users: int, num_items: int = 50, mean_len: int = 8, seed: int = 0,
                   long_user: int | None = None, chunk: int = 100_000) -> Path:
    """users.parquet (streamed in chunks) + items.parquet + data/manifest.json. `long_user` gets 24 items with
    120-character titles, so its prompt is far longer than the others'."""
    rng = np.random.default_rng(seed)
    root = Path(run_dir)
    (root / C.DATA_DIR).mkdir(parents=True, exist_ok=True)
    titles = item_titles(num_items, seed)
    if long_user is not None:
        for i in range(num_items - 24, num_items):
            titles[i] = (titles[i] + " Deluxe Edition " * 10)[:120]
    items = pa.table({C.ITEM_ID: pa.array(np.arange(1, num_items + 1, dtype=np.int32)),
                      C.RAW_ITEM_ID: [str(i) for i in range(num_items)], C.TITLE: titles,
                      C.CATEGORY: ["Games"] * num_items, C.BRAND: [""] * num_items, C.TEXT: titles,
                      C.POPULARITY: pa.array(np.ones(num_items, np.int64))})
    pq.write_table(items, root / C.ITEMS_FILE)
    schema = pa.schema([(C.USER_ID, pa.int64()), (C.ITEM_IDS, pa.list_(pa.int32())), (C.HISTORY_LEN, pa.int32())])
    with pq.ParquetWriter(root / C.USERS_FILE, schema) as w:
        for start in range(0, num_users, chunk):
            n = min(chunk, num_users - start)
            lens = rng.integers(max(3, mean_len - 4), mean_len + 5, n).astype(np.int32)  # [n]
            flat = rng.integers(1, max(2, num_items - 24) if long_user is not None else num_items + 1,
                                int(lens.sum())).astype(np.int32)
            lists = np.split(flat, np.cumsum(lens)[:-1])
            ids = np.arange(start, start + n, dtype=np.int64)
            if long_user is not None and start <= long_user < start + n:
                lists[long_user - start] = np.arange(num_items - 24 + 1, num_items + 1, dtype=np.int32)
                lens[long_user - start] = 24
            w.write_table(pa.table({C.USER_ID: ids, C.ITEM_IDS: pa.array(lists, pa.list_(pa.int32())),
                                    C.HISTORY_LEN: pa.array(lens)}, schema))
    RunDir(root).write_manifest(Manifest(C.DATA_DIR, {"generated": True, "users": num_users, "seed": seed}))
    return root

BRANDS = ("Nintendo", "Sony", "Sega", "")
CATS = ("Action", "RPG", "Puzzle", "")


def write_data_stage(root: Path, num_users: int, num_items: int = 60, seed: int = 0) -> RunDir:
    rng = np.random.default_rng(seed)
    lens = rng.integers(4, 30, num_users)
    hist = [rng.choice(np.arange(1, num_items + 1), n, replace=False).astype(np.int32) for n in lens]
    users = pa.table({
        C.USER_ID: pa.array(np.arange(num_users, dtype=np.int64)),
        C.RAW_USER_ID: [f"u{i}" for i in range(num_users)],
        C.ITEM_IDS: pa.array([h.tolist() for h in hist], pa.list_(pa.int32())),
        C.TIMESTAMPS: pa.array([list(range(len(h))) for h in hist], pa.list_(pa.int64())),
        C.HISTORY_LEN: pa.array(lens.astype(np.int32)),
        C.VALID_ITEM: pa.array([int(h[-2]) for h in hist], pa.int32()),
        C.TEST_ITEM: pa.array([int(h[-1]) for h in hist], pa.int32()),
    })
    titles = [f"Game {i}: The Quest" for i in range(1, num_items + 1)]
    cats = [CATS[i % 4] for i in range(num_items)]
    brands = [BRANDS[i % 4] for i in range(num_items)]
    texts = [". ".join(p for p in (t, f"Category: {c}" if c else "", f"Brand: {b}" if b else "") if p)
             for t, c, b in zip(titles, cats, brands)]
    items = pa.table({
        C.ITEM_ID: pa.array(np.arange(1, num_items + 1, dtype=np.int32)),
        C.RAW_ITEM_ID: [str(i) for i in range(num_items)],
        C.TITLE: titles, C.CATEGORY: cats, C.BRAND: brands, C.TEXT: texts,
        C.POPULARITY: pa.array(np.ones(num_items, dtype=np.int64)),
    })
    rd = RunDir(root)
    d = rd.stage_dir(C.DATA_DIR)
    pq.write_table(users, d / "users.parquet")
    pq.write_table(items, d / "items.parquet")
    rd.write_manifest(Manifest(C.DATA_DIR, {"generated": num_users, "seed": seed}, counts={"users": num_users}))
    return rd
