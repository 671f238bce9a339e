"""Training examples for distillation: teacher rationales -> token ids with the loss on rationale tokens only.

An example is the simplified student prompt (slim.text.prompts.student_chat_text: the user turn in the base model's chat
template, ending with the assistant header) followed by the rationale as the assistant turn. Labels are -100 on the
prompt, so the student learns to write the rationale, not to repeat the history. When an example is too long, the
history is shortened (oldest items first); if even one history item leaves no room for the whole rationale, the
example is dropped and counted — the rationale, and so its last step, is never cut.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from slim.io import columns as C
from slim.io import atomic
from slim.text import prompts
from slim.io import shards
from slim.io import storage
from slim.text.prompts import PromptConfig
from slim.text.rationale import parse

IGNORE = -100  # label of tokens that carry no loss (torch cross_entropy's ignore_index)
INPUT_IDS, LABELS = "input_ids", "labels"
PROMPT_LEN, HISTORY_ITEMS = "prompt_len", "history_items"


class DistillDataError(ValueError):
    """The teacher's output cannot make a training set; the message names the file or count."""


@dataclass
class BuildReport:
    """What happened to every teacher row; written to distill/train_metrics.json and the manifest."""

    rows: int = 0  # rows read from the shards (a user retried in a later shard counts once, see `superseded`)
    superseded: int = 0  # older rows of a user replaced by a later shard
    not_ok_status: int = 0  # status malformed/failed
    empty: int = 0  # status ok but no text
    unparsable: int = 0  # status ok but not three non-empty steps in order
    kept_unstructured: int = 0  # not three steps but kept as written (keep_unstructured, toy teachers only)
    no_user: int = 0  # user_id not in data/users.parquet
    history_truncated: int = 0  # examples whose history was shortened to fit max_seq_len
    history_items_cut: int = 0  # items removed from those histories in total
    dropped_too_long: int = 0  # rationale alone does not fit: dropped, never cut
    examples: int = 0
    problems: list = field(default_factory=list)  # first few (user_id, reason) for the log

    def note(self, user_id: int, reason: str) -> None:
        if len(self.problems) < 10:
            self.problems.append((int(user_id), reason))

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def read_teacher(shard_dir: str | Path, report: BuildReport) -> pd.DataFrame:
    """One row per user (the latest row wins, slim.io.shards), columns user_id, rationale, status."""
    if not shards.shard_files(shard_dir):
        raise DistillDataError(f"no teacher rationale shards in {shard_dir}; run the teacher stage first")
    cols = [C.USER_ID, C.RATIONALE, C.STATUS]
    try:
        everything = shards.read_shards(shard_dir, columns=cols)
    except ValueError as e:
        raise DistillDataError(f"not a teacher shard with {', '.join(cols)}: {e}") from e
    df = shards.latest(everything).to_pandas()
    report.rows, report.superseded = everything.num_rows, everything.num_rows - len(df)
    return df[cols].sort_values(C.USER_ID).reset_index(drop=True)


def target_text(rationale: str, structured: bool = False) -> str | None:
    """The assistant turn the student learns: the three parsed steps in one fixed layout (JSON when the student
    generates under the schema, so target and inference agree), or None if unusable."""
    p = parse(rationale)
    if not p.ok:
        return None
    if structured:
        from slim.text.rationale import to_json

        return to_json(p)
    return f"Step 1: {p.step1}\n\nStep 2: {p.step2}\n\nStep 3: {p.step3}"


def clean_rationales(df: pd.DataFrame, report: BuildReport, keep_unstructured: bool = False,
                     structured: bool = False) -> pd.DataFrame:
    """Keep status-ok rows with a three-step rationale; count the rest by reason. Adds column `target`.

    keep_unstructured also keeps non-empty answers that miss the three steps (status malformed included), as
    written: only for a teacher too small to follow the format (the offline demo), so the stages downstream run."""
    ok = df[C.STATUS].isin(["ok", "malformed"] if keep_unstructured else ["ok"])
    report.not_ok_status = int((~ok).sum())
    keep = []
    for uid, text in zip(df.loc[ok, C.USER_ID], df.loc[ok, C.RATIONALE]):
        if not (text or "").strip():
            report.empty += 1
            report.note(uid, "empty rationale")
            continue
        tgt = target_text(text, structured)
        if tgt is None and keep_unstructured:
            report.kept_unstructured += 1
            tgt = text.strip()
        elif tgt is None:
            report.unparsable += 1
            report.note(uid, parse(text).problem)
            continue
        keep.append((uid, tgt))
    return pd.DataFrame(keep, columns=[C.USER_ID, "target"])


