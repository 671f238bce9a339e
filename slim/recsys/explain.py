"""Explanations: for a user, the top-k items with titles and scores and the rationale behind them, split into
its steps. Used by jobs/explain.py and by the serving endpoint (slim.serve).

A known user's recommendation reads their whole history (every item they have, the held-out ones included: this
is what comes next in production, not an evaluation); the rationale is the stored one, written from
item_ids[:-3] (slim.text.prompts), so a SLIM model's user side sees it exactly as it did in evaluation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from slim.io import columns as C
from slim.io import storage
from slim.recsys.checkpoint import WEIGHTS

RATIONALE_COLS = (C.RATIONALE, C.STEP1, C.STEP2, C.STEP3, C.STATUS)


class NoModelError(RuntimeError):
    """The run directory holds no trained model matching the config; the message says what was looked for."""


def pick_run(run_dir: str | Path, backbone: str = "", variant: str = "", seed: Optional[int] = None) -> Path:
    """models/<run>/ with the best valid NDCG@10 among finished runs matching the filters."""
    root = storage.path(run_dir) / C.MODELS_DIR
    want = {"backbone": backbone, "variant": variant, "seed": seed}
    found = []
    for m in sorted(root.glob(f"*/{C.METRICS_FILE}")):
        rec = json.loads(m.read_text())
        if (m.parent / WEIGHTS).exists() and all(v in ("", None) or rec.get(k) == v for k, v in want.items()):
            found.append((rec.get("best_valid_ndcg10", float("-inf")), m.parent.name, m.parent))
    if not found:
        asked = ", ".join(f"{k}={v}" for k, v in want.items() if v not in ("", None)) or "any run"
        raise NoModelError(f"{root}: no trained model ({asked}; a run is models/<run>/model.pt + metrics.json): "
                           f"run the train stage first (jobs/train.py)")
    found.sort(key=lambda t: (-t[0], t[1]))  # best first; ties by name, so the choice is stable
    return found[0][2]


def rationales(run_dir: str | Path, source: str = "student") -> dict:
    """user_id -> {text, steps, status, products}: the stored rationales of `source` ("student" or "teacher"), one
    per user by the shards' own latest-row rule (slim.io.shards); {} when that stage has not run."""
    from slim.io import shards

    folder = storage.path(run_dir) / (C.STUDENT_SHARDS if source == "student" else C.TEACHER_SHARDS)
    if not shards.shard_files(folder):
        return {}
    t = shards.read_latest(folder, columns=[C.USER_ID, *RATIONALE_COLS])
    cols = {c: t.column(c).to_pylist() for c in (C.USER_ID, *RATIONALE_COLS)}
    found = grounded(run_dir, source)
    return {int(u): {"text": cols[C.RATIONALE][i] or "", "status": cols[C.STATUS][i],
                     "steps": [cols[s][i] or "" for s in (C.STEP1, C.STEP2, C.STEP3)],
                     "products": found.get(int(u), [])}
            for i, u in enumerate(cols[C.USER_ID])}


def grounded(run_dir: str | Path, source: str = "student") -> dict:
    """user_id -> [{product, item_id}]: the products named in step 3 and the catalogue item each matched (the
    encode stage's grounding file; item_id None where nothing passed encode.ground_threshold); {} without one."""
    p = storage.path(run_dir) / C.GROUNDING_FILE.format(source=source)
    if not p.exists():
        return {}
    t = storage.read_table(p, columns=[C.USER_ID, "products", "item_ids"]).to_pydict()
    return {int(u): [{"product": name, "item_id": int(i) or None} for name, i in zip(names, ids)]
            for u, names, ids in zip(t[C.USER_ID], t["products"], t["item_ids"])}


def titled(why: Optional[dict], title) -> Optional[dict]:
    """A stored rationale with its grounded products' titles (title: item_id -> title), so they link to real items."""
    if why is None:
        return None
    return {**why, "products": [{**p, "title": title(p["item_id"]) if p["item_id"] else None}
                                for p in why.get("products", [])]}


