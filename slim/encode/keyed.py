"""The encoder actor of the encode stage, keyed by text: every text is hashed as it will be encoded, and only
texts the store (slim.encode.store) lacks are encoded, once per batch that holds them; the others go back as a hash.

Each actor holds the sorted hashes already stored per field (a numpy uint64 array: 8 bytes a stored text) and
nothing more: it remembers no batch, so a batch Ray Data runs again on the same actor yields its vectors again.
A text new to the store that several batches hold is encoded by each of them; the driver's Sink keeps its first
vector and drops the others, so the store holds each text once.
"""

from __future__ import annotations

import numpy as np

from slim.encode.store import contains, text_hashes
from slim.io import columns as C
from slim.text.encoder import Encoder, _objects


class KeyedEncoder(Encoder):
    """numpy batch -> per field: hash_<f> (0: empty text), new_<f> (this row carries the text's vector in emb_<f>;
    other rows' emb_<f> are zeros), cut_<f>, empty_<f>; with grounding, ghash (the step-3 text's hash), gnew and
    the products of the gnew rows."""

    def __init__(self, known: dict, ground_known=None, **kw):
        super().__init__(**kw)
        self.known = {f: np.asarray(known.get(f, ()), np.uint64) for f in self.fields}
        self.ground_known = np.asarray(ground_known if ground_known is not None else (), np.uint64)

    @staticmethod
    def _new(h: np.ndarray, stored: np.ndarray) -> np.ndarray:
        """Rows whose hash is not stored; of this batch's rows sharing a hash, the first."""
        rows = np.flatnonzero((h != 0) & ~contains(stored, h))
        new = np.zeros(len(h), bool)
        new[rows[np.unique(h[rows], return_index=True)[1]]] = True
        return new

    def __call__(self, batch: dict) -> dict:
        out = {k: v for k, v in batch.items() if k in (C.USER_ID, C.ITEM_ID, C.RATIONALE, C.STEP1, C.STEP2, C.STEP3,
                                                       C.STATUS)}
        for f in self.fields:
            texts, cut = self._texts(batch, f)
            h = text_hashes(texts)
            new = self._new(h, self.known[f])
            emb = np.zeros((len(texts), self.dim), np.float16)  # [B, D]
            if new.any():
                emb[new] = self.embed([texts[i] for i in np.flatnonzero(new)]).astype(np.float16)
            out[f"emb_{f}"], out[f"hash_{f}"], out[f"new_{f}"], out[f"cut_{f}"] = emb, h, new, cut
            out[f"empty_{f}"] = h == 0
        if self.ground is not None:
            step3 = [str(s or "") for s in batch[C.STEP3]]
            g = text_hashes(step3, empty_zero=False)
            new = self._new(g, self.ground_known)
            names, ids, sims = [[] for _ in step3], [[] for _ in step3], [[] for _ in step3]
            rows = np.flatnonzero(new)
            if len(rows):
                n, i, s = self.ground([step3[r] for r in rows])
                for k, r in enumerate(rows):
                    names[r], ids[r], sims[r] = n[k], i[k], s[k]
            out["ghash"], out["gnew"] = g, new
            out["products"], out["product_items"], out["product_sims"] = _objects(names), _objects(ids), _objects(sims)
        return out
