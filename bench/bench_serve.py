"""Serving cost against the framework's floor: the recommender behind Ray Serve over HTTP vs a no-op Serve app.

  PYTHONPATH=. .venv/bin/python bench/bench_serve.py --items 5000 --users 2000 --requests 150 --seconds 10 --rounds 3

A generated run directory (random-walk histories, an untrained SASRec: a request's cost does not depend on the
weights' values) is served by three apps of one replica each (0.5 CPU): the recommender with batching on (`/on`,
max_batch_size 32; a lone request is not held for a batch) and off (`/off`), and the floor (`/floor`): the same
FastAPI ingress (guard middleware, request model) returning a constant, i.e. what any Ray Serve app pays per request
here. A load generator in a second process (asyncio + httpx, loopback) sends POST /recommend {history, k: 10} at 1,
8 and 32 concurrent clients to each app in turn, in --rounds alternating rounds, so drifting machine load hits all
three alike; each figure is the median over rounds, reported as a ratio of the floor's. Beside it: each replica's
CPU per request (steadier than req/s on a shared machine), its requests per forward pass (the batching it got), the
served code timed in this process by batch size, and from that a bound per client level (the floor's time per
request plus the in-process time); and each replica's memory.
"""

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as `python bench/x.py`: the repository first

from bench import harness  # noqa: E402
from bench.verdicts import goal, serve_bound  # noqa: E402

LEVELS = (1, 8, 32)
BATCHES = (1, 2, 4, 8, 16, 32)  # in-process batch sizes: the client counts and what a replica may get


