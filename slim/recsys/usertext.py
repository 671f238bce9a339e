"""Rationale vectors for SLIM and the text matcher, read from the encode stage and aligned with SeqData's users.

A user has no usable rationale when their row is absent, its vector is all zeros (the encoder's mark for an empty
text: a failed row, a malformed one missing that step) or the prefix it was written from is empty. Such users get
the model's learned "missing" vector; `present` marks the others.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from slim.io import columns as C
from slim.io import storage
from slim.text.prompts import HISTORY_CUT
from slim.recsys.data import RecDataError

# train.rationale_field -> the encode stage's field name; "history" is the no-LLM control's one vector per user
FIELDS = {"whole": C.RATIONALE, "step1": C.STEP1, "step2": C.STEP2, "step3": C.STEP3, "history": C.RATIONALE}
# source -> (its embedding files, the stage whose manifest says which prefix the text was written from)
SOURCES = {"student": (C.USER_EMB_FILE, C.STUDENT_DIR), "teacher": (C.TEACHER_USER_EMB_FILE, C.TEACHER_DIR),
           "history": (C.HISTORY_USER_EMB_FILE, C.ENCODE_DIR)}


def source(variant: str, field: str) -> str:
    """Whose text a (variant, field) run reads: history_text and text_match on "history" read the encoded titles
    of the prompt's prefix (no LLM), slim_teacher the teacher's rationales, the rest the student's."""
    if variant == "history_text" or field == "history":
        return "history"
    return "teacher" if variant == "slim_teacher" else "student"


class UserTextError(RecDataError):  # a RecDataError: the CLI prints it as one line
    """Rationale embeddings missing, misaligned, or written from a prefix that would look ahead."""


@dataclass
class UserText:
    vec: np.ndarray  # [U, D] float32, row u = SeqData row u; zeros where absent
    present: np.ndarray  # [U] bool
    cut: int  # each rationale saw item_ids[:-cut]
    field: str
    source: str


def emb_path(root: str | Path, variant: str, field: str) -> Path:
    if field not in FIELDS:
        raise UserTextError(f"train.rationale_field: {field!r} is not one of {', '.join(FIELDS)}")
    return storage.path(root) / SOURCES[source(variant, field)][0].format(field=FIELDS[field])


def check_cut(root: str | Path, variant: str, field: str = "whole") -> int:
    """The prefix cut the rationales were written with, from their stage's manifest; older runs wrote from
    item_ids[:-2], which names every training target: those are refused rather than silently leaking."""
    import json

    stage = SOURCES[source(variant, field)][1]
    p = storage.path(root) / stage / C.MANIFEST
    if not p.exists():
        raise UserTextError(f"{p} not found: variant {variant!r} needs the {stage} stage's output")
    m = json.loads(p.read_text())
    cut = m["extra"].get("history_cut", 2) if stage == C.ENCODE_DIR else m["config"].get("history_cut", 2)
    if cut < HISTORY_CUT:
        raise UserTextError(f"{p}: rationales were written from item_ids[:-{cut}], which holds every training target "
                            f"(look-ahead); rerun with `--force teacher,student` to write them from "
                            f"item_ids[:-{HISTORY_CUT}]")
    return cut


def load(root: str | Path, user_ids: np.ndarray, seq_lens: np.ndarray, variant: str, field: str) -> UserText:
    """user_ids/seq_lens: SeqData's rows -> UserText aligned with them."""
    cut = check_cut(root, variant, field)
    p = emb_path(root, variant, field)
    if not p.exists():
        raise UserTextError(f"{p} not found: run the encode stage with '{source(variant, field)}' in encode.sources")
    t = storage.read_table(p, columns=[C.USER_ID, C.EMBEDDING])
    ids = t.column(C.USER_ID).to_numpy()
    lists = t.column(C.EMBEDDING).combine_chunks()
    dim = len(lists[0]) if len(lists) else 0
    flat = lists.values.to_numpy(zero_copy_only=False).astype(np.float32)
    if len(ids) and flat.size != len(ids) * dim:
        raise UserTextError(f"{p}: {C.EMBEDDING} rows have different lengths (expected {dim} each)")
    emb = flat.reshape(len(ids), dim)
    pos = {int(u): i for i, u in enumerate(user_ids.tolist())}
    vec = np.zeros((len(user_ids), dim), dtype=np.float32)
    rows = np.array([pos.get(int(u), -1) for u in ids], dtype=np.int64)
    keep = rows >= 0  # rationales of users outside the (sub)sample are not needed
    vec[rows[keep]] = emb[keep]
    present = (np.abs(vec).sum(axis=1) > 0) & (np.asarray(seq_lens) > cut)
    return UserText(vec, present, cut, field, source(variant, field))
