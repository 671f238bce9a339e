"""A tiny real PEFT LoRA adapter on SmolLM2-135M-Instruct, for tests and benchmarks of the student stage.

LoRA's B matrices start at zero (the adapter would be a no-op); they are filled with small seeded noise so the
adapted model really differs from the base.
"""

from __future__ import annotations

from pathlib import Path


def make_tiny_adapter(out: str | Path, cache_dir: str = "~/.cache/slim", r: int = 4, scale: float = 0.02,
                      seed: int = 0) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from slim.runtime import llm_models

    base = AutoModelForCausalLM.from_pretrained(llm_models.resolve(llm_models.SMOLLM2, cache_dir),
                                                dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=r, lora_alpha=2 * r, target_modules=["q_proj", "v_proj"]))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * scale)
    out = Path(out)
    model.save_pretrained(out)
    return out
