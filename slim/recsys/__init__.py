"""What the train, evaluate and serve stages share: the sequences (data, candidates), user and item text vectors
(usertext, itemtext), a run's spec and checkpoint (spec, checkpoint), ranking and its metrics (ranking, metrics,
blocks), the explanation of a ranking (explain) and the per-run tables (report, summary)."""
