"""Sequences from data/users.parquet with the leave-one-out split, as padded tensors.

train: next-item targets inside item_ids[:-2]; valid: input item_ids[:-2] -> valid_item;
test: input item_ids[:-1] -> test_item. Sequences are right-padded with 0 and keep the most recent max_len items.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from slim.io import columns as C
from slim.io import storage
from slim.recsys.candidates import Candidates, RecDataError  # noqa: F401 (RecDataError: this module's error)


@dataclass
class SeqData:
    user_ids: np.ndarray  # [U] int64, ids in users.parquet
    seqs: list  # U arrays of int64 item ids (full history, chronological)
    num_items: int
    candidates: Candidates  # (split, protocol) -> [U, 1 + negatives] int64, target in column 0; or such a dict
    # ids of items an earlier snapshot gave an id but the newest lacks (items.parquet `present` false): never ranked,
    # recommended or drawn as a negative, so a refreshed run directory ranks what a fresh one would
    absent: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    @property
    def num_present(self) -> int:
        return self.num_items - len(self.absent)

    def __post_init__(self):
        if isinstance(self.candidates, dict):  # built in memory
            self.candidates = Candidates(None, self.user_ids, self.candidates)

    def inputs(self, split: str) -> list:
        cut = {"valid": 2, "test": 1}[split]
        return [s[:-cut] for s in self.seqs]

    def targets(self, split: str) -> np.ndarray:
        cut = {"valid": 2, "test": 1}[split]
        return np.array([s[-cut] for s in self.seqs], dtype=np.int64)


def load(run_dir: str | Path, max_users: int = 0, seed: int = 0) -> SeqData:
    root = storage.path(run_dir)
    up, ip, cp = root / C.USERS_FILE, root / C.ITEMS_FILE, root / C.CANDIDATES_DIR
    for p in (up, ip, cp):
        if not p.exists():
            raise RecDataError(f"{p} not found: run the data stage first (jobs/data.py)")
    cols = [C.USER_ID, C.ITEM_IDS, C.VALID_ITEM, C.TEST_ITEM]
    raw = None
    if max_users:  # the subsample draws by raw id: read that column only then
        raw = C.RAW_USER_ID if C.RAW_USER_ID in storage.read_schema(up).names else C.USER_ID  # hand-made tables
        cols += [raw] if raw not in cols else []
    users = storage.read_table(up, columns=cols)
    num_items = storage.read_metadata(ip).num_rows
    absent = absent_items(ip)
    n_cand, per_user = storage.dataset(cp).count_rows(), len(C.SPLITS) * len(C.PROTOCOLS)  # count: file footers
    if n_cand != per_user * users.num_rows:  # checked now, though each protocol is read only when ranked
        raise RecDataError(f"{cp}: {n_cand} rows for {users.num_rows} users in {up.name}, expected {per_user} "
                           "per user: rerun the data stage")
    if max_users and users.num_rows > max_users:  # reduced benchmarks: the raw ids that hash smallest with `seed`,
        from slim.io.keyhash import smallest  # so a newer snapshot keeps (almost) the same users

        users = users.take(smallest(users.column(raw).cast("string").to_pylist(), seed, max_users))
    uid = users.column(C.USER_ID).to_numpy()
    lists = users.column(C.ITEM_IDS).combine_chunks()
    flat = lists.values.to_numpy().astype(np.int64)
    off = lists.offsets.to_numpy()
    seqs = [flat[off[i]:off[i + 1]] for i in range(len(uid))]
    short = np.flatnonzero(np.diff(off) < 3)
    if len(short):
        raise RecDataError(f"{up}: user_id {uid[short[0]]} has fewer than 3 items in {C.ITEM_IDS}")
    if flat.min() < 1 or flat.max() > num_items:
        raise RecDataError(f"{up}: {C.ITEM_IDS} outside 1..{num_items} (items.parquet rows)")
    for col, cut in ((C.VALID_ITEM, 2), (C.TEST_ITEM, 1)):
        got = users.column(col).to_numpy()
        want = np.array([s[-cut] for s in seqs])
        if not np.array_equal(got, want):
            bad = np.flatnonzero(got != want)[0]
            raise RecDataError(f"{up}: user_id {uid[bad]}: {col} != {C.ITEM_IDS}[-{cut}]")
    return SeqData(uid, seqs, num_items, Candidates(cp, uid), absent)  # candidates: read when first ranked


def absent_items(items_path) -> np.ndarray:
    """Sorted ids of the items whose `present` is false in items.parquet (an earlier snapshot's, kept so ids stay
    stable: slim.data.identity); empty for a table without the column (prepared before snapshots were carried)."""
    if C.PRESENT not in storage.read_schema(items_path).names:
        return np.zeros(0, dtype=np.int64)
    t = storage.read_table(items_path, columns=[C.ITEM_ID, C.PRESENT])
    present = t.column(C.PRESENT).to_numpy(zero_copy_only=False)
    return np.sort(t.column(C.ITEM_ID).to_numpy()[~present]).astype(np.int64)


def present_ids(num_items: int, absent: np.ndarray):
    """[P] int64 torch tensor of the item ids 1..num_items not in `absent`, or None when every item is present
    (callers then take their all-items path unchanged)."""
    if not len(absent):
        return None
    import torch

    keep = np.ones(num_items + 1, dtype=bool)
    keep[0] = False
    keep[np.asarray(absent, dtype=np.int64)] = False
    return torch.from_numpy(np.flatnonzero(keep).astype(np.int64))


def pad_right(seqs: list, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Keep the last max_len items of each sequence; -> items [B, L] int64 (0-padded), lengths [B]."""
    lens = np.array([min(len(s), max_len) for s in seqs], dtype=np.int64)
    out = np.zeros((len(seqs), max(1, int(lens.max(initial=1)))), dtype=np.int64)
    for i, s in enumerate(seqs):
        if lens[i]:
            out[i, :lens[i]] = s[len(s) - lens[i]:]
    return out, lens


