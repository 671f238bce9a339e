"""The Serve application: a FastAPI ingress over one `Ranker` per replica, with request batching.

From Python: `build(ServeConfig(...))` -> Application for `serve.run`. From the Serve CLI, with the project's config
file (any `serve.key=value` override may follow):
    serve run slim.serve.app:build_app config=configs/tiny.yaml
or in a `serve deploy` config: `import_path: slim.serve.app:build_app`, `args: {config: configs/tiny.yaml}`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from typing import Optional

import numpy as np

from fastapi import FastAPI, Query as Q, Request
from fastapi.responses import FileResponse, HTMLResponse
from ray import serve

from slim import __version__
from slim.io import columns as C
from slim.serve import guard, schemas
from slim.serve.model import Ranker, pick_run
from slim.serve.page import PAGE, swagger_asset, swagger_page
from slim.serve.settings import STAGE, Secret, ServeConfig, from_dict, read_token
from slim.serve.swap import model_label

# /docs is this app's own route (below): Swagger UI from local assets where a package here ships them
api = FastAPI(title="SLIM recommender", version=__version__, docs_url=None,
              description="Top-k items from a trained sequential recommender, with the user's stored rationale.")
guard.install(api)


ERRORS = {s: {"model": schemas.ErrorBody} for s in (400, 401, 404, 413, 422, 503)}


@serve.deployment(name="recommender")
@serve.ingress(api)
class RecommenderApp:
    def __init__(self, cfg: dict, model_dir: str, token: Optional[Secret], writer=None, model: str = ""):
        self.cfg = from_dict(cfg)
        self.ranker = Ranker(model_dir, self.cfg.run_dir, self.cfg.torch_threads)
        # named by every answer: which run, which weights; computed once by build (hashing the weights), not here
        # in every replica
        self.model = model or model_label(model_dir)
        self.writer = writer  # a handle to the RationaleWriter deployment, when serve.generate_rationales
        self.pending = 0  # requests waiting for or in a forward pass (queued in the batcher or computing)
        guard.limits().update(max_body_bytes=self.cfg.max_body_bytes, token=token,
                              allowed_hosts=tuple(h.lower() for h in self.cfg.allowed_hosts), model=self.model)
        self._batched.set_max_batch_size(self.cfg.max_batch_size)
        self._batched.set_batch_wait_timeout_s(self.cfg.batch_wait_timeout_s)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def _batched(self, queries: list) -> list:
        # In a thread: the event loop keeps accepting requests (the next batch) while torch computes.
        return await asyncio.to_thread(self.ranker.rank, queries)

    async def _rank(self, q):
        """(ids, scores) of one query within serve.request_timeout_s, else a 503 naming the limit (the forward
        pass, if started, still finishes; its answer is dropped)."""
        t = self.cfg.request_timeout_s
        self.pending += 1
        try:
            return await asyncio.wait_for(self._forward(q), t)
        except asyncio.TimeoutError:
            raise schemas.FieldError("request", f"not ranked within {t:g} s (serve.request_timeout_s): the replica is "
                               "overloaded, retry later", 503) from None
        finally:
            self.pending -= 1

    async def _forward(self, q):
        # A lone request (nothing else queued or computing) goes straight to the model: a batch could only fill
        # with requests not yet sent, so waiting batch_wait_timeout_s for them would be pure delay. Requests that
        # arrive while one is pending are batched. Batching off: every request is its own forward pass.
        if self.cfg.max_batch_size == 1 or self.pending == 1:
            return (await asyncio.to_thread(self.ranker.rank, [q]))[0]
        return await self._batched(q)

    def _items(self, ids, scores=None) -> list:
        r = self.ranker
        if scores is None:
            return [{"item_id": int(i), "title": r.title(int(i))} for i in ids]
        return [{"item_id": int(i), "title": r.title(int(i)), "score": float(s)} for i, s in zip(ids, scores)]

    @api.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page(self):
        return PAGE

    @api.get("/docs", response_class=HTMLResponse, include_in_schema=False)
    async def docs(self, request: Request):
        return swagger_page(request.scope.get("root_path", ""), api.title)

    @api.get("/docs/{name}", include_in_schema=False)
    async def docs_asset(self, name: str):
        path = swagger_asset(name)
        if path is None:
            raise schemas.FieldError("name", f"no such asset {name[:40]!r}", 404)
        return FileResponse(path, headers={"Cache-Control": "max-age=86400"})

    @api.get("/healthz")
    async def healthz(self, request: Request) -> dict:
        """"ok" to anyone (a load balancer's probe); what is served, and the replica's pid, only with the token
        when one is configured (an open app shows the same through its API anyway)."""
        if not guard.was_authorized(request):
            return {"status": "ok"}
        r = self.ranker
        return {"status": "ok", "run": r.run_name, "model": self.model, "backbone": r.spec.backbone,
                "variant": r.spec.variant,
                "seed": r.spec.seed, "items": r.num_items, "users": len(r.users), "rationales": len(r.rationales),
                "max_batch_size": self.cfg.max_batch_size, "encoder_passes": r.passes,
                "largest_batch": r.largest_batch, "auth": guard.limits()["token"] is not None,
                "generate_rationales": self.writer is not None,
                "pid": os.getpid()}

    @api.get("/items", response_model=list[schemas.Item], responses=ERRORS)
    async def search(self, q: str = Q("", max_length=200), limit: int = Q(20, ge=1, le=100)):
        """Items whose title contains q (case-insensitive), by id, for picking a history; without q, the most
        popular (most interactions in the users' histories) first."""
        q, r = q.lower(), self.ranker
        if not q:
            return self._items(r.popular[:limit])
        hits = [i for i, t in enumerate(r.titles, start=1) if q in t.lower()][:limit]
        return self._items(hits)

    @api.get("/items/{item_id}", response_model=schemas.ItemDetail, responses=ERRORS)
    async def item(self, item_id: int):
        r = self.ranker
        if not 1 <= item_id <= r.num_items:
            raise schemas.FieldError("item_id", f"unknown item id {schemas.shown(item_id)} (ids are 1..{r.num_items})",
                                     404)
        return {"item_id": item_id, "title": r.title(item_id), "text": r.texts[item_id - 1]}

    async def _write(self, q) -> tuple[Optional[dict], Optional[str]]:
        """(the rationale written for a new user's history, or None and why not)."""
        if self.writer is None:
            return None, "rationale generation is off (serve.generate_rationales: false)"
        t = self.cfg.generator.timeout_s
        response = self.writer.write.remote(q.history.tolist())

        async def wait():
            return await response

        try:
            gen = await asyncio.wait_for(wait(), t)
        except asyncio.TimeoutError:
            response.cancel()
            return None, f"rationale generation timed out after {t:g} s (serve.generator.timeout_s)"
        except Exception as e:  # noqa: BLE001 - a failed writer must not fail the request: it falls back
            cause = getattr(e, "cause", None) or e  # a RayTaskError's text is the remote traceback; say its cause
            return None, f"rationale generation failed: {type(cause).__name__}: {str(cause)[:300]}"
        width = self.ranker.vecs.shape[1]
        if gen["vector"] is not None and len(gen["vector"]) != width:
            return gen, (f"the encoder gave a {len(gen['vector'])}-d vector, the model takes {width}-d: check "
                         f"{C.ENCODE_DIR}/{C.MANIFEST}'s encoder")
        if gen["vector"] is None:
            field = self.ranker.spec.rationale_field
            return gen, f"the generated rationale has no text for the model's field ({field})"
        return gen, None

    @api.post("/recommend", response_model=schemas.RecommendResponse, responses=ERRORS)
    async def recommend(self, req: schemas.RecommendRequest):
        r, most = self.ranker, self.cfg.max_history_items
        q = schemas.recommend_query(r, req, most, self.cfg.max_candidates)
        gen, why = None, None
        if q.user_id is None and r.user_text_model:  # a new user: no stored rationale to read
            gen, why = await self._write(q)
            if gen is not None and why is None:
                q = dataclasses.replace(q, user_vec=np.asarray(gen["vector"], dtype=np.float32))
        ids, scores = await self._rank(q)
        rationale, source = r.explain(q.user_id), "stored"
        if gen is not None:
            rationale, source = {k: gen[k] for k in ("text", "steps", "status")}, "generated"
        fallback = r.user_text(q)[1]
        return {"run": r.run_name, "model": self.model, "user_id": q.user_id, "history": self._items(q.history[-most:]),
                "rationale_used": r.user_text_model,
                "history_cut": q.history_cut + max(len(q.history) - most, 0),
                "items": self._items(ids, scores), "rationale": rationale,
                "rationale_source": source if rationale is not None else "none",
                "generation": {k: gen[k] for k in ("model", "tokens", "seconds")} if gen else None,
                "fallback": f"{fallback}; {why}" if fallback and why else fallback}

    @api.post("/score", response_model=schemas.ScoreResponse, responses=ERRORS)
    async def score(self, req: schemas.ScoreRequest):
        """One row per candidate sent, in their order; a repeated candidate is scored once and every copy of it
        gets that score (scored twice, the copies sat at different rows of one matrix product and could differ in
        the last bits)."""
        q = schemas.score_query(self.ranker, req, self.cfg.max_history_items, self.cfg.max_candidates)
        distinct, where = np.unique(q.candidates, return_inverse=True)
        ids, scores = await self._rank(dataclasses.replace(q, candidates=distinct))
        return {"run": self.ranker.run_name, "model": self.model, "history_cut": q.history_cut,
                "scores": self._items(ids[where], scores[where])}


def build(cfg: ServeConfig):
    """The Application for `cfg`. Resolves the run and the token here, in the caller: a run directory without a
    trained model or a missing token variable fails before any replica starts."""
    return labelled(cfg)[0]


def labelled(cfg: ServeConfig) -> tuple:
    """(the Application for `cfg` (build), the label its answers name: model_label of the run it serves). The run
    is picked and its weights hashed once, here, for every replica and for a swap's wait."""
    from slim.runtime.raycluster import work_actor_env

    model_dir = pick_run(cfg.run_dir, cfg.backbone, cfg.variant, cfg.seed)
    token = read_token(cfg)
    writer = _writer(cfg, model_dir)
    label = model_label(model_dir)  # after the checks above: a bad config fails before the weights are hashed
    # Replicas do the work: at the driver's priority, not Ray's niceness 15 (see slim/runtime/raycluster.py).
    opts = {"max_ongoing_requests": cfg.max_ongoing_requests,
            "logging_config": {"enable_access_log": cfg.access_log},
            "ray_actor_options": {"num_cpus": cfg.replica_cpus, "runtime_env": work_actor_env()},
            "max_surge_percent": cfg.max_surge_percent}  # a redeploy (swap): new replicas beside the old
    if cfg.max_replicas:
        opts["autoscaling_config"] = {"min_replicas": cfg.num_replicas, "max_replicas": cfg.max_replicas,
                                      "target_ongoing_requests": cfg.target_ongoing_requests}
    else:
        opts["num_replicas"] = cfg.num_replicas
    return RecommenderApp.options(**opts).bind(dataclasses.asdict(cfg), str(model_dir), token, writer, label), label


def writes_rationales(variant: str, field: str) -> bool:
    """Whether a run's user text is a rationale (the train stage's user-text variants, less the no-LLM history
    control): what serve.generate_rationales can write for a new user."""
    from slim.models import USER_TEXT_VARIANTS
    from slim.recsys.usertext import source

    return variant in USER_TEXT_VARIANTS and source(variant, field) != "history"


def _writer(cfg: ServeConfig, model_dir):
    """The RationaleWriter deployment for a user-text model when generation is on, else None (composed into the
    application through the ingress's init argument, which the replica receives as a handle)."""
    import json

    from slim.recsys.checkpoint import METRICS
    from slim.recsys.usertext import FIELDS
    from slim.serve.writer import deployment

    if not cfg.generate_rationales:
        return None
    rec = json.loads((model_dir / METRICS).read_text())
    field = rec.get("rationale_field") or ""
    if not writes_rationales(rec.get("variant", ""), field):
        return None
    return deployment(cfg, FIELDS[field])


def build_app(args: dict):
    """Builder for `serve run` / `serve deploy`: args = {config: path, "serve.key": value, ...}."""
    from slim.runtime import config

    args = dict(args)
    path = args.pop("config", None)
    raw = config.load_raw(path, [f"{k}={v}" for k, v in args.items()])
    return build(config.section(raw, STAGE, ServeConfig))


__all__ = ["api", "build", "build_app", "labelled", "RecommenderApp"]
