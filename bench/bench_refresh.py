"""What a refresh costs against a run from scratch (issue 39): all of MovieLens-100K with the offline models.

  PYTHONPATH=. .venv/bin/python bench/bench_refresh.py --root ~/slim-runs/refresh-ml100k --until 1998-03-31

--root holds the run directories and the step records: a folder outside the work tree that outlives a session
(hours of work; every step resumes).

Three pipeline runs of configs/ml100k.yaml (the train grid cut to SASRec and GRU4Rec x id / id_text /
history_text / slim, CE, three seeds, so that train is not most of the wall time):
1. snapshot: `data.until=<cut>` into <root>/refresh, data -> encode (the state a refresh starts from);
2. refresh: the same run directory on the full data (new interactions for existing users, new users), every stage,
   `distill.refresh=keep` (the distilled student is pinned; the teacher's new rows are not learnt);
3. scratch: the full data into <root>/scratch, every stage (the distill stage trains on the new teacher sample).
Each step is a resumable pipeline run; a step's manifests are recorded in <root>/record/<step>.json when it ends
and a finished step is not run again, so a killed bench restarted with the same command goes on where it was.
Per stage it reports what it cost (LLM requests and tokens, texts encoded, wall time from the stage's manifest) in
the refresh and from scratch, the changed fraction measured on the data (users new or whose prompt prefix changed,
items new or whose text changed), the goal's verdict (an LLM or encode stage's refresh costs at most 1.5x the
changed fraction of its from-scratch cost), and the final full-ranking NDCG@10 of both runs side by side with a
paired test over the users they share (aligned by raw user id).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as `python bench/x.py`: the repository first

from bench import harness  # noqa: E402
from bench import steps  # noqa: E402
from bench.harness import ROOT  # noqa: E402
from bench.steps import STAGES, compare, final_metrics  # noqa: E402
from bench.verdicts import within  # noqa: E402

GRID = ["train.backbones=[sasrec,gru4rec]", "train.variants=[id,id_text,history_text,slim]", "train.losses=[ce]",
        "train.seeds=[0,1,2]", "train.rationale_positions=[after_prefix]", "evaluate.protocols=[uni100,full]"]
LLM_STAGES = ("teacher", "student")
CONFIG = "configs/ml100k.yaml"
GOAL = 1.5  # a refresh costs at most GOAL x the changed fraction of the from-scratch cost


def step(root: Path, name: str, run_dir: Path, stages: str, extra: list[str], keep_data: bool = False) -> dict:
    """One resumable pipeline step (bench.steps.step) of configs/ml100k.yaml with the bench's train grid."""

    def keep() -> None:  # the refresh overwrites data/: keep the snapshot's tables to measure what changed
        shutil.copytree(run_dir / "data", root / "record" / f"{name}_data", dirs_exist_ok=True)

    return steps.step(root, name, CONFIG, run_dir, stages, [*GRID, *extra], before_record=keep if keep_data else None)


def _users(data_dir: Path) -> tuple[dict, dict]:
    """-> (raw user id -> the raw item ids of the prompt's prefix (item_ids[:-3]), the part a rationale is written
    from; raw item id -> its text)."""
    import pyarrow.parquet as pq

    from slim.io import columns as C
    from slim.text.prompts import HISTORY_CUT

    items = pq.read_table(data_dir / "items.parquet", columns=[C.ITEM_ID, C.RAW_ITEM_ID, C.TEXT]).to_pydict()
    raw = dict(zip(items[C.ITEM_ID], items[C.RAW_ITEM_ID]))
    u = pq.read_table(data_dir / "users.parquet", columns=[C.RAW_USER_ID, C.ITEM_IDS]).to_pydict()
    users = {r: tuple(raw[i] for i in ids[:-HISTORY_CUT]) for r, ids in zip(u[C.RAW_USER_ID], u[C.ITEM_IDS])}
    return users, dict(zip(items[C.RAW_ITEM_ID], items[C.TEXT]))


def changed(root: Path, refresh_dir: Path) -> dict:
    """The changed fractions, measured on the two snapshots' data tables."""
    old_u, old_i = _users(root / "record" / "snapshot_data")
    new_u, new_i = _users(refresh_dir / "data")
    new_users = [r for r in new_u if r not in old_u]
    prefix = [r for r in new_u if r in old_u and old_u[r] != new_u[r]]
    items = [r for r in new_i if old_i.get(r) != new_i[r]]
    return {"users": len(new_u), "users_new": len(new_users), "users_prefix_changed": len(prefix),
            "users_gone": len([r for r in old_u if r not in new_u]),
            "f_users": (len(new_users) + len(prefix)) / max(1, len(new_u)),
            "items": len(new_i), "items_changed": len(items), "f_items": len(items) / max(1, len(new_i)),
            "changed_users": set(new_users) | set(prefix)}


def teacher_fraction(run_dir: Path, ch: dict) -> float:
    """Of the users the full snapshot's teacher sample holds, the share that is new or whose prefix changed."""
    import pyarrow.dataset as pads
    import pyarrow.parquet as pq

    from slim.io import columns as C

    ids = pads.dataset(run_dir / "teacher" / "rationales", format="parquet").to_table(columns=[C.USER_ID])
    sel = set(ids.column(C.USER_ID).to_pylist())
    u = pq.read_table(run_dir / "data" / "users.parquet", columns=[C.USER_ID, C.RAW_USER_ID]).to_pydict()
    raw = [r for i, r in zip(u[C.USER_ID], u[C.RAW_USER_ID]) if i in sel]
    return sum(r in ch["changed_users"] for r in raw) / max(1, len(raw))


