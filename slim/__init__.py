"""SLIM on Ray: LLM rationales distilled into a small LM, fused into sequential recommenders.

Importing `slim` is cheap: heavy or GPU-only libraries (torch, ray, vllm, deepspeed) are imported inside
the functions that need them.
"""

__version__ = "0.2.0"
