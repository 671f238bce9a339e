"""Our GRU4Rec/SASRec/SRGNN (id, id_text) vs RecBole 1.2.1's models of the same name, same split, same run.

For every backbone x seed, our `id` run and RecBole's run execute at the same time (one thread each), so both see
the same machine load; our `id_text` run follows. Rows append to <work>/runs.jsonl as they finish (a rerun skips
finished rows); the report goes to bench/results/recommenders.md.
  nice .venv/bin/python bench/bench_recommenders.py --data runs/games --users 4000 --epochs 3 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as `python bench/x.py`: the repository first

from bench import harness  # noqa: E402
from slim.recsys import data as recdata  # noqa: E402
from slim.recsys import itemtext  # noqa: E402
from slim.recsys import metrics  # noqa: E402
from slim.recsys.spec import RunSpec  # noqa: E402
from slim.train.loop import fit  # noqa: E402

RB_NAMES = {"gru4rec": "GRU4Rec", "sasrec": "SASRec", "srgnn": "SRGNN"}
PAPER = {"gru4rec": (17.61, 27.33), "sasrec": (22.73, 27.46), "srgnn": (16.45, 21.54)}  # Games NDCG@10 id, +text
SHOWN = ("NDCG@10", "Hit@10", "Hit@20")


def write_atomic_files(d: recdata.SeqData, work: Path) -> None:
    """RecBole input: one interaction per (user, item) with timestamp = position, so its TO + LS split is ours;
    an .item file lists every item so RecBole's item ids cover our candidates."""
    work.joinpath("rb").mkdir(parents=True, exist_ok=True)
    with open(work / "rb" / "rb.inter", "w") as f:
        f.write("user_id:token\titem_id:token\ttimestamp:float\n")
        for u, s in zip(d.user_ids, d.seqs):
            f.writelines(f"{u}\t{i}\t{t}\n" for t, i in enumerate(s))
    with open(work / "rb" / "rb.item", "w") as f:
        f.write("item_id:token\tdummy:float\n")
        f.writelines(f"{i}\t0\n" for i in range(1, d.num_items + 1))
    np.savez(work / "candidates.npz", user_token=d.user_ids.astype(str),
             valid_cand=d.candidates[("valid", "uni100")], test_cand=d.candidates[("test", "uni100")])


def start_recbole(args, backbone: str, seed: int, work: Path):
    # RecBole's own virtual environment: PYTHONPATH left as it is
    env = harness.subprocess_env(None, TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1", OMP_NUM_THREADS="1")
    cmd = ["nice", args.recbole_python, str(Path(__file__).parent / "recbole_peer" / "run_recbole.py"),
           "--work", str(work / "rb_root"), "--model", RB_NAMES[backbone], "--seed", str(seed),
           "--epochs", str(args.epochs), "--patience", str(args.patience), "--batch-size", str(args.batch_size),
           "--lr", str(args.lr), "--loss", args.loss, "--out", str(work / "runs.jsonl")]
    log = open(work / f"recbole-{backbone}-s{seed}.log", "w")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)


def ours(args, d, text, backbone, variant, seed, work: Path) -> None:
    spec = RunSpec(backbone, variant, seed, hidden=64, max_len=50, epochs=args.epochs, patience=args.patience,
                   batch_size=args.batch_size, lr=args.lr, loss=args.loss, threads=1)
    _, rec = fit(spec, d, text, "uni100", ("uni100",), progress=print)
    rec = {**rec, "impl": "slim", "test": {"uni100": rec["test"]["uni100"]}}
    rec.pop("valid", None)
    with open(work / "runs.jsonl", "a") as f:
        f.write(json.dumps(rec) + "\n")


def done(work: Path) -> set:
    p = work / "runs.jsonl"
    rows = [json.loads(l) for l in p.read_text().splitlines()] if p.exists() else []
    return {(r["impl"], r["backbone"], r["variant"], r["seed"]) for r in rows}


