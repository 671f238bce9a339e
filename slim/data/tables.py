"""The `interactions-table` source: a plain interactions table (user, item, timestamp) and an items table (item id
plus the columns that make its text), each CSV, TSV (gzipped or not, standard quoting) or Parquet.

Column names come from the data config, so an export needs no renaming. A bad row (a missing field, a timestamp
that is neither integer seconds nor an ISO 8601 date) is reported with its file and line (Parquet: row number).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from slim.data.sources import DataError, Problems, Source, chunked, fetch, iter_csv, parse_time

# the DataConfig keys this source reads (slim.data.registry): fingerprinted only for source interactions-table
KEYS = ("interactions", "items", "user_column", "item_column", "time_column", "title_columns", "category_column",
        "brand_column")
SUFFIXES = {".csv": ",", ".tsv": "\t", ".tab": "\t", ".parquet": "parquet", ".pq": "parquet"}


def table_format(p: Path) -> str:
    """',' / '\\t' (delimited text) or 'parquet', from the file name (a .gz suffix is read through)."""
    name = p.name.lower().removesuffix(".gz")
    for suffix, fmt in SUFFIXES.items():
        if name.endswith(suffix) and not (fmt == "parquet" and p.name.lower().endswith(".gz")):
            return fmt
    raise DataError(f"{p}: unknown table format; name it *.csv, *.tsv (optionally .gz) or *.parquet")


def iter_parquet(p: Path, columns: list[str]) -> Iterator[tuple[str, list]]:
    """('file: row N', values of `columns`) per row, read a row group at a time."""
    try:
        f = pq.ParquetFile(p)
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"{p}: not a readable Parquet file ({e})") from None
    missing = [c for c in columns if c not in f.schema_arrow.names]
    if missing:
        raise DataError(f"{p}: no column {', '.join(map(repr, missing))} among {f.schema_arrow.names} "
                        "(column names are set in the data config)")
    row = 0
    for batch in f.iter_batches(columns=columns, batch_size=65_536):
        for values in zip(*(batch.column(c).to_pylist() for c in columns)):
            row += 1
            yield f"{p}: row {row}", list(values)


def iter_table(p: Path, columns: list[str], problems: Problems) -> Iterator[tuple[str, list]]:
    fmt = table_format(p)
    return iter_parquet(p, columns) if fmt == "parquet" else iter_csv(p, columns, problems, fmt)


def _text(v) -> str:
    return "" if v is None else str(v).strip()


def read_interactions(p: Path, cfg, problems: Problems) -> Iterator[tuple[list, list, list]]:
    """One ([user], [item], [time]) record per good row; without a time column (`time_column: ""`) the row order
    is the time."""
    cols = [cfg.user_column, cfg.item_column] + ([cfg.time_column] if cfg.time_column else [])
    n = 0
    for where, values in iter_table(p, cols, problems):
        u, i = _text(values[0]), _text(values[1])
        if not u or not i:
            problems.report("bad_field", f"{where}: empty {cfg.user_column!r} or {cfg.item_column!r}")
            continue
        if cfg.time_column:
            try:
                t = parse_time(values[2])
            except (TypeError, ValueError, OverflowError):
                problems.report("bad_timestamp", f"{where}: bad timestamp {values[2]!r} in column "
                                                 f"{cfg.time_column!r} (expected integer seconds or an ISO 8601 date)")
                continue
        else:
            t = n
        n += 1
        yield [u], [i], [t]


def read_item_text(p: Path, cfg, problems: Problems) -> dict[str, dict]:
    """raw item id -> {title, category, brand}: the title joins `title_columns` (". "), category and brand are
    single columns or none."""
    parts = {"title": list(cfg.title_columns), "category": [cfg.category_column] if cfg.category_column else [],
             "brand": [cfg.brand_column] if cfg.brand_column else []}
    cols = [cfg.item_column] + [c for v in parts.values() for c in v]
    text = {}
    for where, values in iter_table(p, list(dict.fromkeys(cols)), problems):
        row = dict(zip(dict.fromkeys(cols), values))
        item = _text(row[cfg.item_column])
        if not item:
            problems.report("bad_field", f"{where}: empty {cfg.item_column!r}")
            continue
        text[item] = {k: ". ".join(t for t in (_text(row[c]) for c in v) if t) for k, v in parts.items()}
    return text


def read_tables(cfg, problems: Problems) -> Source:
    """`cfg` is a DataConfig (interactions, items, *_column(s), cache_dir)."""
    inter, items = fetch(cfg.interactions, cfg.cache_dir), fetch(cfg.items, cfg.cache_dir)
    return Source(lambda rows: chunked(read_interactions(inter, cfg, problems), rows),
                  lambda: read_item_text(items, cfg, problems))
