"""A generated run directory with a planted rationale signal, and the train settings that find it: for the SLIM
tests (tests/stages/test_slim.py) and bench/planted_figures.py, which prints the same figures for a before/after comparison.

Items fall in K clusters; an item's text vector is its cluster's centroid plus noise. Each user has a cluster:
the last three items (the last training target, the validation and the test target) come from it, everything
before is uniform noise, so item IDs carry little about what comes next. The user's "rationale" vector is the
cluster centroid plus noise, the way a good rationale names the kind of item the user wants next. The rationale
and encode stages are stood in for by their output files and manifests (history_cut 3), nothing else.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from slim.io import columns as C
from slim.io.rundir import Manifest, RunDir

U, N, K, D = 500, 300, 30, 32
# one backbone, one seed, small and long enough to find the signal: the settings test_slim's fixture trains with
FAST = dict(backbones=("gru4rec",), seeds=(0,), hidden=32, max_len=12, epochs=12, patience=12, batch_size=64,
            lr=5e-3, losses=("ce",), text_match_fields=("whole",), test_protocols=("uni100", "full"))


def write(root, shuffle_rationales: bool = False, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    cent = rng.normal(size=(K, D))
    item_cluster = np.arange(N) % K  # item id i+1 is in cluster i % K
    item_vec = cent[item_cluster] + 0.3 * rng.normal(size=(N, D))
    user_cluster = rng.integers(0, K, U)
    seqs = []
    for c in user_cluster:
        noise = rng.choice(N, rng.integers(3, 9), replace=False) + 1
        mine = rng.choice(np.flatnonzero(item_cluster == c), 3, replace=False) + 1
        seqs.append(np.concatenate([noise[~np.isin(noise, mine)], mine]).astype(np.int32))
    user_vec = cent[user_cluster] + 0.3 * rng.normal(size=(U, D))
    if shuffle_rationales:
        user_vec = user_vec[rng.permutation(U)]
    rd = RunDir(root)
    _data(rd, seqs, rng)
    _embeddings(rd, item_vec, user_vec)
    _rationales(rd, user_cluster)
    return {"seqs": seqs, "user_cluster": user_cluster, "item_cluster": item_cluster}


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float16)


def _data(rd: RunDir, seqs: list, rng) -> None:
    rd.path(C.CANDIDATES_DIR).mkdir(parents=True)
    pq.write_table(pa.table({
        C.USER_ID: pa.array(np.arange(U, dtype=np.int64)),
        C.ITEM_IDS: pa.array([s.tolist() for s in seqs], pa.list_(pa.int32())),
        C.VALID_ITEM: pa.array([s[-2] for s in seqs], pa.int32()),
        C.TEST_ITEM: pa.array([s[-1] for s in seqs], pa.int32()),
    }), rd.path(C.USERS_FILE))
    pop = np.bincount(np.concatenate([s[:-2] for s in seqs]), minlength=N + 1)[1:]
    pq.write_table(pa.table({C.ITEM_ID: pa.array(np.arange(1, N + 1, dtype=np.int32)),
                             C.TITLE: [f"item {i}" for i in range(1, N + 1)],
                             C.TEXT: [f"item {i}" for i in range(1, N + 1)],
                             C.POPULARITY: pa.array(pop.astype(np.int64))}), rd.path(C.ITEMS_FILE))
    pq.write_table(candidates(seqs, N, rng), rd.path(C.CANDIDATES_DIR) / "part-0.parquet")
    rd.write_manifest(Manifest(C.DATA_DIR, {"generated": True}, outputs=[C.USERS_FILE, C.ITEMS_FILE]))


def _embeddings(rd: RunDir, item_vec: np.ndarray, user_vec: np.ndarray) -> None:
    rd.stage_dir(C.ENCODE_DIR)
    items = np.zeros((N + 1, D), np.float16)
    items[1:] = _unit(item_vec)
    np.save(rd.path(C.ITEM_EMB_FILE), items)
    uv = _unit(user_vec)
    emb = pa.ListArray.from_arrays(pa.array(np.arange(0, uv.size + 1, D, dtype=np.int32)),
                                   pa.array(uv.reshape(-1), pa.float16()))
    files = []
    for tmpl in (C.USER_EMB_FILE, C.TEACHER_USER_EMB_FILE):
        for f in C.USER_EMB_FIELDS:
            files.append(tmpl.format(field=f))
            pq.write_table(pa.table({C.USER_ID: pa.array(np.arange(U, dtype=np.int64)), C.EMBEDDING: emb}),
                           rd.path(files[-1]))
    for stage in ("student", "teacher"):  # the stages that wrote the rationales, from item_ids[:-3]
        rd.write_manifest(Manifest(stage, {"history_cut": 3}))
    # the encode stage's vectors are used by train only when its manifest names train.text_encoder
    rd.write_manifest(Manifest(C.ENCODE_DIR, {"model": "all-MiniLM-L6-v2"}, outputs=[C.ITEM_EMB_FILE] + files))


def _rationales(rd: RunDir, user_cluster: np.ndarray) -> None:
    rd.stage_dir(C.STUDENT_SHARDS)
    steps = [[f"likes cluster {c}", f"cluster {c}", f"items of cluster {c}"] for c in user_cluster]
    pq.write_table(pa.table({
        C.USER_ID: pa.array(np.arange(U, dtype=np.int64)),
        C.RATIONALE: ["\n".join(f"Step {n}: {t}" for n, t in enumerate(s, 1)) for s in steps],
        C.STEP1: [s[0] for s in steps], C.STEP2: [s[1] for s in steps], C.STEP3: [s[2] for s in steps],
        C.STATUS: ["ok"] * U}), rd.path(C.STUDENT_SHARDS) / "part-0.parquet")


def users_table(seqs: list) -> pa.Table:
    """The data stage's users table (C.USERS_FILE) as it writes it, for users 0..len(seqs)-1 (raw ids u0, u1,
    ...) whose item sequences are `seqs`, timestamps 0, 1, ... in order."""
    return pa.table({
        C.USER_ID: pa.array(np.arange(len(seqs), dtype=np.int64)),
        C.RAW_USER_ID: [f"u{i}" for i in range(len(seqs))],
        C.ITEM_IDS: pa.array([s.tolist() for s in seqs], pa.list_(pa.int32())),
        C.TIMESTAMPS: pa.array([list(range(len(s))) for s in seqs], pa.list_(pa.int64())),
        C.HISTORY_LEN: pa.array([len(s) for s in seqs], pa.int32()),
        C.VALID_ITEM: pa.array([s[-2] for s in seqs], pa.int32()),
        C.TEST_ITEM: pa.array([s[-1] for s in seqs], pa.int32()),
    })


def candidates(seqs: list, num_items: int, rng) -> pa.Table:
    """candidates.parquet rows: per user, split and protocol, the target and 100 negatives outside the history."""
    rows = []
    for u, s in enumerate(seqs):
        pool = np.setdiff1d(np.arange(1, num_items + 1), s)
        for split, tgt in (("valid", s[-2]), ("test", s[-1])):
            for proto in C.PROTOCOLS:
                rows.append({C.USER_ID: u, C.SPLIT: split, C.PROTOCOL: proto, C.TARGET: int(tgt),
                             C.NEGATIVES: rng.choice(pool, 100, replace=False).tolist()})
    return pa.Table.from_pylist(rows)


def run_name(variant: str) -> str:
    return "text_match-whole-ce-s0" if variant == "text_match" else f"gru4rec-{variant}-ce-s0"


def train(root, variants) -> dict:
    """The train stage over a written run directory with FAST; -> variant -> test full-ranking NDCG@10."""
    from slim.train import stage as job

    job.run(job.TrainConfig(run_dir=str(root), variants=variants, **FAST))
    return {v: split_metrics(root, v)["full"]["NDCG@10"] for v in variants}


def split_metrics(root, variant: str, split: str = "test") -> dict:
    """A split's metrics (protocol -> metric -> value) of a variant's run, from its metrics.json."""
    return json.loads((Path(root) / C.MODELS_DIR / run_name(variant) / C.METRICS_FILE).read_text())[split]
