#!/usr/bin/env bash
# A local `ray start` head node, for trying `ray job submit` on one machine.
# Auth is disabled on both the head and the client here (loopback only); use token auth on shared clusters.
set -euo pipefail
export RAY_AUTH_MODE=disabled
# slim_cores: one unit per real core; training runs ask for one per thread (slim/raycluster.py), so the extra
# logical CPUs declared here never put two training runs on one core.
ray start --head --num-cpus="${NUM_CPUS:-6}" --resources="{\"slim_cores\": $(nproc)}" \
  --dashboard-host=127.0.0.1 --disable-usage-stats
echo "submit with: RAY_AUTH_MODE=disabled RAY_ADDRESS=http://127.0.0.1:8265 cluster/submit.sh configs/tiny.yaml"
