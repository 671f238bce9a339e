"""The sentence encoder shared by the encode stage and the serving app's rationale writer: item text, rationales
(whole and per step, with the whole one cut head + tail so that step 3 survives; see slim.encode.stage's docstring)
and the history control's text, as L2-normalised float16 vectors. The encode stage runs it in a Ray Data actor
pool (slim.encode.actors)."""

from __future__ import annotations

import os
from collections import defaultdict

import numpy as np

from slim.io import columns as C


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
        from sentence_transformers import SentenceTransformer

        from slim.runtime.threads import torch_threads

        # encode.threads; 0: the actor's CPUs (floor, at least 1), or every core in a driver (slim.recsys.itemtext).
        # The same count gives the same vectors; another count may move a vector's last bits (see embed)
        torch_threads(threads, driver=os.cpu_count() or 1)
        self.st = SentenceTransformer(model_path, device=device)
        if max_seq_length:
            self.st.max_seq_length = max_seq_length
        self.tok, self.fields, self.share = self.st.tokenizer, fields, step3_share
        self.budget = self.st.max_seq_length - 2  # [CLS] and [SEP]
        dim = getattr(self.st, "get_embedding_dimension", None) or self.st.get_sentence_embedding_dimension
        self.dim = dim()
        self.ground = None
        if item_vecs:  # user batches: step-3 products matched to catalogue items (slim.text.grounding)
            from slim.text.grounding import Grounder

            self.ground = Grounder(self.embed, item_vecs, ground_threshold)

    def embed(self, texts: list[str]) -> np.ndarray:
        """[n, D] float32 unit vectors, each a function of its own text alone (for a given thread count).

        Encoded in one batch, a text is padded to the longest text beside it, and its vector then moves in the
        last bits with its batchmates: the padded matrix products round differently (the issue saw 6 of 150 user
        vectors move by one float16 step on a rerun, as Ray Data cut its batches elsewhere). Texts of the same
        length in word pieces are encoded together, so nothing is ever padded and the batch decides nothing (more,
        smaller forward passes, but none spent on padding). The thread count still changes the summation order of
        some products (~1e-7 in float32): the same encode.threads gives the same vectors
        (tests/stages/test_encode_deterministic.py)."""
        out = np.zeros((len(texts), self.dim), np.float32)
        if not texts:
            return out
        lens = self.tok(list(texts), truncation=True, max_length=self.st.max_seq_length)["input_ids"]
        same = defaultdict(list)  # length in word pieces -> the texts' positions
        for i, ids in enumerate(lens):
            same[len(ids)].append(i)
        for idx in same.values():
            out[idx] = self.st.encode([texts[i] for i in idx], batch_size=len(idx), normalize_embeddings=True,
                                      convert_to_numpy=True)
        return out

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
        # ids, and a rationale's text and status through to the driver, which measures its quality (slim.text.quality)
        out = {k: v for k, v in batch.items() if k in (C.USER_ID, C.ITEM_ID, C.RATIONALE, C.STEP1, C.STEP2, C.STEP3,
                                                       C.STATUS)}
        for f in self.fields:
            texts, cut = self._texts(batch, f)
            emb = np.zeros((len(texts), self.dim), np.float16)  # [B, D]
            live = [i for i, t in enumerate(texts) if t.strip()]
            if live:
                emb[live] = self.embed([texts[i] for i in live]).astype(np.float16)  # [b, D] unit norm
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

