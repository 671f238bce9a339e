"""On-demand rationales for new users: the run's student on a vLLM engine and the encode stage's sentence encoder,
in one Serve deployment that the ingress calls through a handle (composed in only when serve.generate_rationales).

Each part is the one the pipeline used, so a generated rationale enters the model the way stored ones did:
- model: the student stage's resolution (slim.student.public.resolve_model: distill/merged, else base + LoRA
  adapter merged once, here into a cache outside the run directory, which serving never writes);
- prompt and sampling: the student stage's config from student/manifest.json (prompt templates, max_tokens,
  structured outputs under slim.text.rationale.SCHEMA, repetition penalty), each overridable under serve.generator;
- status: the student stage's rule (slim.student.public.rationale_row: ok | malformed);
- vector: the encode stage's Encoder with its config from encode/manifest.json (slim.encode.public, read once where
  the app is built: model, max_seq_length, step3_share), float16 as stored, for the model's rationale field.

History: the stages write from item_ids[:-HISTORY_CUT] because the last three items are training/valid/test
targets. A history sent to the server has no held-out target: every item is the past, so the prompt shows all of
it (the most recent `max_history_items`), cut=0. In training, the rationale fused into the prediction of
item_ids[-3] was written from exactly the items before it, the same situation as here.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
import uuid
from pathlib import Path

import numpy as np
from ray import serve

from slim.io import columns as C

log = logging.getLogger(__name__)


def student_config(run_dir: str, gen):
    """The student stage's config as the run recorded it, with serve.generator's overrides."""
    from slim.student.public import recorded_config

    top = {k: getattr(gen, k) for k in ("base_model", "adapter", "dtype") if getattr(gen, k)}
    if gen.max_model_len is not None:
        top["max_model_len"] = gen.max_model_len
    sampling = {k: getattr(gen, k) for k in ("max_tokens", "structured", "repetition_penalty", "temperature")
                if getattr(gen, k) is not None}
    return recorded_config(run_dir, {**top, "cache_dir": gen.cache_dir}, sampling)


def sampling_params(d: dict):
    """slim.student.public.sampling_dict -> vLLM SamplingParams (structured outputs as ray.data.llm builds them)."""
    import vllm
    from vllm.sampling_params import StructuredOutputsParams

    d = dict(d)
    so = d.pop("structured_outputs", None)
    return vllm.SamplingParams(**d, structured_outputs=StructuredOutputsParams(**so) if so else None)


def resolve(cfg) -> tuple:
    """(student config, checkpoint path, its description) for ServeConfig `cfg`, resolved where the app is built:
    a missing student stops the start with the student stage's message. An adapter is merged once into
    serve.generator.merge_dir (on a multi-node cluster a path every node mounts), never into the run directory."""
    from slim.runtime import llm_models
    from slim.student.public import resolve_model

    g = cfg.generator
    scfg = student_config(cfg.run_dir, g)
    base = llm_models.resolve(scfg.base_model, g.cache_dir)
    merge_dir = Path(g.merge_dir or Path(g.cache_dir) / "serve").expanduser()
    path, info = resolve_model(cfg.run_dir, scfg.adapter, base, merge_dir)
    return scfg, path, info


class RationaleWriter:
    """history -> {text, steps, status, vector, seconds, tokens}. One vLLM engine and one encoder per replica.
    `encoder`: the encode stage's recorded encoder settings (model, max_seq_length, step3_share), read where the
    app is built."""

    def __init__(self, run_dir: str, gen: dict, field: str, scfg, path: str, model_info: dict, encoder: dict):
        import pyarrow.parquet as pq
        import vllm
        from transformers import AutoTokenizer

        from slim.runtime import llm_models
        from slim.text.encoder import Encoder
        from slim.serve.settings import GeneratorConfig
        from slim.student.public import engine_args, sampling_dict

        g = GeneratorConfig(**gen)
        self.cfg, self.model_info = scfg, model_info
        self.tok = AutoTokenizer.from_pretrained(path)
        items = pq.read_table(Path(run_dir) / C.ITEMS_FILE, columns=[C.ITEM_ID, C.TEXT])
        self.text = dict(zip(items.column(C.ITEM_ID).to_pylist(), items.column(C.TEXT).to_pylist()))
        args = {**engine_args(self.cfg), "max_num_seqs": g.max_ongoing_requests, **self.cfg.engine_kwargs}
        self.engine = vllm.AsyncLLMEngine.from_engine_args(vllm.AsyncEngineArgs(model=path, **args))
        self.params = sampling_params(sampling_dict(self.cfg.sampling))
        self.field, e = field, encoder
        self.encoder = Encoder(llm_models.resolve_encoder(e["model"]), (field,), e["max_seq_length"],
                               e["step3_share"], g.encoder_threads, "cuda" if g.replica_gpus else "cpu")
        self.encoding = threading.Lock()  # one encoder forward at a time
        log.info("rationale writer: %s (%s), encoder %s for %s", path, self.model_info["kind"], e["model"], field)

    async def write(self, history: list) -> dict:
        from slim.text.prompts import student_chat_text
        from slim.student.public import rationale_row

        t0 = time.perf_counter()
        prompt = student_chat_text(self.tok, history, self.text, self.cfg.prompt, cut=0)
        final = None
        async for out in self.engine.generate({"prompt": prompt}, self.params, request_id=uuid.uuid4().hex):
            final = out
        o = final.outputs[0]
        row = rationale_row(prompt, o.text, len(final.prompt_token_ids or []), len(o.token_ids),
                            self.model_info["path"])
        vec = await asyncio.to_thread(self._encode, row)
        return {"text": row[C.RATIONALE], "steps": [row[C.STEP1], row[C.STEP2], row[C.STEP3]],
                "status": row[C.STATUS], "vector": vec, "model": self.model_info["path"],
                "tokens": row[C.TOKENS_OUT], "seconds": time.perf_counter() - t0}

    def _encode(self, row: dict):
        """The rationale's vector for the model's field, float16 as the encode stage stores it; None when that
        text is empty (the encoder's zero vector: a user without a usable rationale)."""
        batch = {k: np.array([row[k]], dtype=object) for k in (C.RATIONALE, C.STEP1, C.STEP2, C.STEP3)}
        with self.encoding:
            e = self.encoder(batch)[f"emb_{self.field}"][0]
        return e.astype(np.float32).tolist() if np.abs(e).sum() > 0 else None

    def __del__(self):  # the engine's core process is a child of this replica: end it with the replica
        engine = getattr(self, "engine", None)
        if engine is not None and hasattr(engine, "shutdown"):
            engine.shutdown()


def deployment(cfg, field: str):
    """The bound writer deployment for `cfg` (ServeConfig), or None when generation is off."""
    from slim.runtime.raycluster import work_actor_env

    if not cfg.generate_rationales:
        return None
    from slim.encode.public import recorded_config

    g = cfg.generator
    e = recorded_config(cfg.run_dir)  # read once, here: a bad encode manifest stops the start, not a replica
    encoder = {"model": e.model, "max_seq_length": e.max_seq_length, "step3_share": e.step3_share}
    scfg, path, info = resolve(cfg)
    env = work_actor_env({"VLLM_CPU_KVCACHE_SPACE": str(g.kv_cache_gib)})
    dep = serve.deployment(RationaleWriter, name="rationale_writer")
    opts = {"num_cpus": g.replica_cpus, "num_gpus": g.replica_gpus, "runtime_env": env}
    return dep.options(num_replicas=g.num_replicas, max_ongoing_requests=g.max_ongoing_requests,
                       ray_actor_options=opts).bind(cfg.run_dir, dataclasses.asdict(g), field, scfg, path, info,
                                                               encoder)
