#!/usr/bin/env bash
# Event ingestion at POST /api/events (release build), with wrk on loopback: the events alerts
# read. The project has an alert reading the posted events, so every request is also checked
# against it (its field must be a number) as in production.
#
#   bash benches/events.sh                                   # SQLite
#   bash benches/events.sh postgres://postgres@127.0.0.1:5432/test   # PostgreSQL, fresh schema
#
# The server is pinned to one CPU and wrk to the other. Reports requests/s, p50 and p99, the
# server's CPU per event, and checks that every 202 has its event in the database.
# Knobs: DURATION (s, 15), CONNS (32), SERVER_CPU (1), WRK_CPU (0), PORT (18383), HERALD_BIN,
# BATCH (1: one event per request; N: `{"events": [...]}` with N events per request).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DB_URL=${1:-}
DURATION=${DURATION:-15}
CONNS=${CONNS:-32}
SERVER_CPU=${SERVER_CPU:-1}
WRK_CPU=${WRK_CPU:-0}
PORT=${PORT:-18383}
BATCH=${BATCH:-1}
command -v wrk >/dev/null || { echo "wrk is needed (apt-get install wrk)" >&2; exit 2; }
if [ -n "${HERALD_BIN:-}" ]; then BIN=$HERALD_BIN; else
  (cd "$ROOT" && cargo build --release --quiet); BIN="$ROOT/target/release/herald"; fi
TMP=$(mktemp -d)
SERVER_PID="" SCHEMA=""
cleanup() {
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null || true
  if [ -n "$SCHEMA" ]; then psql "$DB_URL" -qc "DROP SCHEMA IF EXISTS $SCHEMA CASCADE" >/dev/null 2>&1 || true; fi
  rm -rf "$TMP"
}
trap cleanup EXIT
KEY=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
mkdir -p "$TMP/workflows"
printf 'admin:\n  api_keys: ["%s"]\n' "$KEY" > "$TMP/herald.yaml"
cat > "$TMP/workflows/latency.yaml" <<'YAML'
kind: alert
id: slow-checkouts
every: 15s
source:
  events: { name: checkout.completed, window: 5m, aggregate: p95, field: data.latency_ms }
condition: "> 5000"
YAML
EVENT='{"name":"checkout.completed","key":"order-1","data":{"latency_ms":420,"provider":"stripe"}}'
if [ "$BATCH" -gt 1 ]; then
  BODY="{\"events\":[$EVENT$(for _ in $(seq 2 "$BATCH"); do printf ',%s' "$EVENT"; done)]}"
else
  BODY=$EVENT
fi
cat > "$TMP/post.lua" <<LUA
wrk.method = "POST"
wrk.body = '$BODY'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["x-api-key"] = "$KEY"
done = function(summary, latency, requests)
  local secs = summary.duration / 1e6
  io.write(string.format("rps=%.0f p50_ms=%.2f p99_ms=%.2f requests=%d errors=%d\n",
    summary.requests / secs, latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    summary.requests, summary.errors.status + summary.errors.connect + summary.errors.read
    + summary.errors.write + summary.errors.timeout))
end
LUA
if [ -n "$DB_URL" ]; then
  SCHEMA="herald_bench_events_$$"
  psql "$DB_URL" -qc "CREATE SCHEMA $SCHEMA" >/dev/null
  SERVE_DB="${DB_URL}?options=-c%20search_path%3D${SCHEMA}"
  BACKEND=postgres
else
  SERVE_DB="sqlite://$TMP/herald.db"; BACKEND=sqlite
fi
taskset -c "$SERVER_CPU" "$BIN" serve --dir "$TMP" --listen "127.0.0.1:$PORT" --no-watch \
  --database-url "$SERVE_DB" > "$TMP/serve.out" 2> "$TMP/serve.log" &
SERVER_PID=$!
until curl -s -o /dev/null -w '%{http_code}' -X POST "http://127.0.0.1:$PORT/api/events" \
    -H 'content-type: application/json' -H "x-api-key: $KEY" \
    -d '{"name":"warmup","data":{}}' 2>/dev/null | grep -q 202; do
  sleep 0.01
  kill -0 "$SERVER_PID" 2>/dev/null || { cat "$TMP/serve.log" >&2; exit 1; }
done
cpu() { awk '{print $14 + $15}' "/proc/$SERVER_PID/stat"; }
clk=$(getconf CLK_TCK)
before=$(cpu)
out=$(taskset -c "$WRK_CPU" wrk -t1 -c"$CONNS" -d"${DURATION}s" -s "$TMP/post.lua" \
  "http://127.0.0.1:$PORT/api/events" | tail -1)
after=$(cpu)
requests=$(sed -E 's/.*requests=([0-9]+).*/\1/' <<<"$out")
errors=$(sed -E 's/.*errors=([0-9]+).*/\1/' <<<"$out")
if [ "$BACKEND" = sqlite ]; then
  stored=$(sqlite3 "$TMP/herald.db" "SELECT COUNT(*) FROM events WHERE name = 'checkout.completed'")
else
  stored=$(psql "$DB_URL" -tAc "SELECT COUNT(*) FROM $SCHEMA.events WHERE name = 'checkout.completed'")
fi
accepted=$(( (requests - errors) * BATCH ))
cpu_us=$(echo "($after - $before) * 1000000 / $clk / $accepted" | bc)
echo "$BACKEND, $BATCH event(s) per request: $out; events/s $(echo "$(sed -E 's/.*rps=([0-9]+).*/\1/' <<<"$out") * $BATCH" | bc); server CPU ${cpu_us} µs/event; stored $stored of $accepted accepted"
