"""Top-k items and the rationale behind them for one user of a finished run:
python jobs/explain.py --config configs/tiny.yaml --user 3 [--k 10] [--run sasrec-slim-bce-s0] [--json]"""

import argparse
import json
import sys


def _load(a) -> dict:
    """explain()'s answer; a config or run-directory problem is one line on stderr and exit code 2."""
    from slim import config
    from slim.cli import report
    from slim.migrate import refuse_old_layout
    from slim.recsys.explain import explain

    try:
        raw = config.load_raw(a.config, a.overrides)
        if not raw.get("run_dir"):
            raise config.ConfigError(f"{a.config}: no run_dir (the top-level key naming the trained run's "
                                     "directory); add it to the file or pass run_dir=PATH")
        refuse_old_layout(raw["run_dir"])  # a run directory from before 0.2 names its folders differently
        return explain(raw["run_dir"], a.user, a.k, a.run)
    except config.ConfigError as e:
        sys.exit(report(e))
    except (KeyError, ValueError, FileNotFoundError, RuntimeError) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else e  # KeyError's str() adds quotes
        print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--config", required=True)
    p.add_argument("--user", type=int, required=True)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--run", default=None, help="models/<name>; default: the best by validation NDCG@10")
    p.add_argument("--json", action="store_true")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. run_dir=runs/tiny")
    a = p.parse_args()
    out = _load(a)
    if a.json:
        print(json.dumps(out, indent=2))
        sys.exit(0)
    print(f"user {out['user_id']} ({out['run']}; rationale used: {out['rationale_used']})")
    print("history: " + "; ".join(h["title"] or str(h["item_id"]) for h in out["history"][-10:]))
    r = out["rationale"] or {"steps": ["(no rationale)", "", ""], "status": "missing"}
    for n, step in enumerate(r["steps"], 1):
        print(f"step {n}: {step.strip()[:400]}")
    found = [p for p in r.get("products", []) if p["item_id"]]
    if found:  # step 3's products that are real catalogue items
        print("in the catalogue: " + "; ".join(f"{p['product']} -> {p['title']} (item {p['item_id']})" for p in found))
    for n, it in enumerate(out["items"], 1):
        print(f"{n:3d}. {it['score']:8.3f}  {it['title']} (item {it['item_id']})")
