"""Readers for the supported sources. Each returns a `Source`: its interactions (one row per event) in chunks of
bounded size, then its item text, so that no reader holds a whole input in memory.

Bad input never becomes a traceback deep in Ray: a missing file, a malformed line or a field of the wrong
type raises `DataError` naming the file and line, or, with `on_bad_row="skip"`, is counted and logged.
"""

from __future__ import annotations

import csv
import datetime
import gzip
import hashlib
import io
import json
import logging
import subprocess
import sys
import urllib.request
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from slim.io import atomic

log = logging.getLogger(__name__)

RECBOLE_WHEEL = "recbole==1.2.1"
ML100K_SHA256 = {  # of the files inside the recbole 1.2.1 wheel
    "ml-100k.inter": "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
    "ml-100k.item": "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
}


class DataError(ValueError):
    """Input data is missing or malformed; the message names the file, line and field."""


@dataclass
class Problems:
    """Counted skips (with a few examples) when `on_bad_row="skip"`; raises at once when "error"."""

    policy: str = "error"
    counts: Counter = field(default_factory=Counter)
    examples: dict = field(default_factory=dict)

    def report(self, kind: str, message: str) -> None:
        if self.policy == "error":
            if "data.on_bad_row" not in message:  # say how to go on past it
                message += "; set data.on_bad_row=skip to skip such rows (they are counted in the manifest)"
            raise DataError(message)
        self.counts[kind] += 1
        self.examples.setdefault(kind, message)
        if self.counts[kind] <= 3:
            log.warning("skipped (%s): %s", kind, message)

    def summary(self) -> dict:
        return {k: {"count": n, "example": self.examples[k]} for k, n in self.counts.items()}


@dataclass
class Source:
    """An input read in two steps, in the order the in-memory readers used: `chunks(rows)` yields its interactions
    as (users, items, times) lists of at most `rows` rows in file order (all strings but the int times), then
    `text()` gives the item text keyed by the source's item id: {"title", "category", "brand"}."""

    chunks: Callable[[int], Iterator[tuple[list, list, list]]]
    text: Callable[[], dict]


def chunked(records: Iterator[tuple[list, list, list]], rows: int) -> Iterator[tuple[list, list, list]]:
    """A reader's records (users, items, times: parallel lists, one event or a whole history) regrouped into
    (users, items, times) chunks of at least `rows` events (a record is never split), the last one shorter."""
    users, items, times = [], [], []
    for u, i, t in records:
        users.extend(u)
        items.extend(i)
        times.extend(t)
        if len(users) >= rows:
            yield users, items, times
            users, items, times = [], [], []
    if users:
        yield users, items, times


def fetch(path_or_url: str, cache_dir: str) -> Path:
    """A local path as is; an http(s) URL downloaded once into the cache (for users with internet); a bucket URI
    (s3://...: a cluster without a shared disk) copied into local scratch, again only when it changed."""
    from slim.io import storage

    if storage.is_remote(path_or_url) and not path_or_url.startswith(("http://", "https://")):
        if not storage.path(path_or_url).exists():
            raise DataError(f"input not found: {path_or_url}")
        return storage.local_copy(path_or_url)
    if path_or_url.startswith(("http://", "https://")):
        dest = Path(cache_dir).expanduser() / "downloads" / Path(path_or_url).name
        if not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            log.info("downloading %s -> %s", path_or_url, dest)
            with atomic.writing(dest) as tmp:
                urllib.request.urlretrieve(path_or_url, tmp)  # noqa: S310 - user-given URL
        return dest
    p = Path(path_or_url).expanduser()
    if not p.exists():
        raise DataError(f"input not found: {p}")
    return p


def open_text(p: Path, newline: str | None = None) -> io.TextIOBase:
    """A text file, gunzipped on the fly when its name ends in .gz (a plain function, easy to point elsewhere)."""
    if p.suffix == ".gz":
        return gzip.open(p, "rt", encoding="utf-8", newline=newline)
    return open(p, encoding="utf-8", newline=newline)


