#!/usr/bin/env bash
# Webhook benchmarks of `herald serve` (release build), with wrk on loopback.
#
#   benches/webhook.sh                      # SQLite (the embedded default)
#   benches/webhook.sh postgres://postgres@127.0.0.1:5432/test   # PostgreSQL, in a fresh schema
#
# The server is pinned to one CPU and wrk to the other, so the figures are "one core's worth".
# For each workflow it reports requests/s, p50 and p99 latency, server CPU time per request,
# and checks that every answered request has its run in the database. It also reports the
# time from start to the first answered request, and idle RSS.
#
# Knobs: DURATION (s, default 20), WARMUP (s, 5), REPEATS (2), CONNS (32), SERVER_CPU (1),
# WRK_CPU (0), PORT (18181), HERALD_BIN (the binary to measure; default: build the release one).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DB_URL=${1:-}
DURATION=${DURATION:-20}
WARMUP=${WARMUP:-5}
REPEATS=${REPEATS:-2}
CONNS=${CONNS:-32}
SERVER_CPU=${SERVER_CPU:-1}
WRK_CPU=${WRK_CPU:-0}
PORT=${PORT:-18181}

command -v wrk >/dev/null || { echo "wrk is needed (apt-get install wrk)" >&2; exit 2; }
# HERALD_BIN measures another build instead (an earlier commit's, or another profile's).
if [ -n "${HERALD_BIN:-}" ]; then
  BIN=$HERALD_BIN
else
  (cd "$ROOT" && cargo build --release --quiet)
  BIN="$ROOT/target/release/herald"
fi

TMP=$(mktemp -d)
SERVER_PID=""
SCHEMA=""
cleanup() {
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null || true
  if [ -n "$SCHEMA" ]; then psql "$DB_URL" -qc "DROP SCHEMA IF EXISTS $SCHEMA CASCADE" >/dev/null 2>&1 || true; fi
  rm -rf "$TMP"
}
trap cleanup EXIT

mkdir -p "$TMP/workflows"
cat > "$TMP/herald.yaml" <<'EOF'
channels:
  email: { provider: log }
engine: { workers: 64 }
EOF
# The peer benchmark's workflow: webhook -> set a field -> reply with it.
cat > "$TMP/workflows/lead.yaml" <<'EOF'
kind: workflow
id: lead
triggers:
  - webhook: { path: /webhook/lead, respond: sync }
steps:
  - id: greet
    set: { greeting: "Hi {{ body.firstName }}, your pre-approval is waiting" }
  - id: reply
    respond: { body: { greeting: "{{ vars.greeting }}" } }
EOF
# The same, answered 202 once the run is stored.
cat > "$TMP/workflows/lead-async.yaml" <<'EOF'
kind: workflow
id: lead-async
triggers:
  - webhook: { path: /webhook/lead-async }
steps:
  - id: greet
    set: { greeting: "Hi {{ body.firstName }}, your pre-approval is waiting" }
EOF
# Three steps and a sync reply.
cat > "$TMP/workflows/three.yaml" <<'EOF'
kind: workflow
id: three
triggers:
  - webhook: { path: /webhook/three, respond: sync }
steps:
  - id: greet
    set: { name: "{{ body.firstName | first_name }}", big: "{{ body.loanAmount > 100000 }}" }
  - id: tier
    if: vars.big
    then:
      - id: premium
        set: { tier: premium }
    else:
      - id: standard
        set: { tier: standard }
  - id: reply
    respond: { body: { greeting: "Hi {{ vars.name }}", tier: "{{ vars.tier }}" } }
EOF
cat > "$TMP/post.lua" <<'EOF'
wrk.method = "POST"
wrk.body = '{"firstName":"Ada","lastName":"Lovelace","email":"ada@example.com","loanAmount":250000}'
wrk.headers["Content-Type"] = "application/json"
done = function(summary, latency, requests)
  local secs = summary.duration / 1e6
  io.write(string.format("rps=%.0f p50_ms=%.2f p99_ms=%.2f requests=%d errors=%d\n",
    summary.requests / secs, latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    summary.requests, summary.errors.status + summary.errors.connect + summary.errors.read
    + summary.errors.write + summary.errors.timeout))
end
EOF

