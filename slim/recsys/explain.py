"""Explanations: for a user, the top-k items with titles and scores and the rationale behind them, split into
its steps. Used by jobs/explain.py and by the serving endpoint (slim.serve).

A known user's recommendation reads their whole history (every item they have, the held-out ones included: this
is what comes next in production, not an evaluation); the rationale is the stored one, written from
item_ids[:-3] (slim.prompts), so a SLIM model's user side sees it exactly as it did in evaluation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pyarrow.dataset as pds
import pyarrow.parquet as pq

from slim import columns as C

RATIONALE_COLS = (C.RATIONALE, C.STEP1, C.STEP2, C.STEP3, C.STATUS)


def best_run(run_dir: str | Path, variant: Optional[str] = None) -> str:
    """models/<name> with the best validation NDCG@10 among the train stage's outputs (optionally one variant)."""
    root = Path(run_dir)
    m = json.loads((root / "train" / C.MANIFEST).read_text())
    best, name = -1.0, None
    for rel in m["outputs"]:
        rec = json.loads((root / rel / "metrics.json").read_text())
        if (variant is None or rec["variant"] == variant) and rec["best_valid_ndcg10"] > best:
            best, name = rec["best_valid_ndcg10"], rel
    if name is None:
        raise ValueError(f"{root}: no trained run" + (f" of variant {variant!r}" if variant else ""))
    return name


def user_rationale(run_dir: str | Path, user_id: int, source: str = "student") -> Optional[dict]:
    """The stored rationale of a user (the latest row when a user was retried), or None."""
    folder = Path(run_dir) / (C.STUDENT_SHARDS if source == "student" else C.TEACHER_SHARDS)
    files = sorted(str(p) for p in folder.glob("*.parquet") if not p.name.startswith((".", "_")))
    if not files:
        return None
    t = pds.dataset(files).to_table(filter=pds.field(C.USER_ID) == int(user_id))
    if t.num_rows == 0:
        return None
    row = {c: (t.column(c)[-1].as_py() if c in t.column_names else None) for c in RATIONALE_COLS}
    return {"text": row[C.RATIONALE] or "", "steps": [row[C.STEP1] or "", row[C.STEP2] or "", row[C.STEP3] or ""],
            "status": row[C.STATUS]}


@dataclass
class Explainer:
    """One trained run loaded once: item titles, the model, and the user table, for many explain() calls."""

    root: Path
    run: str
    model: object
    spec: object
    titles: dict
    users: dict  # user_id -> item_ids

    @classmethod
    def load(cls, run_dir: str | Path, run: Optional[str] = None) -> "Explainer":
        from slim.recsys.job import load_model

        root = Path(run_dir)
        rel = run if run and run.startswith("models/") else (f"models/{run}" if run else best_run(root))
        model, spec = load_model(root / rel)
        items = pq.read_table(root / C.ITEMS_FILE, columns=[C.ITEM_ID, C.TITLE])
        titles = dict(zip(items.column(C.ITEM_ID).to_pylist(), items.column(C.TITLE).to_pylist()))
        users = pq.read_table(root / C.USERS_FILE, columns=[C.USER_ID, C.ITEM_IDS])
        return cls(root, rel, model, spec, titles,
                   dict(zip(users.column(C.USER_ID).to_pylist(), users.column(C.ITEM_IDS).to_pylist())))

    def user_vector(self, user_id: Optional[int]) -> Optional[np.ndarray]:
        """[1, Du] rationale vector of a known user for a user-text model, else None (the missing vector)."""
        if not self.spec.rationale_field or user_id is None:
            return None
        from slim.recsys import usertext as UT

        ut = UT.load(self.root, np.array([user_id]), np.array([len(self.users[user_id])]), self.spec.variant,
                     self.spec.rationale_field)
        return ut.vec if ut.present[0] else None

    def recommend(self, history: list, k: int, user_id: Optional[int] = None, exclude_history: bool = True) -> list:
        """-> [{item_id, title, score}] best first."""
        import torch

        from slim import metrics as M
        from slim.recsys import data as D

        x, lens = D.pad_right([np.asarray(history, dtype=np.int64)], self.spec.max_len)
        vec = self.user_vector(user_id)
        with torch.no_grad():
            s = self.model.encode(torch.from_numpy(x), torch.from_numpy(lens),
                                  None if vec is None else torch.from_numpy(vec))
            sc = self.model.score_all(s).numpy()  # [1, N+1]
        top = M.top_items(sc, [history if exclude_history else []], k)[0]
        return [{"item_id": int(i), "title": self.titles.get(int(i)), "score": float(sc[0, i])} for i in top]

    def explain(self, user_id: int, k: int = 10) -> dict:
        if user_id not in self.users:
            raise KeyError(f"user_id {user_id} is not in {self.root / C.USERS_FILE}")
        hist = list(self.users[user_id])
        source = "teacher" if self.spec.variant == "slim_teacher" else "student"
        return {"user_id": user_id, "run": self.run,
                "history": [{"item_id": int(i), "title": self.titles.get(int(i))} for i in hist],
                "rationale": user_rationale(self.root, user_id, source),
                "rationale_used": self.user_vector(user_id) is not None,
                "items": self.recommend(hist, k, user_id)}


def explain(run_dir: str | Path, user_id: int, k: int = 10, run: Optional[str] = None) -> dict:
    """For one user: top-k items with titles and scores, the history, and the rationale split into its steps."""
    return Explainer.load(run_dir, run).explain(user_id, k)
