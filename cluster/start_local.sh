#!/usr/bin/env bash
# A single-machine Ray head on 127.0.0.1, for `ray job submit` on one machine (the tests start theirs with this script):
#   cluster/start_local.sh                      # then: export RAY_ADDRESS=http://127.0.0.1:8265; cluster/submit.sh ...
#   RAY_PORT=6380 DASHBOARD_PORT=8266 NUM_CPUS=4 SLIM_CORES=2 cluster/start_local.sh --temp-dir=/tmp/ray-mine
# Run it where the project's Python is first on PATH (`source .venv/bin/activate`): the jobs run `python`.
# Extra arguments go to `ray start`. Stop it with `ray stop` (which stops every Ray process of yours on this machine).
# Auth is disabled on both the head and the client here (loopback only); use token auth on shared clusters.
# Secrets the jobs need (e.g. OPENAI_API_KEY for the teacher) are read from this shell's environment.
set -euo pipefail
export RAY_AUTH_MODE=disabled
unset RAY_ADDRESS  # `ray start --head` starts a cluster; it must not try to join one
# Ray replaces 127.0.0.1 in --node-ip-address by the machine's network address unless this is 0 (its single-machine
# mode, the default on macOS): the head, its GCS and the jobs' servers then stay on loopback; no other node can join.
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
port="${RAY_PORT:-6379}"; dash="${DASHBOARD_PORT:-8265}"
# slim_cores: one unit per real core; training runs ask for one per thread (slim/raycluster.py), so the extra
# logical CPUs declared here never put two training runs on one core.
ray start --head --node-ip-address=127.0.0.1 --port="$port" \
  --num-cpus="${NUM_CPUS:-6}" --resources="{\"slim_cores\": ${SLIM_CORES:-$(nproc)}}" \
  --dashboard-host=127.0.0.1 --dashboard-port="$dash" --disable-usage-stats "$@"
echo "submit with: RAY_AUTH_MODE=disabled RAY_ADDRESS=http://127.0.0.1:$dash cluster/submit.sh configs/tiny.yaml run_dir=$PWD/runs/tiny"
