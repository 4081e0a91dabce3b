#!/usr/bin/env bash
# Profiles the release coordinator under one HTTP load with `perf record -g` and prints the
# top of the profile (BENCHMARKS.md's "profile" section). Loopback only: its own
# nats-server on a free port with a temporary store, its own coordinator, wrk as the load.
#
#   bench/profile/profile.sh submit   # POST /v1/tasks, no worker
#   bench/profile/profile.sh get      # GET /v1/tasks/{id} over tasks submitted first
#
# Needs: target/release/aicp-coordinator (make bench builds it), nats-server, perf, wrk.
set -euo pipefail
what=${1:-submit}
seconds=${SECONDS_TO_RUN:-15}
connections=${CONNECTIONS:-64}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
bin=$root/target/release/aicp-coordinator
for tool in nats-server perf wrk curl; do
  command -v "$tool" >/dev/null || { echo "profile: $tool is missing (apt-get install linux-perf wrk curl; nats-server)" >&2; exit 1; }
done
[ -x "$bin" ] || { echo "profile: $bin is missing: run make bench (or cargo build --release -p aicp-coordinator)" >&2; exit 1; }

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

nats_port=$(free_port)
nats-server -a 127.0.0.1 -p "$nats_port" -js -sd "$work/nats" >"$work/nats.log" 2>&1 &
pids+=($!)
http_port=$(free_port)
token=profile-admin-token-0123456789abcdef
"$bin" --nats-url "nats://127.0.0.1:$nats_port" --listen "127.0.0.1:$http_port" \
  --data-dir "$work/coordinator" --admin-token "$token" \
  --rate-limit off --rate-limit-ip off --log-format json >"$work/coordinator.log" 2>&1 &
coordinator=$!
pids+=($coordinator)
base=http://127.0.0.1:$http_port
for _ in $(seq 100); do curl -fs "$base/health" >/dev/null 2>&1 && break; sleep 0.1; done
curl -fs "$base/health" >/dev/null || { echo "profile: the coordinator did not start:" >&2; tail "$work/coordinator.log" >&2; exit 1; }

export AICP_TOKEN=$token
case $what in
  submit)
    script=$here/submit.lua ;;
  get)
    # Tasks to read: submitted first, their ids written into the GET script's list.
    for i in $(seq 2000); do
      curl -fs -H "Authorization: Bearer $token" -H 'content-type: application/json' \
        -d "{\"buyer_id\":\"profile-$((i % 64))\",\"description\":\"profile task\",\"complexity\":3}" \
        "$base/v1/tasks"
      echo
    done | python3 -c 'import json,sys; print("\n".join(json.loads(l)["id"] for l in sys.stdin if l.strip()))' >"$work/ids"
    export AICP_IDS=$work/ids
    script=$here/get.lua ;;
  *) echo "usage: $0 submit|get" >&2; exit 2 ;;
esac

perf record -F 999 -g --call-graph dwarf,16384 -p "$coordinator" -o "${PERF_OUT:=$work/perf.data}" -- sleep "$((seconds + 1))" >/dev/null 2>&1 &
perf_pid=$!
wrk -t 2 -c "$connections" -d "${seconds}s" --latency -s "$script" "$base" | sed -n '1,20p'
wait "$perf_pid" || true
echo "--- top of the coordinator's profile (self time, $what) ---"
perf report -i "$PERF_OUT" --no-children --sort symbol --stdio -g none --percent-limit 1.2 2>/dev/null \
  | grep -v "^#" | grep -v "^$" | sed "s/  *-  *-  *$//" | cut -c1-160 | head -40
echo "--- by inclusive time ---"
perf report -i "$PERF_OUT" --children --sort symbol --stdio -g none --percent-limit 4 2>/dev/null \
  | grep -v "^#" | grep -v "^$" | sed "s/  *-  *-  *$//" | cut -c1-160 | head -40