def report(work: Path, args, n_users: int, n_items: int) -> list[str]:
    rows = [json.loads(l) for l in (work / "runs.jsonl").read_text().splitlines()]
    ch = metrics.chance_for("uni100", n_items)
    g: dict = {}
    for r in rows:
        g.setdefault((r["backbone"], r["variant"], r["impl"]), []).append(r)
    ms = lambda rs, f: (float(np.mean([f(r) for r in rs])), float(np.std([f(r) for r in rs])))
    out = [f"Scope: {n_users} users (fixed-seed subsample of {args.data}), {n_items} items, up to {args.epochs} "
           f"epochs (early stopping patience {args.patience} on valid uni100 NDCG@10), loss {args.loss} (ours: BCE "
           f"with 1 uniform negative; RecBole's sequential models have no BCE, so it uses BPR with 1 uniform "
           f"negative), hidden 64, max_len 50, batch {args.batch_size}, lr {args.lr}, 1 CPU thread per run; our "
           f"`id` run and RecBole's run of the same backbone/seed ran concurrently (same machine load). "
           "RecBole's sampled evaluation is patched: each user is scored once with `full_sort_predict` and our "
           "stored 1+100 candidates are gathered (same ranks as its per-candidate scoring, ~200x faster). "
           "Throughput = next-item training targets per second of training (RecBole: augmented prefixes/s).", "",
           f"Chance level (uni100): " + ", ".join(f"{m} {ch[m]:.2f}" for m in SHOWN), "",
           "| backbone | variant | impl | seeds | " + " | ".join(SHOWN) + " | targets/s | epochs | paper NDCG@10 |",
           "|---|---|---|---|" + "---|" * (len(SHOWN) + 3)]
    ratios = []
    for (bb, var, impl), rs in sorted(g.items()):
        cells = [f"{m:.2f} ± {s:.2f}" for m, s in (ms(rs, lambda r, k=k: r["test"]["uni100"][k]) for k in SHOWN)]
        tp = ms(rs, lambda r: r["targets_per_s"])
        paper = PAPER[bb][0 if var == "id" else 1] if impl == "slim" else ""
        out.append(f"| {bb} | {var} | {impl} | {len(rs)} | " + " | ".join(cells) +
                   f" | {tp[0]:.0f} ± {tp[1]:.0f} | {np.mean([r['epochs_run'] for r in rs]):.1f} | {paper} |")
        if impl == "slim" and (bb, "id", "recbole") in g:
            peer = g[(bb, "id", "recbole")]
            acc = ms(rs, lambda r: r["test"]["uni100"]["NDCG@10"])[0] / ms(peer, lambda r: r["test"]["uni100"]["NDCG@10"])[0]
            spd = tp[0] / ms(peer, lambda r: r["targets_per_s"])[0]
            ratios.append(f"| {bb} | {var} | {acc:.2f} | {spd:.2f} |")
    out += ["", "Ratios slim / RecBole (RecBole `id` model of the same name as the baseline):", "",
            "| backbone | slim variant | NDCG@10 ratio | throughput ratio |", "|---|---|---|---|", *ratios, ""]
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data", default="runs/games", help="run dir holding data/ (the data stage's output)")
    p.add_argument("--work", default="/tmp/bench_recommenders")
    p.add_argument("--users", type=int, default=4000, help="fixed-seed user subsample (0 = all)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--patience", type=int, default=3)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--backbones", nargs="+", default=["gru4rec", "sasrec", "srgnn"])
    p.add_argument("--variants", nargs="+", default=["id", "id_text"])
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--loss", default="bce", choices=["bce", "ce"])
    p.add_argument("--no-recbole", action="store_true")
    p.add_argument("--recbole-python", default=os.path.expanduser("~/.cache/slim/recbole-venv/bin/python"))
    p.add_argument("--out", default="bench/results/recommenders.md")
    args = p.parse_args()
    cmd, machine = harness.command(nice=True), harness.Machine()
    work = Path(args.work)
    run = work / "run"  # our run dir: data/ linked read-only, our caches written here
    run.mkdir(parents=True, exist_ok=True)
    if not (run / "data").exists():
        os.symlink(Path(args.data).resolve() / "data", run / "data")
    __import__("torch").set_num_threads(1)
    d = recdata.load(run, args.users, 0)
    text = itemtext.item_text(run) if any(v != "id" for v in args.variants) else None
    write_atomic_files(d, work / "rb_root")
    for seed in args.seeds:  # seed outer: a cut-short bench still has every backbone
        for bb in args.backbones:
            have = done(work)
            peer = None
            if not args.no_recbole and ("recbole", bb, "id", seed) not in have:
                peer = start_recbole(args, bb, seed, work)
            for var in args.variants:
                if ("slim", bb, var, seed) not in have:
                    with harness.timed() as t:
                        ours(args, d, text, bb, var, seed, work)
                    print(f"slim {bb} {var} s{seed}: {t.s:.0f}s", flush=True)
            if peer is not None and peer.wait() != 0:
                print(f"recbole {bb} s{seed} failed: see {work}/recbole-{bb}-s{seed}.log", flush=True)
            harness.write_results(args.out, "Sequential recommenders: slim vs RecBole 1.2.1 (Amazon Games, uni100, "
                                  "test split)", report(work, args, len(d.seqs), d.num_items), cmd, machine,
                                  echo=False)
    print(Path(args.out).read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
