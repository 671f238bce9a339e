"""Run directories from before 0.2 -> one folder per stage, named after the stage.

Before 0.2 the distill stage wrote `student/`, the student stage `rationales/` and the encode stage `embeddings/`.
`python jobs/migrate.py RUN_DIR` renames the three folders (`student/` first: its name is reused) and rewrites what
names them, so that a stage that was current stays current and nothing reruns:
- each manifest's stage, its output paths and the keys of its inputs;
- every fingerprint that hashed a renamed manifest (a manifest's key includes its stage name, and each downstream
  manifest records its upstream's key), recomputed in pipeline order; the student's model fingerprint when the
  model lives in the run directory (a bucket's copy has new upload times); the student's shard-state key;
- each finished train run's fingerprint, from the spec saved with its weights (slim.train.fingerprints.refingerprint).
A fingerprint is carried over only where it matched before the move: a stage that was already stale stays stale.

Resumable: what was read before anything moved is kept in `_migrate.json` at the top of the run directory until the
end; the same command after a kill finishes the job (a bucket's folder copy restarts, a local rename is atomic).
Every stage refuses a run directory in the old layout, or one whose migration has not finished, with this command.
"""

from __future__ import annotations

import json
from pathlib import Path

from slim.io import atomic
from slim.io import columns as C
from slim.io import storage
from slim.runtime.config import ConfigError
from slim.io.rundir import Manifest, RunDir, accept_old_forms, file_fingerprint
from slim.runner.upgrade import upgrade

MOVES = (("student", C.DISTILL_DIR), ("rationales", C.STUDENT_DIR), ("embeddings", C.ENCODE_DIR))  # in this order
NEW = dict(MOVES)
OLD_ORDER = ("data", "teacher", "student", "rationales", "embeddings", "train", "evaluate")  # pipeline order
PLAN_FILE = "_migrate.json"
DISTILL_PARTS = {"adapter", "merged", "examples", "ray_train", "train_metrics.json"}  # what only the old student/ held


def _names(p) -> set:
    return {q.name for q in p.iterdir()} if p.is_dir() else set()


def old_folders(run_dir, top: set | None = None) -> list[str]:
    """The pre-0.2 folders in a run directory ([] for today's layout): one listing of it (or `top`, its names), and
    of student/ if any."""
    root = storage.path(run_dir)
    top = _names(root) if top is None else top
    student = ["student"] if "student" in top and _names(root / "student") & DISTILL_PARTS else []
    return student + [f for f in ("rationales", "embeddings") if f in top]


def refuse_old_layout(run_dir) -> None:
    """ConfigError for a run directory in the pre-0.2 layout or mid-migration; nothing for a new or empty one.
    Every job calls it before its stage starts: two folder listings at most."""
    root = storage.path(run_dir)
    try:
        top = _names(root)
        old, midway = old_folders(root, top), PLAN_FILE in top
    except OSError:  # a bucket this machine cannot read (--check without its keys): the stage itself will say so
        return
    if old or midway:
        what = ("is midway through a migration" if midway else
                f"has the folders of an older version ({', '.join(f + '/' for f in old)}; today: "
                f"{', '.join(f'{o}/ -> {n}/' for o, n in MOVES if o in old)})")
        raise ConfigError(f"run directory {run_dir} {what}; run `python jobs/migrate.py {run_dir}` once (it renames "
                          "the folders and rewrites the manifests, so nothing reruns)")


def moved(rel: str) -> str:
    """A path inside the run directory, old layout -> new (one replacement of its first part)."""
    head, _, rest = rel.partition("/")
    return f"{NEW[head]}/{rest}".rstrip("/") if head in NEW else rel


def _moved_path(path: str, root) -> str | None:
    """A path (or URI) recorded in an old manifest -> where it is now; None when it is outside the moved folders."""
    if storage.is_remote(path):
        base = str(root).rstrip("/") + "/"
        rel = path[len(base):] if path.startswith(base) else None
    else:
        try:
            rel = str(Path(path).resolve().relative_to(Path(str(root)).resolve()))
        except ValueError:
            rel = None
    if rel is None or rel.split("/")[0] not in NEW or not path.endswith(rel):
        return None
    return path[:len(path) - len(rel)] + moved(rel)


