"""The `distill` stage: LoRA on the small LM, (simplified prompt -> teacher rationale), loss on rationale tokens
only. stage.py (config + run), examples.py (tokenised examples), trainloop.py, strategies.py (DDP / DeepSpeed)."""
