"""Teacher-rationale shards written without a teacher LLM (for distillation tests and the offline bench).

NAMED MOCK: the rationales are templated from each user's training prefix (favourite genres/categories, then
popular unseen items of those), in the teacher's three-step format. They are a deterministic function of the
history, so a student can learn them and the training loss must fall. A few bad rows (failed, empty, no step
markers, a retried user) are mixed in, as a real teacher run has them.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from slim.io import columns as C
from slim.io import shards as io_shards
from slim.text.prompts import training_prefix
from slim.io.rundir import Manifest, RunDir


def _cats(text: str) -> list[str]:
    return [c.strip() for c in (text or "").split(",") if c.strip()]


def rationale(item_ids, items: dict, by_cat: dict, n_cats: int = 5, n_per: int = 5) -> str:
    prefix = training_prefix(item_ids)
    counts = Counter(c for i in prefix for c in _cats(items[int(i)]["category"]))
    top = [c for c, _ in counts.most_common(n_cats)] or ["Drama"]
    last = items[int(prefix[-1])]["title"]
    seen = set(int(i) for i in prefix)
    step1 = f"The user mostly likes {', '.join(top[:2])} titles; the latest one was {last}."
    step2 = "\n".join(f"{k}. {c}" for k, c in enumerate(top, 1))
    lines = []
    for k, c in enumerate(top, 1):
        picks = [t for i, t in by_cat.get(c, []) if i not in seen][:n_per]
        lines.append(f"{k}. {c}: " + "; ".join(picks))
    return f"Step 1: {step1}\nStep 2:\n{step2}\nStep 3:\n" + "\n".join(lines)


def write_teacher_shards(run_dir: str | Path, n_users: int = 0, n_cats: int = 5, n_per: int = 5,
                         bad_rows: bool = True, shards: int = 2) -> dict:
    """Write <run_dir>/teacher/rationales/part-*.parquet and a teacher manifest; returns the expected counts."""
    run_dir = Path(run_dir)
    users = pq.read_table(run_dir / C.USERS_FILE).to_pandas()
    items_df = pq.read_table(run_dir / C.ITEMS_FILE).to_pandas().sort_values(C.POPULARITY, ascending=False)
    items = {int(r[C.ITEM_ID]): r for r in items_df.to_dict("records")}
    by_cat: dict = {}
    for r in items_df.to_dict("records"):  # most popular first
        for c in _cats(r[C.CATEGORY]):
            by_cat.setdefault(c, []).append((int(r[C.ITEM_ID]), r[C.TITLE]))
    users = users.head(n_users) if n_users else users
    rows = []
    for uid, seq in zip(users[C.USER_ID], users[C.ITEM_IDS]):
        rows.append({C.USER_ID: int(uid), C.PROMPT: "", C.RATIONALE: rationale(seq, items, by_cat, n_cats, n_per),
                     C.STATUS: "ok", C.ERROR: ""})
    expect = {"good": len(rows), "not_ok_status": 0, "empty": 0, "unparsable": 0, "superseded": 0}
    if bad_rows and len(rows) >= 8:
        rows[0].update({C.RATIONALE: "", C.STATUS: "failed", C.ERROR: "HTTP 500"})
        rows[1].update({C.RATIONALE: "I cannot say much about this user."})  # ok status, no step markers
        rows[2].update({C.RATIONALE: "   "})  # ok status, empty
        rows[3].update({C.RATIONALE: "Step 1: likes drama\nStep 3: a; b"})  # step 2 missing
        expect.update(good=len(rows) - 4, not_ok_status=1, empty=1, unparsable=2)
    out = run_dir / C.TEACHER_SHARDS
    out.mkdir(parents=True, exist_ok=True)
    if bad_rows and len(rows) >= 8:  # user 4 first failed, then succeeded in a later shard: one row counts
        good = dict(rows[4])
        io_shards.write_shard(out, pa.Table.from_pylist([dict(good, **{C.RATIONALE: "", C.STATUS: "failed"})]))
        expect["superseded"] = 1
    per = -(-len(rows) // shards)
    for s in range(shards):
        part = rows[s * per:(s + 1) * per]
        if part:
            io_shards.write_shard(out, pa.Table.from_pylist(part))
    mock = {"mock": "templated rationales (slim/testing/teacher_mock.py)"}
    RunDir(run_dir).write_manifest(Manifest(C.TEACHER_DIR, mock, counts={"rows": len(rows)}))
    return expect