def iter_csv(p: Path, columns: list[str], problems: Problems, delimiter: str) -> Iterator[tuple[str, list[str]]]:
    """Records of a delimited text file with a header row, read with standard CSV quoting (a quoted field may hold
    the delimiter, a newline or doubled quotes). Yields ('file:line', the values of `columns`) per record, the line
    being where the record starts."""
    try:
        with open_text(p, newline="") as f:
            reader = csv.reader(f, delimiter=delimiter)
            header = next(reader, None)
            if header is None:
                raise DataError(f"{p}: empty file, expected a header row")
            missing = [c for c in columns if c not in header]
            if missing:
                raise DataError(f"{p}:1: no column {', '.join(map(repr, missing))} in the header {header} "
                                f"(column names are set in the data config)")
            idx = [header.index(c) for c in columns]
            line = reader.line_num
            while True:
                start = line + 1
                try:
                    row = next(reader, None)
                except csv.Error as e:  # e.g. a field past the size limit: an unclosed quote swallowed the file
                    raise DataError(f"{p}:{start}: unreadable CSV record ({e})") from None
                if row is None:
                    return
                line = reader.line_num
                if not any(v.strip() for v in row):
                    continue
                if len(row) != len(header):
                    problems.report("bad_row", f"{p}:{start}: expected {len(header)} fields like the header, got "
                                               f"{len(row)} (an unquoted delimiter or quote in a field?)")
                    continue
                yield f"{p}:{start}", [row[i] for i in idx]
    except UnicodeDecodeError as e:
        raise DataError(f"{p}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def parse_time(value) -> int:
    """Integer seconds from an int, an integral number string, or an ISO 8601 date/time (naive = UTC).
    Raises ValueError otherwise."""
    if isinstance(value, bool) or value is None:
        raise ValueError(value)
    if isinstance(value, int):
        return value
    if isinstance(value, datetime.datetime):
        dt = value
    else:
        s = str(value).strip()
        try:
            return int(s)
        except ValueError:
            pass
        try:
            f = float(s)
            if f == f and abs(f) < 2**62:
                return int(f)
        except ValueError:
            pass
        dt = datetime.datetime.fromisoformat(s)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=datetime.timezone.utc)
    return int(dt.timestamp())


def iter_json_lines(p: Path, problems: Problems) -> Iterator[tuple[int, dict]]:
    with open_text(p) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                problems.report("malformed_json", f"{p}:{lineno}: malformed JSON line ({e.msg})")
                continue
            if not isinstance(obj, dict):
                problems.report("malformed_json", f"{p}:{lineno}: expected a JSON object")
                continue
            yield lineno, obj


def _find(root: Path, names: tuple[str, ...]) -> Path:
    for n in names:
        if (root / n).exists():
            return root / n
    raise DataError(f"{root}: none of {', '.join(names)} found")


def read_seqrec(path: str, cache_dir: str, problems: Problems, need_time: bool = False) -> Source:
    """The jsonl-sequences layout: sequences.jsonl(.gz) ({user_id, item_ids, timestamps}) + items.tsv
    (ItemID, Title), e.g. the SeqRecBenchmark export of Amazon 2018 Games. A line without timestamps is read in
    its list order, unless `need_time` (a `data.until` cut): then it is an error."""
    root = fetch(path, cache_dir)
    seq_path = _find(root, ("sequences.jsonl.gz", "sequences.jsonl"))
    items_path = _find(root, ("items.tsv",))

    def records() -> Iterator[tuple[list, list, list]]:
        for lineno, obj in iter_json_lines(seq_path, problems):
            where = f"{seq_path}:{lineno}"
            ids, ts = obj.get("item_ids"), obj.get("timestamps")
            if "user_id" not in obj or not isinstance(ids, list):
                problems.report("bad_field", f"{where}: needs 'user_id' and a list 'item_ids'")
                continue
            if ts is None and need_time:
                raise DataError(f"{where}: no 'timestamps', so data.until cannot cut this source at a time")
            if ts is None:
                ts = list(range(len(ids)))
            if not isinstance(ts, list) or len(ts) != len(ids):
                problems.report("bad_field", f"{where}: 'timestamps' must be a list as long as 'item_ids'")
                continue
            try:
                ts = [int(t) for t in ts]
            except (TypeError, ValueError) as e:
                problems.report("bad_timestamp", f"{where}: bad timestamp, expected integer seconds ({e})")
                continue
            uid = str(obj["user_id"])
            if not ids:
                problems.report("short_history", f"{where}: user {uid} has an empty history")
                continue
            yield [uid] * len(ids), [str(i) for i in ids], ts

    def text() -> dict:
        out = {}
        for _, (item, title) in iter_csv(items_path, ["ItemID", "Title"], problems, "\t"):
            out[item] = {"title": title.strip(), "category": "", "brand": ""}
        return out

    return Source(lambda rows: chunked(records(), rows), text)


