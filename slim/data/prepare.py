"""The `data` stage: a source -> users.parquet, items.parquet and fixed evaluation candidates."""

from __future__ import annotations

import dataclasses
import logging
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from slim import atomic, storage
from slim import columns as C
from slim.data import sequences as S
from slim.data import sources, tables
from slim.rundir import Manifest, RunDir, file_fingerprint

log = logging.getLogger(__name__)


# One layout, two names: `amazon2018-games` was its first name (the SeqRecBenchmark Games export uses it).
JSONL_SEQUENCES = ("jsonl-sequences", "amazon2018-games")
SOURCES = ("jsonl-sequences", "amazon2018-games", "interactions-table", "amazon-raw", "ml-100k")


@dataclass(frozen=True)
class DataConfig:
    run_dir: str = "runs/default"
    source: Literal[SOURCES] = "ml-100k"
    path: str = ""  # jsonl-sequences: folder or URL with sequences.jsonl(.gz) + items.tsv
    reviews: str = ""  # amazon-raw: reviews JSON lines (gz or not)
    meta: str = ""  # amazon-raw: metadata JSON lines (title, category, brand)
    # interactions-table: two CSV / TSV (.gz or not) / Parquet files; the items table is joined on `item_column`
    interactions: str = ""
    items: str = ""
    user_column: str = "user_id"
    item_column: str = "item_id"
    time_column: str = "timestamp"  # integer seconds or ISO 8601; "" = the row order is the time
    title_columns: tuple[str, ...] = ("title",)  # joined with ". " into the item title
    category_column: str = ""  # "" = none
    brand_column: str = ""
    min_user_interactions: int = 0  # k-core thresholds; 0/1 = no filter
    min_item_interactions: int = 0
    min_history: int = 3  # leave-one-out needs >= 1 training item + valid + test
    max_users: int = 0  # 0 = all; else a fixed-seed subsample (tiny runs)
    on_bad_row: Literal["error", "skip"] = "error"  # malformed lines and short histories
    missing_text: Literal["error", "skip"] = "skip"  # items with no title/category/brand
    num_negatives: int = C.NUM_NEGATIVES
    seed: int = 2024
    cache_dir: str = "~/.cache/slim"
    ray_address: Optional[str] = None
    num_cpus: Optional[int] = None

    def __post_init__(self):
        from slim.config import ConfigError

        if self.min_history < 3:  # else the data stage writes users that training rejects
            raise ConfigError(f"min_history: {self.min_history} is below 3; the leave-one-out split needs at least "
                              "one training item, a validation item and a test item per user")
        if self.num_negatives < 1:
            raise ConfigError(f"num_negatives: {self.num_negatives} must be at least 1")
        if self.source == "interactions-table":
            for key in ("interactions", "items", "user_column", "item_column"):
                if not getattr(self, key):
                    raise ConfigError(f"{key}: must be set for source interactions-table")
            if not self.title_columns:
                raise ConfigError("title_columns: name at least one items-table column for the item title")


RUNTIME_KEYS = ("ray_address", "num_cpus", "run_dir", "cache_dir")
TABLE_KEYS = ("interactions", "items", "user_column", "item_column", "time_column", "title_columns",
              "category_column", "brand_column")


def stage_config(cfg) -> dict:
    """The part of a config that decides a stage's output (not where or how it runs). Fingerprinted so that runs
    prepared before the table source and the `jsonl-sequences` name existed stay current: the table keys enter
    only for that source, and both names of the jsonl layout count as its first name."""
    out = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in RUNTIME_KEYS}
    if cfg.source != "interactions-table":
        for k in TABLE_KEYS:
            del out[k]
    if cfg.source in JSONL_SEQUENCES:
        out["source"] = "amazon2018-games"
    return out


def input_paths(cfg: DataConfig) -> dict:
    """Config key -> the path or URL it names, for the configured source."""
    if cfg.source in JSONL_SEQUENCES:
        return {"path": cfg.path}
    return {"interactions-table": {"interactions": cfg.interactions, "items": cfg.items},
            "amazon-raw": {"reviews": cfg.reviews, "meta": cfg.meta}, "ml-100k": {}}[cfg.source]


def _inputs(cfg: DataConfig) -> dict:
    local = [p for p in input_paths(cfg).values() if p and not p.startswith(("http://", "https://"))]
    for p in local:
        if not Path(p).expanduser().exists():
            raise sources.DataError(f"input not found: {p} (data.source={cfg.source})")
    return {p: file_fingerprint(Path(p).expanduser()) for p in local}