def _answer_ids(tokenizer, item_ids, item_text, target: str, pc: PromptConfig, prompt: str) -> list[int]:
    """Token ids of the assistant turn as the chat template closes it (e.g. "...<|im_end|>\\n")."""
    msgs = [{"role": "user", "content": prompts.student_prompt(item_ids, item_text, pc)},
            {"role": "assistant", "content": target}]
    full = tokenizer.apply_chat_template(msgs, tokenize=False)
    if not full.startswith(prompt):
        raise DistillDataError("the chat template does not extend the generation prompt with the answer")
    return tokenizer(full[len(prompt):], add_special_tokens=False)["input_ids"]


def encode(tokenizer, item_ids, item_text: dict[int, str], target: str, pc: PromptConfig,
           max_seq_len: int) -> dict | None:
    """Token ids and labels of one example, with as much history as fits; None when the rationale cannot fit."""

    def prompt_ids(n: int) -> tuple[str, list[int]]:
        text = prompts.student_chat_text(tokenizer, item_ids, item_text, dataclasses.replace(pc, max_history_items=n))
        return text, tokenizer(text, add_special_tokens=False)["input_ids"]

    n_full = min(pc.max_history_items, len(prompts.training_prefix(item_ids)))
    text, p_ids = prompt_ids(n_full)
    answer = _answer_ids(tokenizer, item_ids, item_text, target, pc, text)
    room = max_seq_len - len(answer)
    n = n_full
    if len(p_ids) > room:
        # Largest history (most recent items kept) whose prompt fits: binary search, prompt length grows with n.
        lo, hi, best = 1, n_full - 1, None
        while lo <= hi:
            mid = (lo + hi) // 2
            ids = prompt_ids(mid)[1]
            if len(ids) <= room:
                best, lo = (mid, ids), mid + 1
            else:
                hi = mid - 1
        if best is None:
            return None  # not even one history item leaves room for the whole rationale
        n, p_ids = best
    return {INPUT_IDS: p_ids + answer, LABELS: [IGNORE] * len(p_ids) + answer, PROMPT_LEN: len(p_ids),
            HISTORY_ITEMS: n}


def build(run_dir: str | Path, tokenizer, pc: PromptConfig, max_seq_len: int,
          max_examples: int = 0, keep_unstructured: bool = False,
          structured: bool = False) -> tuple[pd.DataFrame, BuildReport]:
    """Teacher shards + data stage tables -> one row per example (user_id, input_ids, labels, prompt_len, ...)."""
    run_dir = storage.path(run_dir)
    report = BuildReport()
    df = clean_rationales(read_teacher(run_dir / C.TEACHER_SHARDS, report), report, keep_unstructured, structured)
    users = storage.read_table(run_dir / C.USERS_FILE, columns=[C.USER_ID, C.ITEM_IDS]).to_pandas()
    items = storage.read_table(run_dir / C.ITEMS_FILE, columns=[C.ITEM_ID, C.TEXT]).to_pandas()
    item_text = dict(zip(items[C.ITEM_ID].astype(int), items[C.TEXT]))
    hist = dict(zip(users[C.USER_ID].astype(int), users[C.ITEM_IDS]))
    rows = []
    for uid, tgt in zip(df[C.USER_ID], df["target"]):
        if max_examples and len(rows) >= max_examples:
            break
        if int(uid) not in hist:
            report.no_user += 1
            report.note(uid, "user_id not in data/users.parquet")
            continue
        item_ids = hist[int(uid)]
        ex = encode(tokenizer, item_ids, item_text, tgt, pc, max_seq_len)
        if ex is None:
            report.dropped_too_long += 1
            report.note(uid, f"rationale does not fit max_seq_len={max_seq_len}")
            continue
        full_hist = min(pc.max_history_items, len(prompts.training_prefix(item_ids)))
        if ex[HISTORY_ITEMS] < full_hist:
            report.history_truncated += 1
            report.history_items_cut += full_hist - ex[HISTORY_ITEMS]
        rows.append({C.USER_ID: int(uid), **ex})
    report.examples = len(rows)
    if not rows:
        raise DistillDataError(f"no usable teacher rationales in {run_dir / C.TEACHER_SHARDS}: {report.as_dict()}")
    return pd.DataFrame(rows), report


def split(df: pd.DataFrame, val_fraction: float, max_val: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Held-out users for validation loss: a fixed-seed draw, at least one when there are two or more examples."""
    n_val = min(max_val, int(round(len(df) * val_fraction))) if val_fraction > 0 else 0
    if val_fraction > 0 and len(df) >= 2:
        n_val = max(1, n_val)
    perm = np.random.default_rng(seed).permutation(len(df))
    val, train = df.iloc[np.sort(perm[:n_val])], df.iloc[np.sort(perm[n_val:])]
    return train.reset_index(drop=True), val.reset_index(drop=True)


def write(df: pd.DataFrame, path: Path) -> None:
    """Atomically, so a worker never reads a half-written example file."""
    atomic.write_parquet(path, pa.Table.from_pandas(df, preserve_index=False))
