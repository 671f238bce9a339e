"""The serve tests' Serve instance (tests/conftest.py's session fixture `serve_app`, shared by every module that
asks for it: starting Serve costs ~11 s) and the run directory it serves.

One Serve instance with three apps of one replica each: `open` at `/` (the best run, an ID model), `auth` at `/auth`
(token from an environment variable) and `slim` at `/slim` (a SLIM model over 384-d rationale vectors, the width of
the encode stage's MiniLM; rationale generation off).
"""

import os
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from slim.io import columns as C
from slim.serve import ServeConfig
from tests.stages.test_recsys import N, _write_run
from tests.support.ports import free_port

TOKEN_ENV = "SLIM_TEST_SERVE_TOKEN"
TOKEN = "t0k-" + os.urandom(12).hex()
STEPS = ("likes consecutive games", "recently played the 40s", "next: the following ids")
DU = 384  # rationale vector width: all-MiniLM-L6-v2's, so a generated rationale fits the stored ones' model


def _titles(root: Path) -> list:
    """The generated items get titles (one duplicated, to test ambiguous titles)."""
    t = pq.read_table(root / C.ITEMS_FILE)
    titles = [f"Game {i}: Saga {i // 10}" for i in range(1, N + 1)]
    titles[N - 1] = titles[N - 2]  # items N-1 and N share a title
    pq.write_table(t.append_column(C.TITLE, pa.array(titles)), root / C.ITEMS_FILE)
    return titles


def _rationales(root: Path) -> None:
    (root / C.STUDENT_SHARDS).mkdir()
    pq.write_table(pa.Table.from_pylist([
        {C.USER_ID: 3, C.RATIONALE: " ".join(STEPS), C.STEP1: STEPS[0], C.STEP2: STEPS[1], C.STEP3: STEPS[2],
         C.STATUS: "ok"},
        {C.USER_ID: 4, C.RATIONALE: "garbled", C.STEP1: "", C.STEP2: "", C.STEP3: "", C.STATUS: "malformed"},
    ]), root / C.STUDENT_SHARDS / "part-0.parquet")
    # the encode stage's matches of user 3's step-3 products: one to item 7, one to nothing (0)
    (root / C.ENCODE_DIR).mkdir(exist_ok=True)
    pq.write_table(pa.table({C.USER_ID: [3], "products": [["Game 7 remake", "a toaster"]], "item_ids": [[7, 0]],
                             "sims": [[0.9, 0.1]]}), root / C.GROUNDING_FILE.format(source="student"))


def _train(root: Path):
    """Two tiny runs (seconds); SASRec is trained longer so it is the best by valid NDCG@10. -> (data, its name)"""
    from slim.recsys import data as D
    from slim.recsys.checkpoint import save_run
    from slim.recsys.spec import RunSpec
    from slim.train.loop import fit

    d = D.load(root)
    specs = (RunSpec("sasrec", "id", 0, hidden=16, max_len=10, epochs=6, patience=6, batch_size=32, lr=5e-3),
             RunSpec("gru4rec", "id", 0, hidden=16, max_len=10, epochs=1, batch_size=32, lr=1e-4))
    for spec in specs:
        model, rec = fit(spec, d, None, "uni100", ("uni100",))
        save_run(root / "models" / spec.name, model, spec, d.num_items, rec, "test")
    return d, specs[0].name


def _slim_run(root: Path, d) -> tuple[str, np.ndarray]:
    """A trained SLIM run: stored rationale vectors for users 3 (random, unit norm) and 4 (zeros: the encoder's mark
    for an empty rationale) stand in for the encode stage's file; 1 epoch, so the ID runs stay the best.
    -> (its name, the two vectors)"""
    from slim.text.prompts import HISTORY_CUT
    from slim.recsys import usertext as UT
    from slim.recsys.checkpoint import save_run
    from slim.recsys.spec import RunSpec
    from slim.train.loop import fit
    from slim.io.rundir import Manifest, RunDir

    (root / C.ENCODE_DIR).mkdir(exist_ok=True)
    vecs = np.random.default_rng(0).normal(size=(2, DU))
    vecs = (vecs / np.linalg.norm(vecs, axis=1, keepdims=True)).astype(np.float16)
    vecs[1] = 0
    pq.write_table(pa.table({C.USER_ID: [3, 4], C.EMBEDDING: [v.tolist() for v in vecs]}),
                   root / C.USER_EMB_FILE.format(field="rationale"))
    RunDir(root).write_manifest(Manifest("student", {"history_cut": HISTORY_CUT}))  # the student stage's
    ut = UT.load(root, d.user_ids, np.array([len(s) for s in d.seqs]), "slim", "whole")
    text = np.random.default_rng(1).normal(size=(N + 1, 16)).astype(np.float32)
    text[0] = 0
    spec = RunSpec("gru4rec", "slim", 0, hidden=16, max_len=10, epochs=1, batch_size=32, lr=1e-4,
                   rationale_field="whole", user_text_dim=DU)
    model, rec = fit(spec, d, text, "uni100", ("uni100",), ut=ut)
    save_run(root / "models" / spec.name, model, spec, d.num_items, rec, "test")
    return spec.name, vecs.astype(np.float32)


def running(root: Path):
    """The module's Serve instance over a run directory built in `root`: yields the dict the tests read; shuts
    Serve down when closed."""
    from ray import serve

    from slim.serve.app import build

    seqs = _write_run(root)
    titles = _titles(root)
    _rationales(root)
    d, best = _train(root)
    slim_run, vecs = _slim_run(root, d)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    base = dict(run_dir=str(root), replica_cpus=0.25, max_batch_size=16, batch_wait_timeout_s=0.01,
                max_ongoing_requests=32, max_body_bytes=4096, max_history_items=20, max_candidates=200)
    os.environ[TOKEN_ENV] = TOKEN
    try:
        serve.run(build(ServeConfig(**base)), name="open", route_prefix="/")
        serve.run(build(ServeConfig(**base, auth_token_env=TOKEN_ENV, allowed_hosts=("localhost", "127.0.0.1"))),
                  name="auth", route_prefix="/auth")
    finally:
        del os.environ[TOKEN_ENV]
    serve.run(build(ServeConfig(**base, variant="slim")), name="slim", route_prefix="/slim")
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        yield {"client": client, "root": root, "seqs": seqs, "titles": titles, "data": d, "port": port, "best": best,
               "slim": slim_run, "vecs": vecs, "base": base}
    serve.shutdown()