@dataclass
class Explainer:
    """One trained run loaded once: item titles, the model, and the user table, for many explain() calls."""

    root: Path
    run: str
    model: object
    spec: object
    titles: dict
    users: dict  # user_id -> item_ids
    vectors: dict  # user_id -> [1, Du] rationale vector, for a user-text model (users with a usable one)
    texts: dict  # user_id -> the stored rationale (rationales())
    absent: Optional[np.ndarray] = None  # items gone from the newest snapshot: never recommended (recsys.data)

    @classmethod
    def load(cls, run_dir: str | Path, run: Optional[str] = None) -> "Explainer":
        from slim.recsys.checkpoint import load_model

        root = storage.path(run_dir)
        rel = run if run and run.startswith("models/") else (f"models/{run}" if run else
                                                             f"models/{pick_run(root).name}")
        model, spec = load_model(root / rel)
        items = storage.read_table(root / C.ITEMS_FILE, columns=[C.ITEM_ID, C.TITLE])
        titles = dict(zip(items.column(C.ITEM_ID).to_pylist(), items.column(C.TITLE).to_pylist()))
        t = storage.read_table(root / C.USERS_FILE, columns=[C.USER_ID, C.ITEM_IDS])
        users = dict(zip(t.column(C.USER_ID).to_pylist(), t.column(C.ITEM_IDS).to_pylist()))
        vectors = {}
        if spec.rationale_field:  # read once here, not per call
            from slim.recsys import usertext

            ids = np.array(list(users), dtype=np.int64)
            ut = usertext.load(root, ids, np.array([len(users[u]) for u in ids]), spec.variant, spec.rationale_field)
            vectors = {int(u): ut.vec[i:i + 1] for i, u in enumerate(ids) if ut.present[i]}
        source = "teacher" if spec.variant == "slim_teacher" else "student"
        from slim.recsys.data import absent_items

        return cls(root, rel, model, spec, titles, users, vectors, rationales(root, source),
                   absent_items(root / C.ITEMS_FILE))

    def user_vector(self, user_id: Optional[int]) -> Optional[np.ndarray]:
        """[1, Du] rationale vector of a known user for a user-text model, else None (the missing vector)."""
        return self.vectors.get(user_id)

    def recommend(self, history: list, k: int, user_id: Optional[int] = None, exclude_history: bool = True) -> list:
        """-> [{item_id, title, score}] best first."""
        import torch

        from slim.recsys.ranking import top_items
        from slim.recsys import data as recdata

        x, lens = recdata.pad_right([np.asarray(history, dtype=np.int64)], self.spec.max_len)
        vec = self.user_vector(user_id)
        with torch.no_grad():
            s = self.model.encode(torch.from_numpy(x), torch.from_numpy(lens),
                                  None if vec is None else torch.from_numpy(vec))
            sc = self.model.score_all(s).numpy()  # [1, N+1]
        top = top_items(sc, [history if exclude_history else []], k, self.absent)[0]
        return [{"item_id": int(i), "title": self.titles.get(int(i)), "score": float(sc[0, i])} for i in top if i]

    def explain(self, user_id: int, k: int = 10) -> dict:
        if user_id not in self.users:
            raise KeyError(f"user_id {user_id} is not in {self.root / C.USERS_FILE}")
        hist = list(self.users[user_id])
        why = titled(self.texts.get(user_id), self.titles.get)
        return {"user_id": user_id, "run": self.run,
                "history": [{"item_id": int(i), "title": self.titles.get(int(i))} for i in hist],
                "rationale": why,
                "rationale_used": self.user_vector(user_id) is not None,
                "items": self.recommend(hist, k, user_id)}


def explain(run_dir: str | Path, user_id: int, k: int = 10, run: Optional[str] = None) -> dict:
    """For one user: top-k items with titles and scores, the history, and the rationale split into its steps."""
    from slim.runtime.threads import torch_threads

    torch_threads()  # one user's scores: one thread (a driver's default), not one per core of a shared machine
    return Explainer.load(run_dir, run).explain(user_id, k)


def text_lines(out: dict) -> list[str]:
    """explain()'s answer as jobs/explain.py prints it: the run, the last 10 history items, the three steps, step 3's
    products found in the catalogue, and the ranked items with scores."""
    lines = [f"user {out['user_id']} ({out['run']}; rationale used: {out['rationale_used']})",
             "history: " + "; ".join(h["title"] or str(h["item_id"]) for h in out["history"][-10:])]
    r = out["rationale"] or {"steps": ["(no rationale)", "", ""], "status": "missing"}
    lines += [f"step {n}: {step.strip()[:400]}" for n, step in enumerate(r["steps"], 1)]
    found = [p for p in r.get("products", []) if p["item_id"]]
    if found:  # step 3's products that are real catalogue items
        lines.append("in the catalogue: " + "; ".join(f"{p['product']} -> {p['title']} (item {p['item_id']})"
                                                      for p in found))
    return lines + [f"{n:3d}. {it['score']:8.3f}  {it['title']} (item {it['item_id']})"
                    for n, it in enumerate(out["items"], 1)]

