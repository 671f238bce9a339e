"""The `train` stage: every (backbone, variant, loss, seed) run. stage.py (config, the run grid and each run's
fingerprint, the stage's face), fanout.py (one Ray task per run), loop.py (one run's training loop and early
stopping), distributed.py + ingest.py (one run over several Ray Train workers)."""
