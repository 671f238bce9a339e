"""The `data` stage: a source -> users.parquet, items.parquet and fixed evaluation candidates."""

from __future__ import annotations

import dataclasses
import datetime
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional, Union

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from slim.io import atomic
from slim.io import storage
from slim.io import columns as C
from slim.data import buckets
from slim.data import sequences
from slim.data import identity, registry, snapshot, sources, stream
from slim.io.rundir import Manifest, RunDir, file_fingerprint, peak_rss_mb
from slim.runtime.console import say

log = logging.getLogger(__name__)

STAGE = C.DATA_DIR  # data/manifest.json


@dataclass(frozen=True)
class DataConfig:
    run_dir: str = "runs/default"
    source: str = "ml-100k"  # the input format: a name in slim/data/registry.py (README "Data sources")
    path: str = ""  # jsonl-sequences: folder or URL with sequences.jsonl(.gz) + items.tsv
    reviews: str = ""  # amazon-raw: reviews JSON lines (gz or not)
    meta: str = ""  # amazon-raw: metadata JSON lines (title, category, brand)
    # interactions-table: two CSV / TSV (.gz or not) / Parquet files; the items table is joined on `item_column`
    interactions: str = ""
    items: str = ""
    user_column: str = "user_id"  # interactions-table: the user id column
    item_column: str = "item_id"  # interactions-table: the item id column, in both tables
    time_column: str = "timestamp"  # integer seconds or ISO 8601; "" = the row order is the time
    title_columns: tuple[str, ...] = ("title",)  # joined with ". " into the item title
    category_column: str = ""  # "" = none
    brand_column: str = ""  # "" = none
    min_user_interactions: int = 0  # k-core thresholds; 0/1 = no filter
    min_item_interactions: int = 0  # k-core: users per item; 0/1 = no filter
    min_history: int = 3  # leave-one-out needs >= 1 training item + valid + test
    # 0 = all; else the users whose raw ids hash smallest with `seed` (tiny runs; a newer snapshot keeps them)
    max_users: int = 0
    # A snapshot: only interactions with timestamp <= until are read (epoch seconds or an ISO 8601 date / date-time,
    # naive = UTC, a date = its midnight); the filters above apply after the cut. null = the whole source.
    until: Optional[Union[int, str, datetime.date]] = None
    on_bad_row: Literal["error", "skip"] = "error"  # malformed lines and short histories
    missing_text: Literal["error", "skip"] = "skip"  # items with no title/category/brand
    num_negatives: int = C.NUM_NEGATIVES  # sampled candidates per target (uni100, pop100)
    seed: int = 2024  # the candidate sampling and the max_users subsample
    cache_dir: str = "~/.cache/slim"  # downloads (the recbole wheel for ml-100k)
    # How the work is cut (not what it produces): rows per chunk read by the driver, rows per bucket of users
    # handled by one task. Memory grows with these and the number of workers, not with the number of users.
    block_rows: int = 1_000_000
    bucket_rows: int = 2_000_000  # (block_rows, bucket_rows: see above)
    ray_address: Optional[str] = None
    num_cpus: Optional[int] = None

    def __post_init__(self):
        from slim.runtime.config import ConfigError

        if self.min_history < 3:  # else the data stage writes users that training rejects
            raise ConfigError(f"min_history: {self.min_history} is below 3; the leave-one-out split needs at least "
                              "one training item, a validation item and a test item per user")
        if self.block_rows < 1 or self.bucket_rows < 1:
            raise ConfigError(f"block_rows: {self.block_rows}, bucket_rows: {self.bucket_rows}: both must be >= 1")
        if self.num_negatives < 1:
            raise ConfigError(f"num_negatives: {self.num_negatives} must be at least 1")
        src = registry.get(self.source)  # the one check of the name: the registry's
        for key in src.required:
            if not getattr(self, key):
                raise ConfigError(f"{key}: must be set for source {self.source}")
        # stored as epoch seconds: the fingerprint then says the same for 2024-01-31 and 1706659200
        object.__setattr__(self, "until", snapshot.until_seconds(self.until))
        if src.validate is not None:
            src.validate(self)


CANDIDATE_BATCH = 1024  # users sampled (and written as one row group) at a time in a bucket's task
RUNTIME_KEYS = ("ray_address", "num_cpus", "run_dir", "cache_dir", "block_rows", "bucket_rows")


