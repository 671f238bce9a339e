#!/usr/bin/env bash
# Submit the pipeline (or some stages) to a Ray cluster:
#   RAY_ADDRESS=http://head:8265 cluster/submit.sh configs/games.yaml --stages data,train run_dir=/shared/nfs/runs/games
# The run directory is a path every node sees (a shared mount); object-store URIs (s3://) are refused.
# Check the config first, without starting anything: python jobs/pipeline.py --config configs/games.yaml --check
# The working directory is shipped with the job; the cluster's image must have the package's dependencies
# (pip install -c constraints.txt '.[gpu]' on GPU nodes). Secrets come from the environment of the job:
# pass them with --runtime-env-json '{"env_vars": {...}}' from your secret store, never in a config file.
set -euo pipefail
cfg="$1"; shift
exec ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- \
  python jobs/pipeline.py --config "$cfg" "$@"
