"""Training and evaluation of the sequential recommenders (stages `train` and `evaluate`)."""
