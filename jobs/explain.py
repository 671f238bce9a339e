"""Top-k items and the rationale behind them for one user of a finished run:
python jobs/explain.py --config configs/tiny.yaml --user 3 [--k 10] [--run sasrec-slim-bce-s0] [--json]"""

import argparse
import json
import sys

if __name__ == "__main__":
    from slim import config
    from slim.recsys.explain import explain

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--config", required=True)
    p.add_argument("--user", type=int, required=True)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--run", default=None, help="models/<name>; default: the best by validation NDCG@10")
    p.add_argument("--json", action="store_true")
    p.add_argument("overrides", nargs="*")
    a = p.parse_args()
    try:
        raw = config.load_raw(a.config, a.overrides)
    except config.ConfigError as e:
        sys.exit(f"config error: {e}")
    try:
        out = explain(raw["run_dir"], a.user, a.k, a.run)
    except (KeyError, ValueError, FileNotFoundError, RuntimeError) as e:
        sys.exit(f"explain: {e}")
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