def make_run(root: Path, n_items: int, n_users: int, hidden: int, max_len: int, seed: int = 0) -> list:
    """items.parquet, users.parquet and one untrained SASRec run in models/; returns the users' histories."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from slim.io import columns as C
    from slim.recsys.checkpoint import save_run
    from slim.recsys.spec import RunSpec, build_model

    import shutil

    rng = np.random.default_rng(seed)
    shutil.rmtree(root / "models", ignore_errors=True)  # one run: the one served and the one timed in-process
    (root / "data").mkdir(parents=True, exist_ok=True)
    seqs = [((rng.integers(1, n_items + 1) - 1 + np.arange(rng.integers(5, 2 * max_len))) % n_items + 1)
            for _ in range(n_users)]
    pq.write_table(pa.table({C.ITEM_ID: pa.array(np.arange(1, n_items + 1, dtype=np.int32)),
                             C.TITLE: [f"Item {i}" for i in range(1, n_items + 1)],
                             C.TEXT: [f"Item {i}" for i in range(1, n_items + 1)]}), root / C.ITEMS_FILE)
    pq.write_table(pa.table({C.USER_ID: pa.array(np.arange(n_users, dtype=np.int64)),
                             C.ITEM_IDS: pa.array([s.tolist() for s in seqs], pa.list_(pa.int32()))}),
                   root / C.USERS_FILE)
    spec = RunSpec("sasrec", "id", 0, hidden=hidden, max_len=max_len)
    rec = {"run": spec.name, "backbone": "sasrec", "variant": "id", "seed": 0, "best_valid_ndcg10": 0.0}
    save_run(root / "models" / spec.name, build_model(spec, n_items, None), spec, n_items, rec, "bench")
    return [s.astype(np.int64) for s in seqs]


def in_process(root: Path, bodies: list, requests: int) -> dict:
    """Seconds per call of the served code in this process, per batch size in BATCHES: each parsed request turned
    into a Query (serve's own validation) and one Ranker.rank over the batch (encode, score every item, drop the
    history, top 10), one torch thread as a replica (serve.torch_threads). No HTTP, no Serve."""
    from slim.serve import ServeConfig, schemas
    from slim.serve.model import Ranker

    cfg = ServeConfig(run_dir=str(root))
    ranker = Ranker(next((root / "models").glob("sasrec-id*")), root, cfg.torch_threads)
    reqs = [schemas.RecommendRequest(**b) for b in bodies]  # the bodies the load generator sends
    for r in reqs[:3]:  # warm, as the load generator warms the replica
        ranker.rank([schemas.recommend_query(ranker, r, cfg.max_history_items, cfg.max_candidates)])
    out = {}
    for batch in BATCHES:
        out[batch] = []
        for i in range(max(20, requests // batch)):
            part = [reqs[(i * batch + j) % len(reqs)] for j in range(batch)]
            with harness.timed() as t:
                ranker.rank([schemas.recommend_query(ranker, r, cfg.max_history_items, cfg.max_candidates)
                             for r in part])
            out[batch].append(t.s)
    return {b: np.array(v) for b, v in out.items()}


async def _load(url: str, bodies: list, clients: int, requests: int, seconds: float) -> dict:
    import httpx

    lat, errors, sent = [], 0, 0
    deadline = time.perf_counter() + seconds

    async def client(c):
        nonlocal errors, sent
        while sent < requests and time.perf_counter() < deadline:
            body = bodies[sent % len(bodies)]
            sent += 1
            t0 = time.perf_counter()
            r = await (c.post(url, json=body) if body is not None else c.get(url))
            lat.append(time.perf_counter() - t0)
            errors += r.status_code != 200

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=60, limits=limits) as c:
        warm = min(3, requests)
        for _ in range(warm):  # warm the connections and the replica
            await (c.post(url, json=bodies[0]) if bodies[0] is not None else c.get(url))
        t0 = time.perf_counter()
        await asyncio.gather(*(client(c) for _ in range(clients)))
        wall = time.perf_counter() - t0
    lat = np.array(lat)
    return {"clients": clients, "n": len(lat), "warm": warm, "errors": errors, "rps": len(lat) / wall,
            "p50_ms": 1e3 * np.percentile(lat, 50), "p99_ms": 1e3 * np.percentile(lat, 99)}


def loadgen(url: str, bodies_file: str, clients: int, requests: int, seconds: float) -> dict:
    """Run the load generator in a second process (so its CPU use is not this process's) and read its result."""
    cmd = [sys.executable, __file__, "--loadgen", url, "--bodies", bodies_file, "--clients", str(clients),
           "--requests", str(requests), "--seconds", str(seconds)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _health(url: str) -> dict:
    import httpx

    return httpx.get(f"{url}/healthz").json()


def replica_process(url: str):
    """The replica answering `url`/healthz (it reports its pid; same machine)."""
    import psutil

    return psutil.Process(_health(url)["pid"])


def _passes(url: str) -> int:
    return _health(url).get("encoder_passes", 0)  # the floor has no model: 0


def replica_memory(url: str) -> dict:
    """PSS and RSS of the replica answering `url`/healthz."""
    p = replica_process(url)
    return {"pss_mb": p.memory_full_info().pss / 2**20, "rss_mb": p.memory_info().rss / 2**20}


def floor_app(access_log: bool):
    """A no-op app with the recommender's ingress: the same FastAPI guard (host/auth/body checks, error shapes) and
    request model, a constant answer. Its cost per request is the framework's floor on this machine."""
    from fastapi import FastAPI
    from ray import serve

    from slim.serve import guard, schemas

    api = FastAPI()
    guard.install(api)

    @serve.deployment(name="floor", max_ongoing_requests=64, logging_config={"enable_access_log": access_log},
                      ray_actor_options={"num_cpus": 0.5})
    @serve.ingress(api)
    class Floor:
        @api.post("/recommend")
        async def recommend(self, req: schemas.RecommendRequest) -> dict:
            return {"items": []}

        @api.get("/healthz")
        async def healthz(self) -> dict:
            return {"status": "ok", "pid": os.getpid()}

    return Floor.bind()


def start_apps(root: Path, port: int, wait_s: float, access_log: bool):
    from ray import serve

    from slim.serve import ServeConfig
    from slim.serve.app import build

    harness.ray(6)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(floor_app(access_log), name="floor", route_prefix="/floor")
    for name, mbs in (("on", 32), ("off", 1)):
        cfg = ServeConfig(run_dir=str(root), replica_cpus=0.5, max_batch_size=mbs, batch_wait_timeout_s=wait_s,
                          max_ongoing_requests=64, access_log=access_log)
        serve.run(build(cfg), name=name, route_prefix=f"/{name}")
    return serve


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--items", type=int, default=5000)
    p.add_argument("--users", type=int, default=2000)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--max-len", type=int, default=50)
    p.add_argument("--requests", type=int, default=150, help="per run (app, level, round), at most")
    p.add_argument("--seconds", type=float, default=10, help="per run, at most")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds over the three apps")
    p.add_argument("--batch-wait-s", type=float, default=0.005)
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--access-log", action=argparse.BooleanOptionalAction, default=True,
                   help="the replicas' per-request log line (serve.access_log)")
    p.add_argument("--run-dir", default="/tmp/slim_bench_serve")
    p.add_argument("--out", default="bench/results/serve.md")
    p.add_argument("--loadgen", help="(internal) run as the load generator against this URL")
    p.add_argument("--bodies", help="(internal) JSON list of request bodies; none = GET")
    p.add_argument("--clients", type=int, help="(internal) concurrent clients")
    a = p.parse_args()
    if a.loadgen:  # the second process
        bodies = json.loads(Path(a.bodies).read_text()) if a.bodies else [None]
        print(json.dumps(asyncio.run(_load(a.loadgen, bodies, a.clients, a.requests, a.seconds))))
        return
    run(a)


APPS = ("floor", "on", "off")
METRICS = ("rps", "p50_ms", "p99_ms", "cpu_ms", "per_pass")


def run(a) -> None:
    root = Path(a.run_dir)
    seqs = make_run(root, a.items, a.users, a.hidden, a.max_len)
    body_list = [{"history": s.tolist(), "k": 10} for s in seqs[:500]]
    bodies = root / "bodies.json"
    bodies.write_text(json.dumps(body_list))
    machine = harness.Machine()
    base = in_process(root, body_list, a.requests)
    serve = start_apps(root, a.port, a.batch_wait_s, a.access_log)
    runs = {}
    try:
        url = f"http://127.0.0.1:{a.port}"
        procs = {m: replica_process(f"{url}/{m}") for m in APPS}
        for r in range(a.rounds):  # alternating: floor, on, off at each level, round after round
            for c in LEVELS:
                for m in APPS:
                    cpu0, passes0 = sum(procs[m].cpu_times()[:2]), _passes(f"{url}/{m}")
                    out = loadgen(f"{url}/{m}/recommend", str(bodies), c, a.requests, a.seconds)
                    # requests per forward pass: how much batching the replica got
                    done = _passes(f"{url}/{m}") - passes0
                    out["per_pass"] = (out["n"] + out["warm"]) / done if done else 0.0
                    # the replica's CPU per request (warm-up requests included): less noisy than req/s on a shared
                    # machine, since it does not count time spent waiting for the other processes
                    out["cpu_ms"] = 1e3 * (sum(procs[m].cpu_times()[:2]) - cpu0) / (out["n"] + out["warm"])
                    runs.setdefault((m, c), []).append(out)
        mem = {m: replica_memory(f"{url}/{m}") for m in APPS}
    finally:
        serve.shutdown()
    write(a, base, runs, mem, machine)


def _median(runs: list) -> dict:
    """The median over rounds of each figure; requests and errors summed."""
    out = {k: float(np.median([r[k] for r in runs])) for k in METRICS}
    return {**out, "n": sum(r["n"] for r in runs), "errors": sum(r["errors"] for r in runs)}


def _command(a) -> str:
    extra = [f"--{k.replace('_', '-')} {getattr(a, k)}" for k, v in (("hidden", 64), ("max_len", 50),
             ("out", "bench/results/serve.md")) if getattr(a, k) != v]
    return harness.command(" ".join([f"--items {a.items}", f"--users {a.users}", f"--requests {a.requests}",
                                     f"--seconds {a.seconds:g}", f"--rounds {a.rounds}", *extra]
                                    + ([] if a.access_log else ["--no-access-log"])))


def _app_table(runs: dict, med: dict) -> list:
    lines = ["| app | clients | requests | errors | req/s | p50 ms | p99 ms | replica CPU ms/req | req/s / floor "
             "| p50 / floor | p99 / floor | req/s / floor, per round |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for c in LEVELS:
        f = med[("floor", c)]
        for m in APPS:
            r = med[(m, c)]
            per = ", ".join(f"{x['rps'] / y['rps']:.2f}" for x, y in zip(runs[(m, c)], runs[("floor", c)]))
            lines.append(f"| {m} | {c} | {r['n']} | {r['errors']} | {r['rps']:.1f} | {r['p50_ms']:.2f} | "
                         f"{r['p99_ms']:.2f} | {r['cpu_ms']:.2f} | {r['rps'] / f['rps']:.2f} | "
                         f"{r['p50_ms'] / f['p50_ms']:.2f} | {r['p99_ms'] / f['p99_ms']:.2f} | {per} |")
    ratio = {f"{c} clients": med[("on", c)]["rps"] / med[("floor", c)]["rps"] for c in LEVELS}
    figures = ", ".join(f"{k} {v:.2f}x" for k, v in ratio.items())
    what = f"Goal (issue 30), batching on: at least 0.9x the floor's requests/s ({figures})"
    return lines + ["", goal(ratio, 0.9, what) + "."]


def _bound_table(base: dict, med: dict) -> list:
    ms = {b: 1e3 * np.median(v) / b for b, v in base.items()}  # in-process ms per request at batch size b
    # The most the app can serve if its only extra cost per request over the floor is the model's in-process cost:
    # per-request times add. At batches of the client count, and at the batch size the replica actually got
    # (requests per forward pass, rounded down to a measured size).
    got = {c: max([b for b in BATCHES if b <= max(1.0, med[("on", c)]["per_pass"])]) for c in LEVELS}
    bound = {c: {w: 1 / (1 / med[("floor", c)]["rps"] + ms[w] / 1e3) for w in (c, got[c])} for c in LEVELS}
    lines = [f"In-process (the served code: Query parsing + Ranker.rank, this process, 1 torch thread, no HTTP), ms "
             "per request by batch size: " + ", ".join(f"{ms[b]:.2f} at {b}" for b in BATCHES) + ". Bound = the "
             "floor's time per request plus the in-process time per request: what the app could serve if the model's "
             "compute were its only cost over the floor; at batches of the client count, and at the batch the "
             "replica got (its requests per forward pass, rounded down to a measured size).", "",
             "| clients | floor req/s | on req/s | bound, batches of the clients, req/s | on / it | on's requests per "
             "forward pass | bound at that batch, req/s | on / it | bound / floor | on's replica CPU over the "
             "floor's, ms/req |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for c in LEVELS:
        f, on, b = med[("floor", c)], med[("on", c)], bound[c]
        lines.append(f"| {c} | {f['rps']:.1f} | {on['rps']:.1f} | {b[c]:.1f} | {on['rps'] / b[c]:.2f} | "
                     f"{on['per_pass']:.1f} | {b[got[c]]:.1f} | {on['rps'] / b[got[c]]:.2f} | "
                     f"{b[got[c]] / f['rps']:.2f} | {on['cpu_ms'] - f['cpu_ms']:.2f} |")
    verdict = serve_bound({c: bound[c][got[c]] / med[("floor", c)]["rps"] for c in LEVELS})
    return lines + ["", verdict + " on / bound is the serving code's own overhead; the CPU column is the replica's "
                    "extra CPU per request, to set beside the in-process time per request."]


def write(a, base: dict, runs: dict, mem: dict, machine: harness.Machine) -> None:
    med = {k: _median(v) for k, v in runs.items()}
    lines = [
        "The cores are shared by Ray, the Serve proxy and replicas, the load generator (a second process, loopback) "
        "and any other jobs (the load average above). SASRec "
        f"(id), hidden {a.hidden}, max_len {a.max_len}, {a.items:,} items; POST /recommend {{history, k: 10}}, "
        f"histories of 5..{2 * a.max_len - 1} items. Three apps of one replica each (0.5 CPU, max_ongoing_requests "
        f"64, access log {'on' if a.access_log else 'off'}): floor = the same FastAPI ingress and request model "
        "returning a constant; on = the recommender, max_batch_size 32, wait "
        f"{a.batch_wait_s * 1e3:g} ms (a lone request goes straight to the model); off = max_batch_size 1. "
        f"{a.rounds} alternating rounds (floor, on, off at each level); at most {a.requests} requests or "
        f"{a.seconds:g} s per run; figures are medians over rounds.", "",
        *_app_table(runs, med), "", *_bound_table(base, med), "",
        "Memory per replica: " + "; ".join(
            f"{m}: PSS {v['pss_mb']:.0f} MB, RSS {v['rss_mb']:.0f} MB" for m, v in mem.items()) + ".", ""]
    harness.write_results(a.out, "Serving benchmark (the recommender on Ray Serve vs the framework's floor)", lines,
                          _command(a), machine)


if __name__ == "__main__":
    main()
