"""Rationale text, shared by the LLM stages, encode and serve: the three-step schema and its parser (rationale),
the prompts, quality measures, catalogue grounding of named products, and the sentence encoder that turns
rationales and item text into vectors (encoder)."""