def _read(cfg: DataConfig, problems: sources.Problems) -> sources.Raw:
    if cfg.source in JSONL_SEQUENCES:
        return sources.read_seqrec(cfg.path, cfg.cache_dir, problems)
    if cfg.source == "interactions-table":
        return tables.read_tables(cfg, problems)
    if cfg.source == "amazon-raw":
        return sources.read_amazon_raw(cfg.reviews, cfg.meta, cfg.cache_dir, problems)
    return sources.read_ml100k(cfg.cache_dir, problems)


def filter_interactions(cfg: DataConfig, ucodes: np.ndarray, icodes: np.ndarray, text_ok: np.ndarray,
                        user_vocab: np.ndarray, problems: sources.Problems) -> np.ndarray:
    """Keep-mask over interactions: items with text, then the k-core, then users long enough to split, each
    inside one fixed point, so that no later filter takes a user or an item back below its threshold."""
    keep = S.k_core(ucodes, icodes, cfg.min_user_interactions, cfg.min_item_interactions, text_ok)
    counts = np.bincount(ucodes[keep], minlength=len(user_vocab))
    short = (counts > 0) & (counts < cfg.min_history)
    if short.any():
        ex = user_vocab[short][0]
        msg = f"{short.sum()} user(s) have fewer than {cfg.min_history} interactions (e.g. user {ex})"
        problems.report("short_history", msg + "; set data.on_bad_row=skip to drop them")
        # skipped: the stricter user threshold can take items below theirs, so the fixed point runs again
        keep = S.k_core(ucodes, icodes, max(cfg.min_user_interactions, cfg.min_history),
                        cfg.min_item_interactions, keep)
    return keep


def build_tables(cfg: DataConfig, raw: sources.Raw, problems: sources.Problems) -> tuple[pa.Table, pa.Table]:
    text_ok = S.drop_items_without_text(raw, cfg.missing_text, problems)
    user_vocab, ucodes = S.encode_ids(raw.users)
    _, icodes0 = S.encode_ids(raw.items)
    times = np.asarray(raw.times, dtype=np.int64)
    keep = filter_interactions(cfg, ucodes, icodes0, text_ok, user_vocab, problems)
    if not keep.any():
        raise sources.DataError("no users left after filtering; check the input and the k-core thresholds")
    g = S.build_users(ucodes[keep], icodes0[keep], times[keep])
    users_keep = np.ones(len(g["lengths"]), dtype=bool)
    if cfg.max_users and users_keep.sum() > cfg.max_users:
        # a sample drawn from the core (not a filter: re-coring it would change the runs prepared so far)
        pick = np.random.default_rng(cfg.seed).choice(np.flatnonzero(users_keep), cfg.max_users, replace=False)
        users_keep = np.zeros_like(users_keep)
        users_keep[pick] = True
    per_event = np.repeat(users_keep, g["lengths"])
    # Re-index items over what survived so ids are contiguous 1..N (0 is padding).
    item_vocab0 = np.unique(np.asarray(raw.items, dtype=object).astype(str))
    used, item_idx = np.unique(g["items"][per_event], return_inverse=True)
    item_ids = (item_idx + 1).astype(np.int32)
    lengths = g["lengths"][users_keep]
    offsets = np.r_[0, np.cumsum(lengths)]
    ts = g["times"][per_event]
    ends = offsets[1:]
    users = pa.table({
        C.USER_ID: pa.array(np.arange(len(lengths), dtype=np.int64)),
        C.RAW_USER_ID: pa.array(user_vocab[g["user_codes"][users_keep]].astype(str)),
        C.ITEM_IDS: S.list_array(item_ids, offsets, np.int32),
        C.TIMESTAMPS: S.list_array(ts, offsets, np.int64),
        C.HISTORY_LEN: pa.array(lengths.astype(np.int32)),
        C.VALID_ITEM: pa.array(item_ids[ends - 2]),
        C.TEST_ITEM: pa.array(item_ids[ends - 1]),
    })
    train_mask = np.ones(len(item_ids), dtype=bool)
    train_mask[ends - 1] = False
    train_mask[ends - 2] = False
    pop = np.bincount(item_ids[train_mask], minlength=len(used) + 1)[1:]
    raw_ids = item_vocab0[used]
    meta = [raw.item_text[r] for r in raw_ids]
    items = pa.table({
        C.ITEM_ID: pa.array(np.arange(1, len(used) + 1, dtype=np.int32)),
        C.RAW_ITEM_ID: pa.array(raw_ids.astype(str)),
        C.TITLE: [m["title"] for m in meta],
        C.CATEGORY: [m["category"] for m in meta],
        C.BRAND: [m["brand"] for m in meta],
        C.TEXT: [S.item_text(m["title"], m["category"], m["brand"]) for m in meta],
        C.POPULARITY: pa.array(pop.astype(np.int64)),
    })
    return users, items


