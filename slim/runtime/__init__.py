"""How a stage runs, shared by every stage: its YAML config loader (config), the console and progress lines
(console), the Ray connection and CPU accounting (raycluster), the model catalogue (llm_models) and what `--check`
says about a model or input file (preflight). Imports only slim.io."""