@dataclass
class Examples:
    """Training examples cut from item_ids[:-2]. Per-position models: x, y, tpos [E, L] (y = 0 and tpos = -1 where
    there is no target); session models: x [E, L], y, tpos [E]. user [E] is the row in SeqData of each example and
    tpos the index in the user's full item_ids of each target, which decides where a rationale may be fused."""
    x: np.ndarray
    y: np.ndarray
    lens: np.ndarray
    user: np.ndarray
    tpos: np.ndarray


def train_windows(seqs: list, max_len: int) -> Examples:
    """Per-position training examples from item_ids[:-2]: windows of max_len+1 items cut from the end, so
    every next-item target is trained exactly once."""
    xs, ys, ps, us = [], [], [], []
    for u, s in enumerate(seqs):
        t = s[:-2]
        end = len(t)
        while end >= 2:
            a = max(0, end - max_len - 1)
            w = t[a:end]
            xs.append(w[:-1])
            ys.append(w[1:])
            ps.append(np.arange(a + 1, end))  # indices in item_ids of the targets w[1:]
            us.append(u)
            end -= max_len  # the next window ends where this one's first input is
    x, lens = pad_right(xs, max_len)
    y, _ = pad_right(ys, max_len)
    p, _ = pad_right([q + 1 for q in ps], max_len)  # +1 so that padding (0) becomes -1 below
    return Examples(x, y, lens, np.asarray(us, dtype=np.int64), p - 1)


def train_prefixes(seqs: list, max_len: int) -> Examples:
    """One example per prefix of item_ids[:-2] (session models)."""
    xs, ys, ps, us = [], [], [], []
    for u, s in enumerate(seqs):
        t = s[:-2]
        for k in range(1, len(t)):
            xs.append(t[max(0, k - max_len):k])
            ys.append(t[k])
            ps.append(k)
            us.append(u)
    x, lens = pad_right(xs, max_len)
    return Examples(x, np.asarray(ys, dtype=np.int64), lens, np.asarray(us, dtype=np.int64),
                    np.asarray(ps, dtype=np.int64))


POSITIONS = ("after_prefix", "all")  # train.rationale_positions


def rationale_positions(tpos: np.ndarray, user: np.ndarray, seq_lens: np.ndarray, cut: int,
                        mode: str = "after_prefix") -> np.ndarray:
    """Where a user's rationale is fused in training: `after_prefix`, only targets after the prefix it was written
    from (below); `all`, every training target (the paper's way).

    The trade-off: `after_prefix` never shows the user side a target already named in the text, so the fusion layer
    cannot learn to read the answer off the rationale, but it sees one fused example per user in training (the
    target item_ids[-3]) and a rationale for every user at test time. `all` trains the fusion on every position,
    as evaluation uses it, at the price that a training target may be named in the text (step 3 recommends
    products, step 1 summarises bought ones). Evaluation is clean in both modes: the prefix never holds the
    validation or test target.

    The rationale of user u saw item_ids[:len_u - cut] (slim.text.prompts.HISTORY_CUT = 3). A target at index p is
    named in that text when p < len_u - cut, so fusing the rationale there would train the user side to read the
    answer off the text (look-ahead); only p >= len_u - cut is a fair target: item_ids[-3] in training, the
    validation and test targets in evaluation. tpos: [E] or [E, L] (-1 = no target), user: [E] -> bool like tpos.
    """
    if mode not in POSITIONS:
        raise ValueError(f"train.rationale_positions: {mode!r} is not one of {', '.join(POSITIONS)}")
    if mode == "all":
        return tpos >= 0
    limit = seq_lens[user] - cut  # [E]
    if tpos.ndim == 2:
        limit = limit[:, None]
    return (tpos >= 0) & (tpos >= limit)