def write_candidates(cfg: DataConfig, users: pa.Table, items: pa.Table, out_dir) -> int:
    """Sample valid/test x uni100/pop100 candidates for every user on Ray Data; returns rows written."""
    import ray

    pop = items.column(C.POPULARITY).to_numpy().astype(np.float64) + 1.0  # +1: unseen items stay drawable
    cdf = np.cumsum(pop / pop.sum())
    n_items = items.num_rows
    if n_items - int(users.column(C.HISTORY_LEN).to_numpy().max()) < cfg.num_negatives:
        raise sources.DataError(f"only {n_items} items: too few to draw {cfg.num_negatives} negatives per user")
    ds = ray.data.from_arrow(users.select([C.USER_ID, C.ITEM_IDS]))
    ds = ds.repartition(max(1, min(64, users.num_rows // 2000)))
    ds = ds.map_batches(
        S.candidates_batch, batch_size=1024, batch_format="numpy",
        fn_kwargs={"seed": cfg.seed, "num_items": n_items, "n": cfg.num_negatives, "cdf": cdf},
    )
    if storage.is_remote(out_dir):
        # Workers on any node write their files straight to the bucket (no rename there): the folder counts once
        # the data manifest, invalidated before and written after, names it.
        storage.remove_tree(out_dir)
        where, fs = storage.ray_paths(out_dir)
        ds.write_parquet(where, filesystem=fs)
    else:
        with atomic.writing(out_dir, replace_dir=True) as tmp:  # the folder appears whole or not at all
            ds.write_parquet(str(tmp))
        where, fs = str(out_dir), None
    return pq.ParquetDataset(where, filesystem=fs).read(columns=[C.USER_ID]).num_rows


def run(cfg: DataConfig, force: bool = False) -> Manifest:
    from slim.raycluster import init_ray

    rd = RunDir(cfg.run_dir)
    inputs = _inputs(cfg)
    if not force and rd.is_current("data", stage_config(cfg), inputs):
        log.info("data: manifest matches, skipping (use --force to rerun)")
        return rd.read_manifest("data")
    t0 = time.perf_counter()
    problems = sources.Problems(cfg.on_bad_row)
    raw = _read(cfg, problems)
    input_rows = len(raw.users)
    t_read = time.perf_counter()
    users, items = build_tables(cfg, raw, problems)
    del raw
    t_build = time.perf_counter()
    out = rd.stage_dir("data")
    rd.invalidate("data")
    atomic.write_parquet(out / "users.parquet", users)
    atomic.write_parquet(out / "items.parquet", items)
    init_ray(cfg.ray_address, cfg.num_cpus)
    n_cand = write_candidates(cfg, users, items, out / "candidates")
    t_end = time.perf_counter()
    counts = {
        "users": users.num_rows, "items": items.num_rows,
        "interactions": int(users.column(C.HISTORY_LEN).to_numpy().sum()), "candidate_rows": n_cand,
    }
    m = Manifest(
        "data", stage_config(cfg), inputs,
        outputs=[C.USERS_FILE, C.ITEMS_FILE, C.CANDIDATES_DIR], counts=counts,
        timings={"read_s": t_read - t0, "build_s": t_build - t_read, "candidates_s": t_end - t_build,
                 "total_s": t_end - t0},
        extra={"skipped": problems.summary(), "input_rows": input_rows, "rows_per_s": input_rows / (t_end - t0),
               "driver_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024},
    )
    rd.write_manifest(m)
    print_summary(m)
    return m


def print_summary(m: Manifest) -> None:
    c, t = m.counts, m.timings
    print(f"data: {c['users']:,} users / {c['items']:,} items / {c['interactions']:,} interactions; "
          f"{c['candidate_rows']:,} candidate rows; {t['total_s']:.1f}s "
          f"(read {t['read_s']:.1f}s, build {t['build_s']:.1f}s, candidates {t['candidates_s']:.1f}s); "
          f"{m.extra.get('rows_per_s', 0):,.0f} input rows/s; driver peak RSS {m.extra['driver_peak_rss_mb']:.0f} MB")
    for kind, v in m.extra["skipped"].items():
        print(f"  skipped {v['count']:,} ({kind}), e.g. {v['example']}")
