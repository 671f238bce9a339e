#!/usr/bin/env bash
# A single-machine Ray head for `ray job submit`, ready for jobs when this returns (the tests start theirs with it):
#   cluster/start_local.sh                      # prints: export RAY_ADDRESS=http://127.0.0.1:8265
#   NUM_CPUS=4 SLIM_CORES=2 DASHBOARD_PORT=8266 cluster/start_local.sh
#   cluster/stop_local.sh                       # ends this head only, not other Ray processes on the machine
# Run it where the project's Python is first on PATH (`source .venv/bin/activate`): the jobs run `python`.
# Ports: each from its variable when set (it must be free), else Ray's default when free (GCS 6379, dashboard 8265,
# dashboard agent 52365, client 10001), else a free one: RAY_PORT, DASHBOARD_PORT, DASHBOARD_AGENT_PORT,
# DASHBOARD_AGENT_GRPC_PORT, METRICS_PORT, NODE_MANAGER_PORT, OBJECT_MANAGER_PORT, RUNTIME_ENV_AGENT_PORT,
# CLIENT_PORT; workers bind free ports Ray picks, or MIN_WORKER_PORT..MAX_WORKER_PORT when both are set.
# Another Ray on the machine holding the defaults (a private `ray.init()` cluster, another head) is no obstacle.
# Address: 127.0.0.1 (no other machine can reach or join it). RAY_NODE_IP=<this machine's address> binds there
# instead, for workers of other machines to join (`ray start --address=IP:RAY_PORT`); auth stays disabled, so only
# on a network you trust.
# Ready: it submits a no-op job (`ray job submit -- true`) until one succeeds (READY_TIMEOUT_S, default 180 s); a
# head that never takes a job is stopped again and the script fails with the log folder to read.
# State: the ports, the address and Ray's temp dir go to SLIM_RAY_STATE (default /tmp/slim-ray-$UID/head.env,
# shell syntax: `source` it for RAY_ADDRESS); cluster/stop_local.sh reads it. One head per state file.
# Extra arguments go to `ray start` (not the ports above: set their variables). Logs: <temp dir>/session_latest/logs.
# Auth is disabled on both the head and the client (RAY_AUTH_MODE=disabled): loopback by default.
# Secrets the jobs need (e.g. OPENAI_API_KEY for the teacher) are read from this shell's environment.
set -euo pipefail
export RAY_AUTH_MODE=disabled
unset RAY_ADDRESS  # `ray start --head` starts a cluster; it must not try to join one
here="$(cd "$(dirname "$0")" && pwd)"
ip="${RAY_NODE_IP:-127.0.0.1}"
# Ray replaces 127.0.0.1 in --node-ip-address by the machine's network address unless this is 0 (its single-machine
# mode, the default on macOS): the head, its GCS and the jobs' servers then stay on loopback; no other node can join.
[ "$ip" = 127.0.0.1 ] && export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
state="${SLIM_RAY_STATE:-/tmp/slim-ray-$(id -u)/head.env}"
if [ -f "$state" ]; then
  old="$(sed -n 's/^RAY_TEMP_DIR=//p' "$state")"
  if [ -n "$old" ] && python "$here/local_head.py" alive "$old"; then
    echo "start_local.sh: a head started by this script is running ($state); stop it with cluster/stop_local.sh" \
         "or set SLIM_RAY_STATE to another file" >&2
    exit 2
  fi
fi
# Ray's temp dir names this head's processes (stop_local.sh ends those only): a fresh one unless given.
temp=""
for a in "$@"; do case "$a" in --temp-dir=*) temp="${a#--temp-dir=}";; esac; done
owned=0
if [ -z "$temp" ]; then
  temp="$(mktemp -d /tmp/ray-slim-XXXXXX)"  # short: Ray's socket paths live under it
  owned=1
  set -- "--temp-dir=$temp" "$@"
fi
ports="$(python "$here/local_head.py" ports)"
args=()
while read -r name port flag; do
  args+=("$flag=$port")
  declare "$name=$port"
done <<< "$ports"
if [ -n "${MIN_WORKER_PORT:-}" ] && [ -n "${MAX_WORKER_PORT:-}" ]; then
  args+=("--min-worker-port=$MIN_WORKER_PORT" "--max-worker-port=$MAX_WORKER_PORT")
fi
address="http://$ip:$DASHBOARD_PORT"
mkdir -p "$(dirname "$state")"
{
  echo "# written by cluster/start_local.sh; read by cluster/stop_local.sh"
  echo "RAY_ADDRESS=$address"
  echo "RAY_GCS_ADDRESS=$ip:$RAY_PORT"
  echo "RAY_TEMP_DIR=$temp"
  echo "RAY_TEMP_DIR_OWNED=$owned"
  echo "$ports" | sed 's/^\([A-Z_]*\) \([0-9]*\) .*/\1=\2/'
} > "$state"
# slim_cores: one unit per real core; training runs ask for one per thread (slim/runtime/raycluster.py), so the extra
# logical CPUs declared here never put two training runs on one core.
if ! ray start --head --node-ip-address="$ip" "${args[@]}" \
    --num-cpus="${NUM_CPUS:-6}" --resources="{\"slim_cores\": ${SLIM_CORES:-$(nproc)}}" \
    --dashboard-host="$ip" --disable-usage-stats "$@"; then
  python "$here/local_head.py" stop "$temp" >&2  # what a failed start left running
  rm -f "$state"
  exit 1
fi

# `ray start` returns before the job agent listens; a job submitted then fails ("No available agent to submit job").
deadline=$((SECONDS + ${READY_TIMEOUT_S:-180}))
n=0
until out="$(RAY_ADDRESS="$address" ray job submit --submission-id "start-local-ready-$(date +%s)-$n" -- true 2>&1)"; do
  n=$((n + 1))
  if [ "$SECONDS" -ge "$deadline" ]; then
    echo "$out" | tail -n 5 >&2
    echo "start_local.sh: the head at $address took no job in ${READY_TIMEOUT_S:-180} s; stopping it (logs:" \
         "$temp/session_latest/logs)" >&2
    python "$here/local_head.py" stop "$temp" >&2
    rm -f "$state"
    exit 1
  fi
  sleep 2
done
echo "Ray head ready at $address (GCS $ip:$RAY_PORT, state $state)"
echo "export RAY_ADDRESS=$address RAY_AUTH_MODE=disabled"
echo "submit with: RAY_AUTH_MODE=disabled RAY_ADDRESS=$address cluster/submit.sh configs/tiny.yaml run_dir=$PWD/runs/tiny"
echo "stop with: cluster/stop_local.sh${SLIM_RAY_STATE:+  (SLIM_RAY_STATE=$state)}"
