"""The student: distillation (distill.py, examples.py) and rationale generation for every user (generate.py)."""
