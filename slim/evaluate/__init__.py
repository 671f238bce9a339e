"""The `evaluate` stage: every finished run ranked on the test split under each protocol, with chance levels,
paired tests and plots. stage.py (config + run), plots.py."""
