"""Batch API mode: one JSONL upload, a batch to poll, the output file to download; about half the price.

The batch id is saved (teacher/batch_state.json) before polling starts, so a killed job that is rerun picks the
same batch up again instead of paying for a second one.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from slim.io import columns as C
from slim.io import atomic
from slim.io import storage
from slim.teacher import client as teacher_client
from slim.teacher import shards
from slim.teacher.worker import api_key

log = logging.getLogger(__name__)

MAX_REQUESTS = 50_000  # the provider's per-batch limit
DONE = ("completed", "failed", "expired", "cancelled")


def _submit(client, settings: teacher_client.CallSettings, todo: list[dict], work: Path) -> dict:
    jsonl = work / "batch_input.jsonl"
    if storage.is_remote(jsonl):  # only uploaded to the provider: a local file is enough
        jsonl = storage.scratch("batch", storage.key_of(work)) / "batch_input.jsonl"
    with open(jsonl, "w") as f:
        for r in todo:
            body = {"messages": r["messages"], **teacher_client.request_fields(settings, flat=True)}
            f.write(json.dumps({"custom_id": str(r[C.USER_ID]), "method": "POST", "url": "/v1/chat/completions",
                                "body": body}) + "\n")
    with open(jsonl, "rb") as f:
        up = client.files.create(file=f, purpose="batch")
    b = client.batches.create(input_file_id=up.id, endpoint="/v1/chat/completions", completion_window="24h")
    log.info("teacher: submitted batch %s with %d requests", b.id, len(todo))
    return {"batch_id": b.id, "users": [r[C.USER_ID] for r in todo]}


def _poll(client, batch_id: str, poll_s: float, max_wait_s: float):
    t0 = time.perf_counter()
    while True:
        b = client.batches.retrieve(batch_id)
        if b.status in DONE:
            return b
        if time.perf_counter() - t0 > max_wait_s:
            raise TimeoutError(f"batch {batch_id} still {b.status} after {max_wait_s:.0f}s; rerun to keep polling")
        counts = b.request_counts
        log.info("teacher: batch %s %s (%s/%s done)", batch_id, b.status, getattr(counts, "completed", "?"),
                 getattr(counts, "total", "?"))
        time.sleep(poll_s)


def _rows(client, b, users: list[int], prompts: dict[int, str], s: teacher_client.CallSettings) -> list[dict]:
    rows: dict[int, dict] = {}
    for fid in (b.output_file_id, b.error_file_id):
        if not fid:
            continue
        for line in client.files.content(fid).text.splitlines():
            if not line.strip():
                continue
            rec = json.loads(line)
            uid = int(rec["custom_id"])
            resp, prompt = rec.get("response") or {}, prompts.get(uid, "")
            body = resp.get("body") or {}
            if resp.get("status_code") == 200 and body.get("choices"):
                ch, usage = body["choices"][0], body.get("usage") or {}
                rows[uid] = teacher_client.row_from_answer(uid, prompt, ch["message"].get("content") or "",
                                                           ch.get("finish_reason"), usage.get("prompt_tokens", 0),
                                                           usage.get("completion_tokens", 0), s, 1)
            else:
                err = (body.get("error") or {}).get("message") or rec.get("error") or "no response"
                rows[uid] = teacher_client.failed_row(uid, prompt, f"HTTP {resp.get('status_code')}: {err}", s, 1)
    for uid in users:  # a user the provider never answered (expired, cancelled) is a failed row, not a lost one
        rows.setdefault(uid, teacher_client.failed_row(uid, prompts.get(uid, ""), f"batch {b.status}: no result", s, 1))
    return [rows[u] for u in users]


def run_batch(cfg, settings: teacher_client.CallSettings, base_url: str, todo: list[dict], prompts: dict[int, str],
              shard_dir: str, work: Path) -> dict:
    """Submit `todo` as one batch (after collecting any batch a killed run left), write its rows as a shard."""
    import openai

    if len(todo) > MAX_REQUESTS:
        raise ValueError(f"{len(todo)} requests exceed one batch ({MAX_REQUESTS}); lower teacher.num_users")
    client = openai.OpenAI(base_url=base_url, api_key=api_key(cfg.api_key_env), timeout=cfg.request_timeout_s)
    state_path = work / "batch_state.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else None
    written: list[dict] = []
    handled: set[int] = set()
    while True:
        if state is None:
            rest = [r for r in todo if r[C.USER_ID] not in handled]
            if not rest:
                break
            state = _submit(client, settings, rest, work)
            atomic.write_json(state_path, state)
        else:
            log.info("teacher: collecting batch %s left by an earlier run", state["batch_id"])
        b = _poll(client, state["batch_id"], cfg.batch_poll_s, cfg.batch_max_wait_s)
        rows = _rows(client, b, state["users"], prompts, settings)
        shards.write_shard(shard_dir, rows)
        state_path.unlink()
        written += rows
        handled |= set(state["users"])
        state = None
    stats = {"rows": len(written), "ok": 0, "malformed": 0, "failed": 0, "attempts": len(written),
             "billed_requests": sum(r[C.BILLED] for r in written),
             "tokens_in": sum(r[C.TOKENS_IN] for r in written), "tokens_out": sum(r[C.TOKENS_OUT] for r in written),
             "cost_usd": sum(r[C.COST_USD] for r in written)}
    for r in written:
        stats[r[C.STATUS]] += 1
    return stats
