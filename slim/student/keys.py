"""Student rows keyed by what decides them, so a new snapshot regenerates only the rationales that would change.

A row's key (column row_key) hashes the generation settings (gen_key: the model's fingerprint, the base model, the
engine, dtype, max_model_len, engine kwargs and sampling) with the hash of the exact prompt text sent (column
prompt_hash). The prompt holds what the user's history shows and every prompt setting, so a user whose history
changed, or any change of model or sampling, gets a new key; a new interaction elsewhere does not. Batching and
placement settings are left out: they do not change what a row says.

Finding the users to generate takes a tokenizer pass, not an LLM call: KeyCheck (a Ray Data actor) builds every
user's prompt and lets through only the users whose (user_id, key) is not among the rows already written (the
live shards, or the archive for a user who left and came back). Users are keyed by their int user_id, which the
data stage keeps across snapshots; were it to shift, a row would still be reused only where the user now holding
that id sends the very same prompt, so the rationale would be the same.
"""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from slim.io import columns as C
from slim.io import shards

GEN_FIELDS = ("base_model", "engine", "dtype", "max_model_len", "engine_kwargs")
KEY_SCHEMA = pa.schema([(C.USER_ID, pa.int64()), (C.STATUS, pa.string()), (C.ROW_KEY, pa.string())])


def generation(cfg, model_info: dict) -> dict:
    """What, besides the prompt, decides a generated text: the manifest records it, gen_key hashes it."""
    model = model_info.get("fingerprint") or cfg.base_model  # a base model: its name (no adapter, no merge)
    return {"model": model, **{f: getattr(cfg, f) for f in GEN_FIELDS},
            "sampling": dataclasses.asdict(cfg.sampling)}


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def gen_key(settings: dict) -> str:
    from slim.io.rundir import fingerprint

    return fingerprint(settings)


def row_key(gen: str, prompt_hash: str) -> str:
    return text_hash(f"{gen}:{prompt_hash}")


def key_ints(keys) -> np.ndarray:
    """Row keys (16 hex digits) as uint64 for a vectorised lookup; a missing key (a row written before keys) is 0,
    which no key matches in practice."""
    return np.array([int(k, 16) if k else 0 for k in keys], dtype=np.uint64)


@dataclasses.dataclass
class Done:
    """(user_id, key) of every row that may be kept: sorted by user, one key per user."""

    users: np.ndarray  # int64
    keys: np.ndarray  # uint64

    def matches(self, users: np.ndarray, keys: np.ndarray) -> np.ndarray:
        if not len(self.users):
            return np.zeros(len(users), bool)
        pos = np.minimum(np.searchsorted(self.users, users), len(self.users) - 1)
        return (self.users[pos] == users) & (self.keys[pos] == keys)


def done_set(live, archive, retry_failed: bool) -> Done:
    """The live shards' latest row per user (less failed ones when retrying them), and for users without a live row
    their latest archived row (a user who left and came back with the same prompt gets that row back)."""
    now = shards.read_latest(live, schema=KEY_SCHEMA)
    old = shards.read_latest(archive, schema=KEY_SCHEMA)
    if old.num_rows and now.num_rows:
        old = old.filter(pc.invert(pc.is_in(old.column(C.USER_ID), now.column(C.USER_ID))))
    t = pa.concat_tables([now, old]).sort_by(C.USER_ID)
    if retry_failed and t.num_rows:
        t = t.filter(pc.not_equal(t.column(C.STATUS), "failed"))
    return Done(shards.user_ids(t) if t.num_rows else np.zeros(0, np.int64), key_ints(t.column(C.ROW_KEY).to_pylist()))


def only(batch: dict, users: np.ndarray) -> dict:
    """The rows of `users` (sorted), the users KeyCheck found to generate."""
    keep = np.isin(batch[C.USER_ID], users, assume_unique=False)
    return {k: v[keep] for k, v in batch.items()}


