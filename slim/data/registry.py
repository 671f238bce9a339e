"""The data sources, by name: what `data.source` may say, and for each how it is read, which `data.*` keys it reads,
which of them name input files (fingerprinted, checked by `--check`) and what must be set.

A new format is one module with a reader (`read(cfg, problems) -> sources.Source`) plus one line in REGISTRY below;
the stage (slim/data/stage.py) asks this table and nothing else. A key the new format needs that no source has yet
is one field of DataConfig too (typed, with its comment: docs/config.md is generated from it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from slim.data import sources, tables

# Keys every run prepared before this table existed fingerprinted whatever its source: they stay in every source's
# fingerprint, so those run directories stay current. A new source's keys enter only its own fingerprint.
ALWAYS_FINGERPRINTED = ("path", "reviews", "meta")


@dataclass(frozen=True)
class DataSource:
    """The contract of a data source.

    read(cfg, problems) -> sources.Source: the interactions in chunks of (users, items, times) lists in file order
      (all strings but int epoch-second times) and the item text {raw item id: {"title", "category", "brand"}}
      (all three keys, "" where the source has none);
      bad rows go to `problems` (sources.Problems: error or skip by `data.on_bad_row`) naming the file and line.
      When `cfg.until` is set the times must be real (the stage cuts at it: slim.data.snapshot).
    keys: the DataConfig fields it reads (beyond the shared ones: cache_dir, on_bad_row, until, ...); they decide
      its output, so they enter the stage's fingerprint, and only when this source is configured.
    inputs: those of `keys` that name a file, folder or URL: fingerprinted by content (`--check` says when they
      changed) and listed by `--check` as `data.<key>: <path>`, a missing local one a problem.
    required: keys that must not be empty (a ConfigError names the first one missing).
    validate(cfg): further checks of its keys, raising ConfigError; None: none.
    describe(cfg) -> lines `--check` adds about where the data comes from (a cached download); None: none.
    fingerprint_as: the name its manifests record (an alias keeps the first name's fingerprint); "" = its own.
    """

    read: Callable[[object, sources.Problems], sources.Source]
    keys: tuple[str, ...] = ()
    inputs: tuple[str, ...] = ()
    required: tuple[str, ...] = ()
    validate: Optional[Callable[[object], None]] = None
    describe: Optional[Callable[[object], list]] = None
    fingerprint_as: str = ""


def _jsonl(cfg, problems):
    return sources.read_seqrec(cfg.path, cfg.cache_dir, problems, need_time=cfg.until is not None)


def _amazon_raw(cfg, problems):
    return sources.read_amazon_raw(cfg.reviews, cfg.meta, cfg.cache_dir, problems)


def _ml100k(cfg, problems):
    return sources.read_ml100k(cfg.cache_dir, problems)


def _ml100k_wheel(cfg) -> list:
    from pathlib import Path

    cached = sorted((Path(cfg.cache_dir).expanduser() / "wheels").glob("recbole-1.2.1-*.whl"))
    return [f"MovieLens-100K from {cached[0] if cached else 'recbole==1.2.1 (fetched with pip once)'}"]


def _table_checks(cfg) -> None:
    from slim.runtime.config import ConfigError

    if not cfg.title_columns:
        raise ConfigError("title_columns: name at least one items-table column for the item title")
    if cfg.until is not None and not cfg.time_column:
        raise ConfigError("until: the interactions table has no timestamps (data.time_column is empty), "
                          "so it cannot be cut at a time")


# One layout, two names: `amazon2018-games` was its first name (the SeqRecBenchmark Games export uses it).
_JSONL = DataSource(_jsonl, keys=("path",), inputs=("path",), fingerprint_as="amazon2018-games")

REGISTRY: dict[str, DataSource] = {
    "jsonl-sequences": _JSONL,
    "amazon2018-games": _JSONL,
    "interactions-table": DataSource(
        tables.read_tables, keys=tables.KEYS, inputs=("interactions", "items"),
        required=("interactions", "items", "user_column", "item_column"), validate=_table_checks),
    "amazon-raw": DataSource(_amazon_raw, keys=("reviews", "meta"), inputs=("reviews", "meta")),
    "ml-100k": DataSource(_ml100k, describe=_ml100k_wheel),
}


def get(name: str) -> DataSource:
    """The source registered as `name`; an unknown name is a ConfigError listing the registered ones (the one check
    of data.source: DataConfig makes it when built)."""
    if name not in REGISTRY:
        from slim.runtime.config import ConfigError

        raise ConfigError(f"source: {name!r} is not one of {', '.join(map(repr, REGISTRY))}")
    return REGISTRY[name]


def private_keys(name: str) -> set:
    """Keys other sources read that `name` does not: left out of its fingerprint (all but ALWAYS_FINGERPRINTED)."""
    own = set(get(name).keys)
    return {k for s in REGISTRY.values() for k in s.keys} - own - set(ALWAYS_FINGERPRINTED)
