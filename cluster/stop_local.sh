#!/usr/bin/env bash
# Stop the Ray head cluster/start_local.sh started, and only it: its daemons, workers and job drivers (known by the
# temp dir in the state file), not other Ray processes on the machine (`ray stop` would end all of yours).
#   cluster/stop_local.sh                              # the head of /tmp/slim-ray-$UID/head.env
#   SLIM_RAY_STATE=/tmp/mine.env cluster/stop_local.sh # the head started with the same SLIM_RAY_STATE
# The temp dir (logs included) is removed when start_local.sh made it; KEEP_LOGS=1 keeps it.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
state="${SLIM_RAY_STATE:-/tmp/slim-ray-$(id -u)/head.env}"
if [ ! -f "$state" ]; then
  echo "stop_local.sh: no state file $state (nothing started by cluster/start_local.sh with it)" >&2
  exit 2
fi
temp="$(sed -n 's/^RAY_TEMP_DIR=//p' "$state")"
owned="$(sed -n 's/^RAY_TEMP_DIR_OWNED=//p' "$state")"
if [ -z "$temp" ]; then
  echo "stop_local.sh: $state names no RAY_TEMP_DIR" >&2
  exit 2
fi
python "$here/local_head.py" stop "$temp"
rm -f "$state"
if [ "$owned" = 1 ] && [ -z "${KEEP_LOGS:-}" ]; then
  rm -rf "$temp"
fi
