"""Everything the server reads from a run directory and every call into the model, in one place.

A replica builds one `Ranker` at start: the chosen run's weights, the item table (ids, titles), users' histories,
the stored rationales, users' rationale vectors (user-text models), and every item's vector (precomputed, so a
request costs one encoder pass plus one matrix product). The per-request parts follow `slim.recsys.explain` (the
library's explanation: same rationale source per variant, latest row per user, rationale vectors through
`slim.recsys.usertext`), read once here instead of per call.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pyarrow.parquet as pq

from slim.io import columns as C
from slim.recsys.explain import NoModelError, pick_run, rationales, titled  # noqa: F401 (re-exported)
from slim.recsys.data import absent_items
from slim.recsys.rankable import rankable
from slim.recsys.ranking import top_k

log = logging.getLogger(__name__)


@dataclass
class Query:
    """One request after validation: item ids only, all in 1..N."""

    history: np.ndarray  # int64, chronological
    k: int  # 0 = score every candidate, in the given order
    user_id: Optional[int] = None
    candidates: Optional[np.ndarray] = None  # int64; None = rank every item
    exclude_history: bool = True
    user_vec: Optional[np.ndarray] = None  # [Du] float32: a rationale vector written for this request (new users)
    history_cut: int = 0  # the oldest items of a sent history left out (serve.max_history_items)


def _items(root: Path) -> tuple[np.ndarray, list, list]:
    p = root / C.ITEMS_FILE
    if not p.exists():
        raise NoModelError(f"{p} not found: the run directory has no item table (run the data stage)")
    names = pq.read_schema(p).names
    t = pq.read_table(p, columns=[c for c in (C.ITEM_ID, C.TITLE, C.TEXT) if c in names])
    ids = t.column(C.ITEM_ID).to_numpy().astype(np.int64)
    text = [x or "" for x in t.column(C.TEXT).to_pylist()] if C.TEXT in names else [""] * len(ids)
    titles = t.column(C.TITLE).to_pylist() if C.TITLE in names else text
    return ids, [ti or te for ti, te in zip(titles, text)], text  # an item without a title shows its text


def _users(root: Path) -> dict:
    p = root / C.USERS_FILE
    if not p.exists():
        return {}
    t = pq.read_table(p, columns=[C.USER_ID, C.ITEM_IDS])
    return {int(u): np.asarray(s, dtype=np.int64) for u, s in
            zip(t.column(C.USER_ID).to_pylist(), t.column(C.ITEM_IDS).to_pylist())}


def _popular(users: dict, num_items: int) -> np.ndarray:
    """Item ids by their interactions in the users' histories, most first (ties by id): the page's default view."""
    seen = list(users.values())
    counts = np.bincount(np.concatenate(seen), minlength=num_items + 1)[1:] if seen else np.zeros(num_items)
    return np.argsort(-counts, kind="stable") + 1


def _user_vectors(root: Path, users: dict, spec) -> tuple[np.ndarray, dict]:
    """(rationale vectors [U, D], user_id -> row) of the users with a usable rationale, for a user-text model."""
    from slim.recsys import usertext

    ids = np.array(sorted(users), dtype=np.int64)
    ut = usertext.load(root, ids, np.array([len(users[u]) for u in ids]), spec.variant, spec.rationale_field)
    keep = np.flatnonzero(ut.present)
    return ut.vec[keep], {int(u): i for i, u in enumerate(ids[keep].tolist())}


def _item_table(model):
    """[N+1, H] every item's vector when the model scores by a dot product with one table, else None (scored
    through model.score per request)."""
    if hasattr(model, "items") and hasattr(model.items, "table"):
        return model.items.table()
    return model.table() if hasattr(model, "table") else None


class Ranker:
    """The model and tables of one replica; `rank` scores a batch of queries in one encoder pass."""

    def __init__(self, model_dir: str | Path, run_dir: str | Path, threads: int = 0, model=None, spec=None):
        import torch

        from slim.recsys.checkpoint import load_model
        from slim.runtime.threads import torch_threads

        torch_threads(threads)  # serve.torch_threads; 0: the replica's CPUs (serve.replica_cpus), at least 1
        root = Path(run_dir)
        self.model_dir = Path(model_dir)
        self.model, self.spec = (model, spec) if model is not None else load_model(self.model_dir)
        self.model.eval()
        self.item_ids, self.titles, self.texts = _items(root)
        self.num_items = len(self.item_ids)
        if not np.array_equal(self.item_ids, np.arange(1, self.num_items + 1)):
            raise NoModelError(f"{root / C.ITEMS_FILE}: {C.ITEM_ID} must be 1..N in order")
        self.by_title = {}
        for i, t in enumerate(self.titles, start=1):
            self.by_title.setdefault(t, []).append(i)
        self.users = _users(root)
        # False for padding and items gone from the newest snapshot: never recommended, listed or ranked
        self.rankable = rankable(self.num_items, absent_items(root / C.ITEMS_FILE))
        self.popular = _popular(self.users, self.num_items)
        self.popular = self.popular[self.rankable[self.popular]]
        self.user_text_model = bool(getattr(self.spec, "rationale_field", ""))
        source = "teacher" if self.spec.variant == "slim_teacher" else "student"
        self.rationales = rationales(root, source)
        self.vecs, self.vec_row = _user_vectors(root, self.users, self.spec) if self.user_text_model else (None, {})
        self.passes, self.largest_batch = 0, 0  # encoder passes and the most requests in one (batching at work)
        with torch.no_grad():  # every item's vector once: a request is then one encode + one matmul
            self.table = _item_table(self.model)
        if self.table is not None and self.table.shape[0] != self.num_items + 1:
            raise NoModelError(f"{self.model_dir} was trained on {self.table.shape[0] - 1} items but "
                               f"{root / C.ITEMS_FILE} has {self.num_items}: serve it with its own run directory")
        log.info("serving %s: %d items, %d users, %d rationales", self.model_dir.name, self.num_items,
                 len(self.users), len(self.rationales))

    @property
    def run_name(self) -> str:
        return self.model_dir.name

    def title(self, item_id: int) -> str:
        return self.titles[item_id - 1]

    def explain(self, user_id: Optional[int]) -> Optional[dict]:
        """The stored rationale of a known user split into its steps, with its grounded products, else None."""
        return titled(self.rationales.get(user_id), self.title) if user_id is not None else None

    def user_text(self, q: Query) -> tuple[Optional[np.ndarray], Optional[str]]:
        """(the rationale vector the model gets [Du] or None, why the request went without one or None): the one
        written for this request, else a known user's stored one."""
        if not self.user_text_model:
            return None, None
        if q.user_vec is not None:
            return q.user_vec, None
        row = self.vec_row.get(q.user_id) if q.user_id is not None else None
        if row is None:
            who = "this user" if q.user_id is not None else "a new user (a history)"
            return None, (f"no stored rationale for {who}: scored with the model's learned missing vector "
                          "(the non-SLIM path)")
        return self.vecs[row], None

    def encode(self, queries: list) -> "torch.Tensor":
        """[B, H] user states in one pass; a user-text model gets each user's rationale vector, or its missing
        vector where there is none (use=False)."""
        import torch

        from slim.recsys.data import pad_right

        x, lens = (torch.from_numpy(a) for a in pad_right([q.history for q in queries], self.spec.max_len))
        if not self.user_text_model:
            return self.model.encode(x, lens)
        vecs = [self.user_text(q)[0] for q in queries]
        use = np.array([v is not None for v in vecs])
        vec = np.zeros((len(queries), self.vecs.shape[1]), dtype=np.float32)
        for i in np.flatnonzero(use):
            vec[i] = vecs[i]
        return self.model.encode(x, lens, user_text=torch.from_numpy(vec), use=torch.from_numpy(use))

    def rank(self, queries: list) -> list:
        """One (item ids, scores) per query: the top k, best first, ties by item id, never an item absent from
        the newest snapshot (self.rankable), whether every item is ranked or only the query's candidates; k == 0:
        every candidate in the given order (scoring what was asked, not recommending). Full rankings of a batch are
        one matrix product."""
        import torch

        self.passes, self.largest_batch = self.passes + 1, max(self.largest_batch, len(queries))
        with torch.no_grad():
            s = self.encode(queries)
            full = [i for i, q in enumerate(queries) if q.candidates is None]
            every = self._score_all(s[full]) if full else None  # [F, N+1]
            out = []
            for i, q in enumerate(queries):
                if q.candidates is None:
                    keep = self.rankable.copy()
                    if q.exclude_history:
                        keep[q.history] = False
                    ids, sc = np.flatnonzero(keep), every[full.index(i)][keep]
                else:
                    ids = q.candidates[self.rankable[q.candidates]] if q.k else q.candidates
                    ids = ids[~np.isin(ids, q.history)] if q.exclude_history else ids
                    sc = self._scores(s[i], ids)
                out.append(top_k(ids, sc, q.k) if q.k else (ids, sc))
        return out

    def _score_all(self, s) -> np.ndarray:
        return (s @ self.table.T if self.table is not None else self.model.score_all(s)).numpy()

    def _scores(self, s, ids: np.ndarray) -> np.ndarray:
        import torch

        cand = torch.from_numpy(ids)
        if self.table is not None:
            return (self.table[cand] @ s).numpy()
        return self.model.score(s[None], cand[None])[0].numpy()
