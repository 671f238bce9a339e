"""Teacher rationales: the paper's zero-shot CoT prompt sent to an OpenAI-compatible endpoint, sharded by Ray Data.

Modules: stage (config + stage run), select (the labelled subset), ratelimit (one global limiter actor),
client (one request with retries), shards (per-actor logs, shards, archive of paid rows), batch_api (provider Batch API mode),
local_server (a vLLM OpenAI server on 127.0.0.1); its fault-injecting test double is slim/testing.
"""