if [ -n "$DB_URL" ]; then
  SCHEMA="herald_bench_$$"
  psql "$DB_URL" -qc "CREATE SCHEMA $SCHEMA" >/dev/null
  SERVE_DB="${DB_URL}?options=-c%20search_path%3D${SCHEMA}"
  BACKEND=postgres
else
  SERVE_DB="sqlite://$TMP/herald.db"
  BACKEND=sqlite
fi

cpu_ticks() { awk '{print $14 + $15}' "/proc/$SERVER_PID/stat"; }
clk=$(getconf CLK_TCK)

start=$(date +%s%N)
taskset -c "$SERVER_CPU" "$BIN" serve --dir "$TMP" --listen "127.0.0.1:$PORT" --no-watch \
  --database-url "$SERVE_DB" > "$TMP/serve.out" 2> "$TMP/serve.log" &
SERVER_PID=$!
until curl -s -o /dev/null -w '%{http_code}' -X POST "http://127.0.0.1:$PORT/webhook/lead" \
    -H 'content-type: application/json' -d '{"firstName":"Ada"}' 2>/dev/null | grep -q 200; do
  sleep 0.002
  kill -0 "$SERVER_PID" 2>/dev/null || { cat "$TMP/serve.log" >&2; exit 1; }
done
first_ms=$(( ($(date +%s%N) - start) / 1000000 ))
sleep 2
idle_kb=$(awk '/VmRSS/ {print $2}' "/proc/$SERVER_PID/status")
echo "backend=$BACKEND first_answer_ms=$first_ms idle_rss_mib=$(( idle_kb / 1024 ))"

answered=0
for path in lead lead-async three; do
  url="http://127.0.0.1:$PORT/webhook/$path"
  if [ "$WARMUP" -gt 0 ]; then
    line=$(taskset -c "$WRK_CPU" wrk -t1 -c"$CONNS" -d"${WARMUP}s" -s "$TMP/post.lua" "$url" | grep '^rps=')
    answered=$(( answered + $(sed -n 's/.*requests=\([0-9]*\).*/\1/p' <<< "$line") ))
  fi
  for r in $(seq 1 "$REPEATS"); do
    before=$(cpu_ticks)
    line=$(taskset -c "$WRK_CPU" wrk -t1 -c"$CONNS" -d"${DURATION}s" -s "$TMP/post.lua" "$url" | grep '^rps=')
    after=$(cpu_ticks)
    reqs=$(sed -n 's/.*requests=\([0-9]*\).*/\1/p' <<< "$line")
    answered=$(( answered + reqs ))
    cpu_ms=$(awk -v t=$((after - before)) -v hz="$clk" -v n="$reqs" 'BEGIN { printf "%.3f", t * 1000 / hz / n }')
    echo "backend=$BACKEND workflow=$path run=$r $line cpu_ms_per_req=$cpu_ms"
  done
done
peak_kb=$(awk '/VmHWM/ {print $2}' "/proc/$SERVER_PID/status")
echo "backend=$BACKEND peak_rss_mib=$(( peak_kb / 1024 ))"

# Every answered request must have its run. wrk stops mid-request at the end of each run, so
# the server may have stored a few more runs than wrk counted; never fewer.
kill -TERM "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=""
if [ "$BACKEND" = sqlite ]; then
  summary=$(python3 - "$TMP/herald.db" <<'EOF'
import sqlite3, sys
c = sqlite3.connect(sys.argv[1])
rows = c.execute("select workflow_id, status, count(*) from runs group by 1, 2").fetchall()
print(sum(n for _, _, n in rows), ", ".join(f"{w} {s} {n}" for w, s, n in rows))
EOF
)
else
  summary="$(psql "$SERVE_DB" -Atc "select count(*) from runs") $(psql "$SERVE_DB" -Atc "select workflow_id || ' ' || status || ' ' || count(*) from runs group by workflow_id, status" | paste -sd, -)"
fi
stored=${summary%% *}
echo "runs stored: ${summary#* }"
echo "requests answered 2xx: $answered, runs stored: $stored"
if [ "$stored" -lt "$answered" ]; then
  echo "FAIL: $(( answered - stored )) answered requests have no run" >&2
  exit 1
fi
