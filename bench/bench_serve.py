"""Serving overhead: the recommender behind Ray Serve over HTTP vs the same requests scored in-process.

  PYTHONPATH=. .venv/bin/python bench/bench_serve.py --items 5000 --users 2000 --requests 400 --seconds 30

A generated run directory (random-walk histories, an untrained SASRec of the configured size: the cost of a request
does not depend on the weights' values) is served by two apps of one replica each, batching on (`/on`) and off
(`/off`). A load generator in a second process (asyncio + httpx, loopback only, at most --requests requests or
--seconds per level) sends POST /recommend {history, k: 10} at 1, 8 and 32 concurrent clients and reports
requests/s and p50/p99 latency. The baseline is plain PyTorch in this process on the same histories: encode +
score every item (item vectors computed once, as the server does) + top-k, one request at a time (latency) and in
batches of the client count (throughput). The
network floor is GET /healthz through the same proxy and replica (no model work). Memory: each replica's PSS and RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

LEVELS = (1, 8, 32)


def make_run(root: Path, n_items: int, n_users: int, hidden: int, max_len: int, seed: int = 0) -> list:
    """items.parquet, users.parquet and one untrained SASRec run in models/; returns the users' histories."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from slim import columns as C
    from slim.recsys.checkpoint import save_run
    from slim.recsys.train import RunSpec, build_model

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


def in_process(root: Path, seqs: list, batch: int, n: int) -> np.ndarray:
    """Seconds per call of plain PyTorch on `batch` histories at a time (encode, score all, top 10)."""
    import torch

    from slim.recsys.data import pad_right
    from slim.recsys.checkpoint import load_model

    torch.set_num_threads(1)  # as a replica (serve.torch_threads)
    model, spec = load_model(next((root / "models").glob("sasrec-id*")))
    out = []
    with torch.no_grad():
        table = model.items.table()  # every item's vector once, as the server does
        for i in range(n):
            part = [seqs[(i * batch + j) % len(seqs)] for j in range(batch)]
            t0 = time.perf_counter()
            x, lens = pad_right(part, spec.max_len)
            sc = model.encode(torch.from_numpy(x), torch.from_numpy(lens)) @ table.T
            sc[:, 0] = float("-inf")
            torch.topk(sc, 10, dim=1)
            out.append(time.perf_counter() - t0)
    return np.array(out)


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
        for _ in range(min(3, requests)):  # warm the connections and the replica
            await (c.post(url, json=bodies[0]) if bodies[0] is not None else c.get(url))
        t0 = time.perf_counter()
        await asyncio.gather(*(client(c) for _ in range(clients)))
        wall = time.perf_counter() - t0
    lat = np.array(lat)
    return {"clients": clients, "n": len(lat), "errors": errors, "rps": len(lat) / wall,
            "p50_ms": 1e3 * np.percentile(lat, 50), "p99_ms": 1e3 * np.percentile(lat, 99)}


