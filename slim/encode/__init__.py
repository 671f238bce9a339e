"""The `encode` stage: item text and rationales -> vectors. stage.py (config + run), users.py (the user-side
fields: whole rationale, each step, the history control)."""
