"""The `student` stage: the distilled small LM writes a rationale for every user. stage.py (config + run),
engines.py (vLLM through ray.data.llm, or llama.cpp for a GGUF model)."""
