"""The stored evaluation candidates of a set of users, read when a protocol is first ranked.

At millions of users the candidates are the largest thing the recommender stages read (4 x (1 + 100) ids per
user: 3.2 GB per million as int64), so `load` does not read them: a `Candidates` holds the folder and the user
ids, and reads one (split, protocol) for exactly those users when it is asked for, with the user-id range pushed
down to Parquet's row-group statistics. A block of users cut for a Ray task (`subset`) pickles without what was
read, so each task reads its own users' candidates and the driver never holds them all.
"""

from __future__ import annotations

import numpy as np

from slim.io import columns as C
from slim.io import storage


class RecDataError(ValueError):
    """The recommender stages' input tables are missing or inconsistent; the message names the file and field.
    Defined here, the lowest module that raises it (slim.recsys.data re-exports it)."""


class Candidates:
    """(split, protocol) -> [U, 1 + negatives] int64 (target in column 0), rows in the order of `user_ids`."""

    def __init__(self, path, user_ids: np.ndarray, cache: dict | None = None):
        """path None: the arrays in `cache` are all there is (built in memory, e.g. by tests)."""
        if path is not None and not storage.is_remote(path):
            path = storage.path(path).resolve()  # read by Ray tasks, whose working folder may differ
        self.path, self.user_ids, self._cache = path, np.asarray(user_ids, dtype=np.int64), dict(cache or {})

    def __getitem__(self, key: tuple) -> np.ndarray:
        if key not in self._cache:
            self._cache[key] = self._read(*key)
        return self._cache[key]

    def subset(self, a: int, b: int) -> "Candidates":
        """Users a..b-1; what was already read is sliced, not read again."""
        return Candidates(self.path, self.user_ids[a:b], {k: v[a:b] for k, v in self._cache.items()})

    def width(self, key: tuple) -> int:
        """1 + negatives of a protocol, read from one user's row when not read yet."""
        return (self._cache[key] if key in self._cache else self.subset(0, 1)[key]).shape[1]

    def __getstate__(self) -> dict:  # a task reads its own users' rows: the driver's copy does not travel
        return {**self.__dict__, "_cache": {} if self.path is not None else self._cache}

    def _read(self, split: str, proto: str) -> np.ndarray:
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.dataset as ds

        uid = self.user_ids
        if self.path is None:
            raise KeyError(f"no candidates for split={split} protocol={proto}")
        if not len(uid):
            return np.zeros((0, 1 + C.NUM_NEGATIVES), np.int64)
        f = ((ds.field(C.SPLIT) == split) & (ds.field(C.PROTOCOL) == proto)
             & (ds.field(C.USER_ID) >= int(uid.min())) & (ds.field(C.USER_ID) <= int(uid.max())))
        t = storage.dataset(self.path).to_table(columns=[C.USER_ID, C.TARGET, C.NEGATIVES], filter=f)
        t = t.filter(pc.is_in(t.column(C.USER_ID), value_set=pa.array(uid)))  # a subsample is not a range
        if t.num_rows != len(uid) or len(np.unique(t.column(C.USER_ID).to_numpy())) != len(uid):
            raise RecDataError(f"{self.path}: {t.num_rows} rows for split={split} protocol={proto} over "
                               f"{len(uid)} users, expected one per user")
        rows = np.searchsorted(np.sort(uid), t.column(C.USER_ID).to_numpy())
        order = np.argsort(uid, kind="stable")  # position of each sorted id in user_ids
        neg = t.column(C.NEGATIVES).combine_chunks()
        if isinstance(neg, pa.ExtensionArray):  # Ray Data writes the negatives as a tensor column: a list inside
            neg = neg.storage
        lens = pc.list_value_length(neg).to_numpy()
        if len(np.unique(lens)) != 1:
            raise RecDataError(f"{self.path}: {C.NEGATIVES} of split={split} protocol={proto} differ in length "
                               f"({lens.min()}..{lens.max()})")
        out = np.empty((len(uid), 1 + lens[0]), dtype=np.int64)
        out[order[rows], 0] = t.column(C.TARGET).to_numpy()
        out[order[rows], 1:] = neg.flatten().to_numpy().reshape(len(neg), lens[0])
        return out