def stage_config(cfg) -> dict:
    """The part of a config that decides a stage's output (not where or how it runs). Fingerprinted so that runs
    prepared before the registry, the table source and the `jsonl-sequences` name existed stay current: a source's
    keys enter only for that source (but registry.ALWAYS_FINGERPRINTED), and an alias counts as its first name."""
    src = registry.get(cfg.source)
    skip = set(RUNTIME_KEYS) | registry.private_keys(cfg.source)
    out = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in skip}
    if cfg.until is None:  # runs prepared before the setting existed stay current
        del out["until"]
    if src.fingerprint_as:
        out["source"] = src.fingerprint_as
    if cfg.max_users:  # the sample is drawn by raw-id hash now: a run drawn by position is not current
        out["max_users_draw"] = "raw-id hash"
    return out


def input_paths(cfg: DataConfig) -> dict:
    """Config key -> the path or URL it names, for the configured source."""
    return {k: getattr(cfg, k) for k in registry.get(cfg.source).inputs}


def _inputs(cfg: DataConfig) -> dict:
    """Input path -> content fingerprint (slim.io.rundir.file_fingerprint): the first check on a machine reads every
    byte of the inputs once (a bucket's are downloaded for it), later ones reuse the hash while names, sizes and
    times hold."""
    local = [p for p in input_paths(cfg).values() if p and not p.startswith(("http://", "https://"))]
    paths = {p: storage.path(p) if storage.is_remote(p) else Path(p).expanduser() for p in local}
    for p, where in paths.items():
        if not where.exists():
            raise sources.DataError(f"input not found: {p} (data.source={cfg.source})")
    return {p: file_fingerprint(where) for p, where in paths.items()}


def _read(cfg: DataConfig, problems: sources.Problems) -> sources.Source:
    """The configured source (slim/data/registry.py), cut at `data.until` when set."""
    return snapshot.cut(registry.get(cfg.source).read(cfg, problems), cfg.until)


