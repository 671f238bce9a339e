#!/usr/bin/env bash
# Submit the pipeline, some stages or one stage's job to a Ray cluster and follow its log:
#   export RAY_ADDRESS=http://127.0.0.1:8265          # the cluster's dashboard (cluster/start_local.sh prints it)
#   cluster/submit.sh configs/games.yaml run_dir=/shared/runs/games                       # every stage
#   cluster/submit.sh configs/games.yaml --stages data,train run_dir=/shared/runs/games
#   SLIM_JOB=train cluster/submit.sh configs/games.yaml run_dir=/shared/runs/games  # jobs/<name>.py
# run_dir must be an absolute path on a filesystem every node mounts at that path (one node: any local folder);
# a relative one is refused, since a submitted job runs in a temporary copy of the working directory.
# Check the config first, without starting anything: python jobs/pipeline.py --config CONFIG --check
# Resume: stop it (`ray job stop ID`) or let it fail, then run the same command again; finished stages, shards
# and training runs are skipped.
# SLIM_RUNTIME_ENV: runtime_env file (default cluster/runtime_env.yaml; cluster/runtime_env_pip.yaml installs the
# dependencies). SLIM_SUBMIT_ARGS: more `ray job submit` flags, e.g. "--no-wait --submission-id games-1".
# Secrets (the teacher's API key) are not passed here: a runtime_env is stored with the job and shown in the
# dashboard. Set them in the environment of the cluster's nodes (Kubernetes Secret -> env in cluster/kuberay/,
# or the shell that runs `ray start`); the job reads the variable named in teacher.api_key_env.
set -euo pipefail
if [ $# -lt 1 ]; then
  sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
cd "$(dirname "$0")/.."  # the working directory shipped with the job, and the base of the paths below
cfg="$1"; shift
# shellcheck disable=SC2086  # SLIM_SUBMIT_ARGS is a list of flags
exec ray job submit --working-dir . --runtime-env "${SLIM_RUNTIME_ENV:-cluster/runtime_env.yaml}" \
  ${SLIM_SUBMIT_ARGS:-} -- python "jobs/${SLIM_JOB:-pipeline}.py" --config "$cfg" "$@"