def loadgen(url: str, bodies_file: str, clients: int, requests: int, seconds: float) -> dict:
    """Run the load generator in a second process (so its CPU use is not this process's) and read its result."""
    cmd = [sys.executable, __file__, "--loadgen", url, "--bodies", bodies_file, "--clients", str(clients),
           "--requests", str(requests), "--seconds", str(seconds)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def replica_memory(url: str) -> dict:
    """PSS and RSS of the replica answering `url`/healthz (it reports its pid; same machine)."""
    import httpx
    import psutil

    p = psutil.Process(httpx.get(f"{url}/healthz").json()["pid"])
    return {"pss_mb": p.memory_full_info().pss / 2**20, "rss_mb": p.memory_info().rss / 2**20}


def start_apps(root: Path, port: int, wait_s: float, access_log: bool):
    from ray import serve

    from slim.raycluster import init_ray
    from slim.serve import ServeConfig
    from slim.serve.app import build

    init_ray(None, 6)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
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
    p.add_argument("--requests", type=int, default=400, help="per level, at most")
    p.add_argument("--seconds", type=float, default=30, help="per level, at most")
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


def run(a) -> None:
    root = Path(a.run_dir)
    seqs = make_run(root, a.items, a.users, a.hidden, a.max_len)
    bodies = root / "bodies.json"
    bodies.write_text(json.dumps([{"history": s.tolist(), "k": 10} for s in seqs[:500]]))
    load0 = os.getloadavg()[0]
    base = {c: in_process(root, seqs, c, max(20, a.requests // c)) for c in LEVELS}
    serve = start_apps(root, a.port, a.batch_wait_s, a.access_log)
    try:
        url = f"http://127.0.0.1:{a.port}"
        floor = loadgen(f"{url}/on/healthz", "", 1, a.requests, a.seconds)
        res = {(m, c): loadgen(f"{url}/{m}/recommend", str(bodies), c, a.requests, a.seconds)
               for c in LEVELS for m in ("on", "off")}  # interleaved: drifting machine load hits both alike
        mem = {m: replica_memory(f"{url}/{m}") for m in ("on", "off")}
    finally:
        serve.shutdown()
    write(a, base, floor, res, mem, (load0, os.getloadavg()[0]))


def write(a, base: dict, floor: dict, res: dict, mem: dict, load: tuple) -> None:
    extra = [f"--{k.replace('_', '-')} {getattr(a, k)}" for k, v in (("hidden", 64), ("max_len", 50),
             ("out", "bench/results/serve.md")) if getattr(a, k) != v]
    cmd = " ".join(["PYTHONPATH=. .venv/bin/python bench/bench_serve.py", f"--items {a.items}",
                    f"--users {a.users}", f"--requests {a.requests}", f"--seconds {a.seconds:g}", *extra]
                   + ([] if a.access_log else ["--no-access-log"]))
    lines = [
        "# Serving benchmark (Ray Serve over HTTP vs in-process PyTorch)", "",
        f"Command: `{cmd}`", "",
        f"Machine: {os.cpu_count()} CPU cores, shared by Ray, the Serve proxy and replicas, and the load generator "
        f"(a second process, loopback); 1-min load average {load[0]:.1f} at the start, {load[1]:.1f} at the end "
        f"(other work on the machine shows up as latency here). SASRec (id), hidden {a.hidden}, max_len {a.max_len}, {a.items:,} items; "
        f"POST /recommend {{history, k: 10}}, histories of 5..{2 * a.max_len - 1} items; one replica per app "
        f"(0.5 CPU, 1 torch thread); batching on = max_batch_size 32, wait {a.batch_wait_s * 1e3:g} ms; "
        f"off = max_batch_size 1; access log {'on' if a.access_log else 'off'}. At most {a.requests} requests or {a.seconds:g} s per level.", "",
        f"In-process (plain PyTorch, this process, 1 thread), one request at a time: p50 "
        f"{1e3 * np.percentile(base[1], 50):.2f} ms, p99 {1e3 * np.percentile(base[1], 99):.2f} ms. "
        f"Network floor (GET /healthz through the proxy and replica, 1 client): p50 {floor['p50_ms']:.2f} ms, "
        f"p99 {floor['p99_ms']:.2f} ms.", "",
        "| batching | clients | requests | errors | req/s | p50 ms | p99 ms | in-process req/s (batch = clients) "
        "| served / in-process req/s | p99 / (in-process p99 + floor p99) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for (m, c), r in res.items():
        ip_rps = c / np.median(base[c])
        budget = 1e3 * np.percentile(base[1], 99) + floor["p99_ms"]
        lines.append(f"| {m} | {c} | {r['n']} | {r['errors']} | {r['rps']:.1f} | {r['p50_ms']:.2f} | "
                     f"{r['p99_ms']:.2f} | {ip_rps:.1f} | {r['rps'] / ip_rps:.2f} | {r['p99_ms'] / budget:.2f} |")
    on1, on32 = res[("on", 1)], res[("on", LEVELS[-1])]
    budget = 2 * (1e3 * np.percentile(base[1], 99) + floor["p99_ms"])
    share = on32["rps"] / (LEVELS[-1] / np.median(base[LEVELS[-1]]))
    lines += ["", "Goals (issue 16), batching on: p99 at 1 client under 2x (in-process p99 + network floor p99): "
              f"{on1['p99_ms']:.1f} vs {budget:.1f} ms, **{'met' if on1['p99_ms'] < budget else 'not met'}**; "
              f"throughput at {LEVELS[-1]} clients at least 50% of in-process: {100 * share:.0f}%, "
              f"**{'met' if share >= 0.5 else 'not met'}**."]
    model_ms = 1e3 * np.median(base[1])
    gain = {c: res[("on", c)]["rps"] / res[("off", c)]["rps"] for c in LEVELS}
    lines += ["", f"The model's own time per request in-process (median {model_ms:.2f} ms) is "
              f"{100 * model_ms / floor['p50_ms']:.0f}% of the HTTP path's (floor p50 {floor['p50_ms']:.2f} ms). "
              "Batching on / off, requests/s: " + ", ".join(f"{gain[c]:.2f}x at {c}" for c in LEVELS) + "."]
    lines += ["", "Memory per replica: " + "; ".join(
        f"batching {m}: PSS {v['pss_mb']:.0f} MB, RSS {v['rss_mb']:.0f} MB" for m, v in mem.items()) + ".", ""]
    Path(a.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