class PromptBuilder:
    """user rows -> user_id, prompt (the chat text distillation trains on), prompt_hash, row_key; loads the tokenizer
    and items once."""

    def __init__(self, tokenizer_path: str, items_path: str, prompt: dict, gen: str):
        from transformers import AutoTokenizer

        from slim.io import storage  # files of the run dir, local or on object storage, read on this actor's node
        from slim.text.prompts import PromptConfig

        self.tok = AutoTokenizer.from_pretrained(str(storage.local_copy(tokenizer_path, skip=("*.safetensors",))))
        items = storage.read_table(items_path, columns=[C.ITEM_ID, C.TEXT])
        self.text = dict(zip(items.column(C.ITEM_ID).to_pylist(), items.column(C.TEXT).to_pylist()))
        self.pc, self.gen = PromptConfig(**prompt), gen

    def __call__(self, batch: dict) -> dict:
        from slim.text.prompts import student_chat_text

        prompts = [student_chat_text(self.tok, ids, self.text, self.pc) for ids in batch[C.ITEM_IDS]]
        hashes = [text_hash(p) for p in prompts]
        return {C.USER_ID: batch[C.USER_ID], C.PROMPT: np.array(prompts, dtype=object),
                C.PROMPT_HASH: np.array(hashes, dtype=object),
                C.ROW_KEY: np.array([row_key(self.gen, h) for h in hashes], dtype=object)}


class KeyCheck(PromptBuilder):
    """user rows -> user_id of those whose row must be generated: no row yet, or one under another key."""

    def __init__(self, tokenizer_path: str, items_path: str, prompt: dict, gen: str, done_users, done_keys):
        super().__init__(tokenizer_path, items_path, prompt, gen)
        self.done = Done(np.asarray(done_users, np.int64), np.asarray(done_keys, np.uint64))

    def __call__(self, batch: dict) -> dict:
        out = super().__call__(batch)
        users = np.asarray(out[C.USER_ID], np.int64)
        todo = ~self.done.matches(users, key_ints(out[C.ROW_KEY]))
        return {C.USER_ID: users[todo]}


def users_stream(cfg, rd, users: np.ndarray):
    """users.parquet's rows of `users` as a Ray Data stream (histories are read there, never in the driver)."""
    from slim.runtime.raycluster import read_parquet

    ds = read_parquet(str(rd.path(C.USERS_FILE)), [C.USER_ID, C.ITEM_IDS], cfg.block_kib, cfg.object_store_mib)
    return ds.map_batches(only, fn_kwargs={"users": users}, batch_format="numpy", num_cpus=0.1)


def builder_kwargs(cfg, rd, model_path: str, gen: str) -> dict:
    return {"tokenizer_path": model_path, "items_path": str(rd.path(C.ITEMS_FILE)),
            "prompt": dataclasses.asdict(cfg.prompt), "gen": gen}


def todo(cfg, rd, model_path: str, gen: str, present: np.ndarray, live, keys_hold: bool = False) -> np.ndarray:
    """The users to generate (sorted): present users without a row, and, found by a tokenizer pass over the others
    (their prompts rebuilt in an actor pool), those whose row key no longer holds. keys_hold: the manifest is
    current (a --retry-failed run), so every stored key holds by construction and the pass is skipped."""
    import ray

    done = done_set(live, rd.path(C.STUDENT_ARCHIVE), cfg.retry_failed)
    check = np.intersect1d(present, done.users)
    out = [np.setdiff1d(present, check)]
    if len(check) and not keys_hold:
        ds = users_stream(cfg, rd, check).map_batches(
            KeyCheck, batch_size=64, batch_format="numpy", num_cpus=0.25, compute=ray.data.ActorPoolStrategy(size=1),
            fn_constructor_kwargs={**builder_kwargs(cfg, rd, model_path, gen), "done_users": done.users,
                                   "done_keys": done.keys})
        out += [np.asarray(b[C.USER_ID], np.int64) for b in ds.iter_batches(batch_format="numpy")]
    return np.unique(np.concatenate(out))