def cost(stage: str, m: dict, before: dict | None) -> dict:
    """What a stage's manifest says it cost in this step: requests and tokens (LLM stages), texts encoded, wall."""
    c, x, t = m.get("counts", {}), m.get("extra", {}), m.get("timings", {})
    out = {"wall_s": float(t.get("total_s", 0.0))}
    if stage == "teacher":
        b0 = (before or {}).get("extra", {}).get("billed", {}) if before else {}
        b = x.get("billed", {})
        out.update({k: int(b.get(k, 0)) - int(b0.get(k, 0)) for k in ("requests", "tokens_in", "tokens_out")})
        out["units"] = out["requests"]
    elif stage == "student":
        out.update({"requests": int(c.get("generated", 0)), "tokens_out": int(c.get("new_tokens_out", 0))})
        out["units"] = out["requests"]
    elif stage == "encode":
        out["texts"] = int(c.get("texts_encoded", sum(v for k, v in c.items() if k.endswith("_encoded"))))
        out["units"] = out["texts"]
    elif stage == "distill":
        out["refresh"] = x.get("refresh", "trained")
    return out


def report(a, root: Path, snap: dict, ref: dict, scr: dict) -> list[str]:
    ch = changed(root, root / "refresh")
    f = {"teacher": teacher_fraction(root / "refresh", ch), "student": ch["f_users"]}
    enc = cost("encode", scr["manifests"]["encode"], None)["texts"]
    items = ch["items"]
    f["encode"] = (ch["f_users"] * max(0, enc - items) + ch["f_items"] * items) / max(1, enc)
    lines = [f"Steps' wall: snapshot {snap['wall_s']:.0f} s, refresh {ref['wall_s']:.0f} s, scratch "
             f"{scr['wall_s']:.0f} s (a resumed step: since it resumed; the machine line is the report's, the steps "
             f"may have run on other days). Train grid: {' '.join(GRID)}.", "",
             "## What changed between the snapshots (measured on the data tables)", "",
             f"- users: {ch['users']:,} in the newer snapshot; {ch['users_new']:,} new, {ch['users_prefix_changed']:,} "
             f"with a changed prompt prefix (new interactions), {ch['users_gone']:,} gone: changed fraction "
             f"{ch['f_users']:.1%}",
             f"- items: {items:,}; {ch['items_changed']:,} new or with changed text ({ch['f_items']:.1%})",
             f"- the teacher's sample: {f['teacher']:.1%} of its users new or changed",
             f"- encode's texts (users' share weighted by the texts per user, items by theirs): {f['encode']:.1%}", "",
             "## Cost per stage", "",
             "| stage | refresh | from scratch | refresh / scratch | changed fraction | goal (<= 1.5x) | "
             "wall s refresh | wall s scratch |", "|---|---|---|---:|---:|---|---:|---:|"]
    for s in STAGES:
        if s not in ref["manifests"] or s not in scr["manifests"]:
            continue
        r, c = cost(s, ref["manifests"][s], snap["manifests"].get(s)), cost(s, scr["manifests"][s], None)
        what = {"teacher": "requests", "student": "rationales", "encode": "texts"}.get(s)
        if what:
            ratio = r["units"] / max(1, c["units"])
            verdict = within(ratio, GOAL * f[s], f"{GOAL} x {f[s]:.1%} = {GOAL * f[s]:.1%}")
            toks = f"; {r.get('tokens_out', 0):,} vs {c.get('tokens_out', 0):,} tokens out" if s in LLM_STAGES else ""
            lines.append(f"| {s} | {r['units']:,} {what} | {c['units']:,} {what}{toks} | {ratio:.1%} | {f[s]:.1%} | "
                         f"{verdict} | {r['wall_s']:.0f} | {c['wall_s']:.0f} |")
        else:
            note = f" ({r['refresh']})" if s == "distill" else ""
            lines.append(f"| {s}{note} | | | | | | {r['wall_s']:.0f} | {c['wall_s']:.0f} |")
    lines += ["", "## Final metrics: test NDCG@10 (full ranking), refresh vs scratch, paired over shared users", "",
              "| row | users | refresh | scratch | diff % | p (Wilcoxon) | p (t) |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for g in compare(final_metrics(root / "refresh"), final_metrics(root / "scratch")):
        diff = 100 * (g["a"] - g["b"]) / max(g["b"], 1e-9)
        lines.append(f"| {g['row']} | {g['users']:,} | {g['a']:.2f} | {g['b']:.2f} | {diff:+.1f} | "
                     f"{g['p_wilcoxon']:.2g} | {g['p_ttest']:.2g} |")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", default="~/slim-runs/refresh-ml100k", help="outside the work tree; it resumes")
    p.add_argument("--until", default="1998-03-31")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "refresh.md"))
    a = p.parse_args()
    root, machine = Path(a.root).expanduser(), harness.Machine()
    (root / "record").mkdir(parents=True, exist_ok=True)
    snap = step(root, "snapshot", root / "refresh", "data,teacher,distill,student,encode", [f"data.until={a.until}"],
                keep_data=True)
    ref = step(root, "refresh", root / "refresh", ",".join(STAGES), ["distill.refresh=keep"])
    scr = step(root, "scratch", root / "scratch", ",".join(STAGES), [])
    harness.write_results(a.out, f"Refresh vs from scratch: all of MovieLens-100K, snapshot cut at {a.until}",
                          report(a, root, snap, ref, scr),
                          harness.command(f"--root {steps.home(root)} --until {a.until}"), machine)


if __name__ == "__main__":
    main()
