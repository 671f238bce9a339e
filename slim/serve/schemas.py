"""Request and response bodies of the HTTP API, and the checks of a request against the served tables.

Types are strict (a string where a number belongs is a 422, not coerced) and unknown fields are refused, so a
client's typo is reported rather than ignored. Every error names the field, e.g. `history[2]`.
"""

from __future__ import annotations

from typing import Literal, Optional, Union

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from slim.serve.model import Query, Ranker
from slim.serve.settings import MAX_K


SHOWN_CHARS = 80  # the most of a client's value an error message echoes


def shown(v, most: int = SHOWN_CHARS) -> str:
    """A client's value as an error message echoes it: repr for text, cut at `most` characters with its length
    said (an unknown 60 KB title is not sent back whole)."""
    s = repr(v) if isinstance(v, str) else str(v)
    return s if len(s) <= most else f"{s[:most]}... ({len(s):,} characters)"


class FieldError(ValueError):
    """A request field is wrong; becomes a 4xx whose body names the field."""

    def __init__(self, field: str, message: str, status: int = 422):
        super().__init__(f"{field}: {message}")
        self.field, self.message, self.status = field, message, status


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RecommendRequest(Strict):
    user_id: Optional[StrictInt] = Field(None, description="a known user (their whole history is the input)")
    history: Optional[list[Union[StrictInt, StrictStr]]] = Field(
        None, description="item ids or exact titles, oldest first (instead of user_id)")
    k: StrictInt = Field(10, ge=1, le=MAX_K)
    candidates: Optional[list[StrictInt]] = Field(None, description="rank only these item ids (default: all)")
    exclude_history: StrictBool = Field(True, description="leave the input history out of the ranking")


class ScoreRequest(Strict):
    user_id: Optional[StrictInt] = None
    history: Optional[list[Union[StrictInt, StrictStr]]] = None
    candidates: list[StrictInt] = Field(..., description="item ids to score, answered in this order (a repeated "
                                        "id is scored once: every copy gets the same score)")


class Item(BaseModel):
    item_id: int
    title: str


class ScoredItem(Item):
    score: float


class Product(BaseModel):
    product: str = Field(description="a product as step 3 names it")
    item_id: Optional[int] = Field(None, description="the catalogue item it was matched to (encode stage), if any")
    title: Optional[str] = None


class Rationale(BaseModel):
    text: str
    steps: list[str]
    products: list[Product] = Field([], description="step 3's products grounded in the catalogue (GET /items/{id})")
    status: Optional[str] = Field(None, description="ok | malformed | failed, as the generating stage wrote it")


class Generation(BaseModel):
    model: str = Field(description="the student checkpoint that wrote the rationale")
    tokens: int = Field(description="tokens generated")
    seconds: float = Field(description="writing and encoding the rationale, in the writer deployment")


MODEL = ("the model that answered: <run>@<checkpoint> (the first 16 hex digits of its weights' SHA-256), as in the "
         "X-Slim-Model header; changes when a newly trained run is swapped in")


class RecommendResponse(BaseModel):
    run: str
    model: str = Field(description=MODEL)
    user_id: Optional[int]
    history: list[Item] = Field(description="the history used, oldest first (at most serve.max_history_items)")
    history_cut: int = Field(0, description="the oldest history items not shown in `history`: of a sent history, "
                             "left out of the ranking (over serve.max_history_items); of a known user's stored "
                             "history, used but not echoed")
    items: list[ScoredItem]
    rationale: Optional[Rationale] = Field(None, description="the stored rationale of a known user (the teacher's "
                                           "for a slim_teacher model, else the student's), or the one written for "
                                           "this request's history (serve.generate_rationales)")
    rationale_used: bool = Field(False, description="whether the served model ranks with the user's rationale "
                                 "(slim, slim_teacher, text_match); an id / id_text model shows it but ignores it")
    rationale_source: Literal["stored", "generated", "none"] = Field(
        "none", description="where `rationale` comes from: a known user's stored row, written by the student for "
        "this request, or none")
    generation: Optional[Generation] = Field(None, description="set when the rationale was written for this request")
    fallback: Optional[str] = Field(None, description="set when a user-text (SLIM) model scored without the user's "
                                    "rationale, with its learned missing vector: why")


class ScoreResponse(BaseModel):
    run: str
    model: str = Field(description=MODEL)
    history_cut: int = Field(0, description="the oldest sent history items left out (serve.max_history_items)")
    scores: list[ScoredItem]


class ItemDetail(Item):
    text: str


class ErrorBody(BaseModel):
    error: str
    field: str


def _item_id(r: Ranker, v, field: str) -> int:
    if isinstance(v, str):
        ids = r.by_title.get(v)
        if not ids:
            raise FieldError(field, f"no item titled {shown(v)} (titles must match exactly; or send the item id)")
        if len(ids) > 1:
            raise FieldError(field, f"title {shown(v)} names several items {ids[:10]}: send the item id")
        return ids[0]
    if not 1 <= v <= r.num_items:
        raise FieldError(field, f"unknown item id {shown(v)} (ids are 1..{r.num_items})")
    return v


def _history(r: Ranker, req, most: int) -> tuple[np.ndarray, Optional[int], int]:
    """(item ids, user id or None, how many of the oldest sent items were left out to keep the `most` recent)."""
    if (req.user_id is None) == (req.history is None):
        raise FieldError("user_id", "send exactly one of user_id and history")
    if req.user_id is not None:
        if req.user_id not in r.users:
            raise FieldError("user_id", f"unknown user {shown(req.user_id)}; send a history for a new user", 404)
        return r.users[req.user_id], req.user_id, 0
    if not req.history:
        raise FieldError("history", "empty: send at least one item id or title")
    cut = max(len(req.history) - most, 0)  # checked after the cut: items left out cost nothing
    ids = [_item_id(r, v, f"history[{cut + i}]") for i, v in enumerate(req.history[cut:])]
    return np.array(ids, np.int64), None, cut


def _candidates(r: Ranker, cand: Optional[list], most: int) -> Optional[np.ndarray]:
    if cand is None:
        return None
    if not cand:
        raise FieldError("candidates", "empty: leave it out to rank every item")
    if len(cand) > most:
        raise FieldError("candidates", f"{len(cand)} candidates, over serve.max_candidates ({most})")
    return np.array([_item_id(r, v, f"candidates[{i}]") for i, v in enumerate(cand)], np.int64)


def recommend_query(r: Ranker, req: RecommendRequest, max_history: int, max_candidates: int) -> Query:
    hist, uid, cut = _history(r, req, max_history)
    cand = _candidates(r, req.candidates, max_candidates)
    if cand is not None:
        cand = cand[np.sort(np.unique(cand, return_index=True)[1])]  # duplicates once, first place kept
    return Query(hist, req.k, uid, cand, req.exclude_history, history_cut=cut)


def score_query(r: Ranker, req: ScoreRequest, max_history: int, max_candidates: int) -> Query:
    hist, uid, cut = _history(r, req, max_history)
    return Query(hist, 0, uid, _candidates(r, req.candidates, max_candidates), exclude_history=False,
                 history_cut=cut)