def _read_plan(rd: RunDir) -> dict:
    """What the migration needs from before the move: the old manifests and which of their inputs were current."""
    root = rd.root
    mans = {f: rd.read_manifest(f) for f in OLD_ORDER}
    mans = {f: m for f, m in mans.items() if m is not None}
    up = {f: rd.upstream(f) for f in mans}
    current = {f: sorted(k for k, v in accept_old_forms(m.inputs, {k: up[k] for k in m.inputs if k in up}).items()
                         if k in OLD_ORDER and m.inputs[k] == v) for f, m in mans.items()}
    plan = {"manifests": {f: m.__dict__ for f, m in mans.items()}, "current": current, "moved": [],
            "model_current": False, "state_current": False, "train_current": False}
    st = mans.get("rationales")
    if st is not None:
        model = st.extra.get("model", {})
        path = str(model.get("path", ""))
        inside = bool(path) and _moved_path(path, root) is not None
        now = {"model": file_fingerprint(path)} if inside else {}
        plan["model_current"] = inside and accept_old_forms(st.inputs, now)["model"] == st.inputs.get("model")
        from slim.student.stage import STATE_FILE

        state = root / "rationales" / STATE_FILE
        plan["state_current"] = state.exists() and json.loads(state.read_text()).get("key") == st.key()
    tm = mans.get("train")
    plan["train_current"] = tm is not None and set(current["train"]) == {k for k in tm.inputs if k in OLD_ORDER}
    return plan


def _rewrite(rd: RunDir, old: str, d: dict, plan: dict) -> Manifest:
    """One manifest in the new layout; its current inputs re-fingerprinted against the (already rewritten)
    upstream manifests."""
    root, new = rd.root, NEW.get(old, old)
    m = Manifest(**{**d, "stage": new, "outputs": [moved(o) for o in d["outputs"]]})
    m.inputs = {NEW.get(k, k): (rd.upstream(NEW.get(k, k)) if k in plan["current"][old] else v)
                for k, v in d["inputs"].items()}
    model = dict(m.extra.get("model") or {})
    if old == "rationales" and model:
        for key in ("path", "merged_into"):
            model[key] = _moved_path(str(model.get(key, "")), root) or model.get(key)
        model = {k: v for k, v in model.items() if v is not None}
        if plan["model_current"]:
            model["fingerprint"] = m.inputs["model"] = file_fingerprint(model["path"])
        m.extra = {**m.extra, "model": model}
    return m


def migrate(run_dir, dry_run: bool = False) -> dict:
    """-> what was done: folders moved, manifests rewritten, train runs re-fingerprinted."""
    rd = RunDir(run_dir)
    root, plan_path = rd.root, rd.root / PLAN_FILE
    if plan_path.exists():
        plan = json.loads(plan_path.read_text())  # a migration stopped midway: finish it
    else:
        if not old_folders(root):  # today's layout: fingerprints in the old form, if any, to content fingerprints
            up = [f"{s} (content fingerprints)" for s in upgrade(run_dir, dry_run)]
            note = "dry run: nothing changed" if dry_run and up else "done" if up else "already current"
            return {"run_dir": str(run_dir), "moved": [], "manifests": up, "train_runs": 0, "note": note}
        clash = [n for o, n in MOVES if n != "student" and (root / n).exists()]
        if clash:
            raise ConfigError(f"{run_dir} has both layouts ({', '.join(c + '/' for c in clash)} beside the old "
                              "folders): move one of them away by hand")
        plan = _read_plan(rd)
        if dry_run:
            return {"run_dir": str(run_dir), "moved": [f"{o}/ -> {n}/" for o, n in MOVES if (root / o).exists()],
                    "manifests": sorted(plan["manifests"]), "train_runs": 0, "note": "dry run: nothing changed"}
        atomic.write_json(plan_path, plan)
    for o, n in MOVES:
        if o not in plan["moved"]:
            if (root / o).exists():
                storage.move_tree(root / o, root / n)
            plan["moved"].append(o)
            atomic.write_json(plan_path, plan)
    return _finish(rd, plan)


def _finish(rd: RunDir, plan: dict) -> dict:
    done, runs = [], 0
    for old in OLD_ORDER:
        d = plan["manifests"].get(old)
        if d is None:
            continue
        m = _rewrite(rd, old, d, plan)
        if old == "rationales" and plan["state_current"]:
            from slim.student.stage import STATE_FILE

            atomic.write_json(rd.root / C.STUDENT_DIR / STATE_FILE, {"key": m.key()})
        if old == "train" and plan["train_current"]:
            from slim.train.fingerprints import refingerprint

            runs = refingerprint(rd.root, m.outputs, m.inputs, m.config)
        rd.write_manifest(m)
        done.append(f"{old} -> {m.stage}" if old != m.stage else old)
    storage.remove_tree(rd.root / PLAN_FILE)
    done += [f"{s} (content fingerprints)" for s in upgrade(rd.root)]  # e.g. the data stage's source files
    return {"run_dir": str(rd.root), "moved": [f"{o}/ -> {n}/" for o, n in MOVES if o in plan["moved"]],
            "manifests": done, "train_runs": runs, "note": "done"}


def summary(res: dict) -> list[str]:
    dry = res["note"].startswith("dry run")
    lines = [f"{res['run_dir']}: {res['note']}"]
    lines += [f"  {'would move' if dry else 'moved'} {m}" for m in res["moved"]]
    lines += [f"  manifest {m}{' (rewritten)' if dry else ''}" for m in res["manifests"]]
    lines += [f"  train runs re-fingerprinted: {res['train_runs']}"] if res["train_runs"] else []
    return lines