def build_tables(cfg: DataConfig, source: sources.Source, problems: sources.Problems) -> tuple[pa.Table, pa.Table]:
    """(users, items) in this process, without Ray: for small inputs and tests (`run` streams them to disk)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = stream.build(cfg, source, problems, tmp, parallel=False)
        return pa.concat_tables([pq.read_table(p) for p in out["parts"]]), out["items"]


def write_candidates(cfg: DataConfig, parts: list, max_len: int, items: pa.Table, out_dir) -> int:
    """Sample valid/test x uni100/pop100 candidates for every user: one Ray task per users part file (a bucket),
    each writing its own candidates file. Returns rows written."""
    n_items = items.num_rows
    present = items.column(C.PRESENT).to_numpy(zero_copy_only=False)
    pop = items.column(C.POPULARITY).to_numpy().astype(np.float64) + 1.0  # +1: unseen items stay drawable
    cdf, uni = sequences.weights_cdf(pop * present), None
    if not present.all():  # an earlier snapshot's item that this one lacks is never a candidate
        uni = sequences.weights_cdf(present.astype(np.float64))
    if int(present.sum()) - max_len < cfg.num_negatives:
        raise sources.DataError(f"only {int(present.sum())} items: too few to draw {cfg.num_negatives} negatives "
                                "per user")

    def sample(where: str) -> int:
        args = [(p, f"{where}/part-b{k:05d}.parquet", cfg.seed, n_items, cfg.num_negatives, cdf, CANDIDATE_BATCH,
                 uni) for k, p in enumerate(parts)]
        return sum(stream.run_tasks(buckets.candidates, args, parallel=True))

    if storage.is_remote(out_dir):
        # Workers on any node write their files straight to the bucket (no rename there): the folder counts once
        # the data manifest, invalidated before and written after, names it.
        storage.remove_tree(out_dir)
        return sample(str(out_dir))
    with atomic.writing(out_dir, replace_dir=True) as tmp:  # the folder appears whole or not at all
        return sample(str(tmp))


def write_users(parts: list, dest, columns: list | None = None) -> None:
    """users.parquet (or the user map: `columns`) as one file, appended part after part (one bucket's users in
    memory at a time)."""
    with atomic.writing(dest) as tmp:
        writer = None
        for p in parts:
            t = storage.read_table(p, columns=columns)
            writer = writer or buckets.writer(str(tmp), t.schema)
            writer.write_table(t)
        writer.close()


def run(cfg: DataConfig, force: bool = False) -> Manifest:
    from slim.runtime.raycluster import init_ray

    rd = RunDir(cfg.run_dir)
    inputs = _inputs(cfg)
    if not force and rd.is_current(STAGE, stage_config(cfg), inputs):
        return rd.read_manifest(STAGE)
    t0 = time.perf_counter()
    problems = sources.Problems(cfg.on_bad_row)
    out = rd.stage_dir(STAGE)
    prev = identity.load(rd.root)  # a previous snapshot's ids are kept (README "Refreshing a run")
    # Chunks and buckets of a run live under the stage folder (shared by every node, local or a bucket); a killed
    # run's leftovers are removed first and the whole folder at the end.
    scratch = out / ".scratch" if storage.is_remote(out) else storage.path(out).resolve() / ".scratch"
    storage.remove_tree(scratch)
    try:
        built = stream.build(cfg, _read(cfg, problems), problems, str(scratch), parallel=True,
                             start=lambda: init_ray(cfg.ray_address, cfg.num_cpus), prev=prev)
        t_build = time.perf_counter()
        rd.invalidate(STAGE)
        # items and the user map first: each is a superset of the previous one, so a kill between the writes
        # leaves maps that a rerun carries to the same ids
        items = built["items"]
        atomic.write_parquet(rd.path(C.ITEMS_FILE), items)
        write_users(built["ids"], rd.path(C.USER_IDS_FILE), columns=[C.RAW_USER_ID, C.USER_ID])
        write_users(built["parts"], rd.path(C.USERS_FILE))
        n_cand = write_candidates(cfg, built["parts"], built["max_len"], items, out / "candidates")
    finally:
        storage.remove_tree(scratch)
    t_end = time.perf_counter()
    counts = {"users": built["users"], "items": items.num_rows, "interactions": built["interactions"],
              "candidate_rows": n_cand}
    rows = built["input_rows"]
    m = Manifest(
        STAGE, stage_config(cfg), inputs,
        outputs=[C.USERS_FILE, C.ITEMS_FILE, C.USER_IDS_FILE, C.CANDIDATES_DIR], counts=counts,
        timings={**built["timings"], "build_s": t_build - t0 - built["timings"]["read_s"],
                 "candidates_s": t_end - t_build, "total_s": t_end - t0},
        extra={"skipped": problems.summary(), "input_rows": rows, "rows_per_s": rows / (t_end - t0),
               "read_rows_per_s": rows / max(built["timings"]["read_s"], 1e-9),
               "buckets": built["buckets"], "kcore_passes": built["kcore_passes"],
               "driver_peak_rss_mb": peak_rss_mb(), "snapshot": _snapshot(cfg, prev, built)},
    )
    rd.write_manifest(m)
    print_summary(m)
    return m


def _snapshot(cfg: DataConfig, prev: identity.Previous, built: dict) -> dict:
    """What the manifest says of the snapshot: the cut, and what was carried from the previous one."""
    present = built["items"].column(C.PRESENT).to_numpy(zero_copy_only=False)
    return {"until": cfg.until, "previous_snapshot": prev.items is not None, "users_new": built["new_users"],
            "items_absent": int(len(present) - np.count_nonzero(present))}


def print_summary(m: Manifest) -> None:
    c, t = m.counts, m.timings
    say(f"data: {c['users']:,} users / {c['items']:,} items / {c['interactions']:,} interactions; "
          f"{c['candidate_rows']:,} candidate rows; {t['total_s']:.1f}s "
          f"(read {t['read_s']:.1f}s, build {t['build_s']:.1f}s, candidates {t['candidates_s']:.1f}s); "
          f"read {m.extra.get('input_rows', 0):,} input rows at {m.extra.get('rows_per_s', 0):,.0f} rows/s over the "
          f"stage ({m.extra.get('read_rows_per_s', 0):,.0f} rows/s while reading); "
          f"{m.extra.get('buckets', 1)} bucket(s), {m.extra.get('kcore_passes', 1)} k-core pass(es); "
          f"driver peak RSS {m.extra['driver_peak_rss_mb']:.0f} MB")
    for kind, v in m.extra["skipped"].items():
        say(f"  skipped {v['count']:,} ({kind}), e.g. {v['example']}")


# The stage's face (slim/runner/stages.py): --check, the planner and the manifests read only these.
CONFIG = DataConfig
WRITES = (STAGE,)


def reads(cfg: DataConfig) -> list[str]:
    """The upstream stages whose output this stage reads: none, it reads the source files."""
    return []


def own_inputs(cfg: DataConfig, root=None) -> dict:
    """The inputs fingerprinted from files rather than upstream manifests."""
    return _inputs(cfg)


def resources(cfg: DataConfig, problems: list) -> list[str]:
    """Where the source files come from, for --check; a missing one is appended to problems."""
    from slim.runtime.preflight import path_line

    out = [path_line(f"data.{key}", p, problems) for key, p in input_paths(cfg).items()]
    describe = registry.get(cfg.source).describe
    return out + (describe(cfg) if describe is not None else [])
