"""The `train` stage: every (backbone, variant, loss, seed) run. stage.py (config, the run grid, fan-out, the
stage's face), loop.py (one run's training loop and early stopping), distributed.py + ingest.py (Ray Train)."""