def _category(value) -> str:
    """Amazon metadata `category` is a list from general to specific; keep the most specific non-root ones."""
    if isinstance(value, list):
        parts = [str(v).strip() for v in value if str(v).strip()]
        return " > ".join(parts[1:] or parts)
    return str(value or "").strip()


def read_amazon_raw(reviews: str, meta: str, cache_dir: str, problems: Problems) -> Source:
    """Amazon Reviews raw files: reviews JSON lines (reviewerID, asin, unixReviewTime) + metadata lines."""
    rpath, mpath = fetch(reviews, cache_dir), fetch(meta, cache_dir)

    def records() -> Iterator[tuple[list, list, list]]:
        for lineno, obj in iter_json_lines(rpath, problems):
            try:
                u, i, t = str(obj["reviewerID"]), str(obj["asin"]), int(obj["unixReviewTime"])
            except (KeyError, TypeError, ValueError) as e:
                problems.report("bad_field", f"{rpath}:{lineno}: missing or bad field {e}")
                continue
            yield [u], [i], [t]

    def text() -> dict:
        out = {}
        for lineno, obj in iter_json_lines(mpath, problems):
            if "asin" not in obj:
                problems.report("bad_field", f"{mpath}:{lineno}: missing field 'asin'")
                continue
            title = obj.get("title")
            out[str(obj["asin"])] = {
                "title": str(title).strip() if title else "",
                "category": _category(obj.get("category") or obj.get("categories")),
                "brand": str(obj.get("brand") or "").strip(),
            }
        return out

    return Source(lambda rows: chunked(records(), rows), text)


def recbole_wheel(cache_dir: str) -> Path:
    """Obtain the recbole 1.2.1 wheel with pip (once) into the cache."""
    dest = Path(cache_dir).expanduser() / "wheels"
    found = sorted(dest.glob("recbole-1.2.1-*.whl"))
    if not found:
        dest.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", RECBOLE_WHEEL, "-d", str(dest)]
        res = subprocess.run(cmd, capture_output=True, text=True)
        found = sorted(dest.glob("recbole-1.2.1-*.whl"))
        if res.returncode or not found:
            raise DataError(f"could not obtain {RECBOLE_WHEEL} with pip: {res.stderr.strip()[-500:]}")
    return found[0]


def in_memory(users: list, items: list, times: list, text: dict) -> Source:
    """A source already read whole (small inputs), served in chunks like the streaming ones."""
    def chunks(rows: int) -> Iterator[tuple[list, list, list]]:
        for a in range(0, len(users), rows):
            yield users[a:a + rows], items[a:a + rows], times[a:a + rows]

    return Source(chunks, lambda: text)


def read_ml100k(cache_dir: str, problems: Problems) -> Source:
    """MovieLens-100K from inside the recbole wheel (100,000 rows, read whole); checksums verified; genres become
    the category."""
    whl = recbole_wheel(cache_dir)
    files = {}
    with zipfile.ZipFile(whl) as z:
        for name, sha in ML100K_SHA256.items():
            blob = z.read(f"recbole/dataset_example/ml-100k/{name}")
            if hashlib.sha256(blob).hexdigest() != sha:
                raise DataError(f"{whl}!{name}: checksum mismatch (expected sha256 {sha[:12]}...)")
            # The files are UTF-8 (a handful of titles, e.g. "Double vie de Véronique"); read as latin-1 they
            # came out double-encoded ("VÃ©ronique") and an exact title request matched only that form.
            files[name] = blob.decode("utf-8").splitlines()
    inter = np.array([ln.split("\t") for ln in files["ml-100k.inter"][1:] if ln], dtype=object)
    text = {}
    for line in files["ml-100k.item"][1:]:
        parts = line.split("\t")
        if len(parts) >= 4:
            title = f"{parts[1]} ({parts[2]})" if parts[2] else parts[1]
            text[parts[0]] = {"title": title, "category": ", ".join(parts[3].split()), "brand": ""}
    return in_memory(list(inter[:, 0]), list(inter[:, 1]), [int(float(t)) for t in inter[:, 3]], text)
