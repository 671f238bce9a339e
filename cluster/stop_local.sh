#!/usr/bin/env bash
# Stop the Ray head cluster/start_local.sh started, and only it: its daemons, workers and job drivers (known by the
# temp dir in the state file), not other Ray processes on the machine (`ray stop` would end all of yours).
#   cluster/stop_local.sh                              # the head of /tmp/slim-ray-$UID/head.env
#   SLIM_RAY_STATE=/tmp/mine.env cluster/stop_local.sh # the head started with the same SLIM_RAY_STATE
# The temp dir (logs included) is removed when start_local.sh made it; KEEP_LOGS=1 keeps it.
# Returns when the head's ports are free again (at most ~55 s; typically a few seconds), so a new head can take them.
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
# The head's ports (RAY_PORT, DASHBOARD_PORT, CLIENT_PORT, ...): it returns once nothing listens on them, at most
# 15 s (SIGTERM, then SIGKILL) + 10 s + 30 s after it starts stopping; exit 1 naming the ports still held after that.
ports="$(sed -n 's/^[A-Z_]*_PORT=\([0-9][0-9]*\)$/\1/p' "$state")"
# shellcheck disable=SC2086
python "$here/local_head.py" stop "$temp" $ports
rm -f "$state"
if [ "$owned" = 1 ] && [ -z "${KEEP_LOGS:-}" ]; then
  rm -rf "$temp"
fi
