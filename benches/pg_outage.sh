#!/usr/bin/env bash
# A PostgreSQL outage under load. Starts a PostgreSQL of its own (initdb into a temporary
# folder, on its own port), serves a webhook workflow on it with `herald serve`, posts
# webhooks steadily, and stops the database twice under that load: for 20 s, then for 60 s.
#
# Afterwards it checks what an operator relies on:
#   - every webhook answered 2xx has its run, and every run completes;
#   - during the outage webhooks are refused with 503 quickly (the slowest refusal is
#     printed), and /health says 503 rather than hanging;
#   - the same process recovers when the database is back, without a restart.
#
#   benches/pg_outage.sh                      # uses target/release/herald, building it
#   HERALD_BIN=target/debug/herald benches/pg_outage.sh
#   OUTAGES="5 10" benches/pg_outage.sh       # shorter outages
set -euo pipefail
cd "$(dirname "$0")/.."

PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
PORT=${PG_OUTAGE_PORT:-55432}
HTTP_PORT=${HERALD_OUTAGE_HTTP_PORT:-18181}
OUTAGES=${OUTAGES:-"20 60"}
RATE=${RATE:-20}

if [[ -z "${HERALD_BIN:-}" ]]; then
  cargo build --release --locked >/dev/null
  HERALD_BIN=target/release/herald
fi

work=$(mktemp -d)
chmod 755 "$work"
pgdata="$work/pgdata"
mkdir -p "$pgdata" "$work/project/workflows"
as_pg() { if [[ $(id -u) == 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi; }
[[ $(id -u) == 0 ]] && chown postgres "$pgdata" && install -o postgres /dev/null "$work/pg.log"
as_pg "$PGBIN/initdb" -D "$pgdata" -A trust -U postgres >/dev/null
pg_start() { as_pg "$PGBIN/pg_ctl" -D "$pgdata" -o "-p $PORT -k /tmp" -l "$work/pg.log" -w start >/dev/null; }
pg_stop() { as_pg "$PGBIN/pg_ctl" -D "$pgdata" -m fast -w stop >/dev/null; }
herald_pid=""
load_pid=""
cleanup() {
  [[ -n "$load_pid" ]] && kill "$load_pid" 2>/dev/null || true
  [[ -n "$herald_pid" ]] && kill -9 "$herald_pid" 2>/dev/null || true
  pg_stop 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
pg_start
URL="postgres://postgres@127.0.0.1:$PORT/postgres"

cat > "$work/project/herald.yaml" <<EOF
channels:
  email: { provider: log }
engine: { lease: 5s }
EOF
cat > "$work/project/workflows/order.yaml" <<'EOF'
kind: workflow
id: order
triggers:
  - webhook: { path: /hooks/order, idempotency_key: "{{ body.n }}" }
steps:
  - id: pause
    wait: 2s
  - id: receipt
    send: { channel: email, to: "buyer-{{ body.n }}@example.com", body: "received" }
EOF

RUST_LOG=error "$HERALD_BIN" serve --no-watch --dir "$work/project" --database-url "$URL" \
  --listen "127.0.0.1:$HTTP_PORT" > "$work/herald.out" 2> "$work/herald.err" &
herald_pid=$!
for _ in $(seq 1 100); do grep -q "listening on" "$work/herald.out" 2>/dev/null && break; sleep 0.1; done

# The load: one webhook every 1/RATE s, each recorded as "n status seconds".
(
  n=0
  while true; do
    n=$((n + 1))
    ( curl -s -o /dev/null -m 30 -w "$n %{http_code} %{time_total}\n" \
        -H 'content-type: application/json' -d "{\"n\": $n}" \
        "http://127.0.0.1:$HTTP_PORT/hooks/order" >> "$work/results" ) &
    sleep "$(awk "BEGIN {print 1/$RATE}")"
  done
) &
load_pid=$!

sleep 5
for outage in $OUTAGES; do
  echo "stopping PostgreSQL for ${outage}s"
  pg_stop
  sleep 2
  health=$(curl -s -o /dev/null -m 10 -w "%{http_code} %{time_total}" "http://127.0.0.1:$HTTP_PORT/health")
  echo "  /health during the outage: $health"
  sleep $((outage - 2))
  pg_start
  echo "  PostgreSQL is back"
  sleep 10
done
kill "$load_pid" 2>/dev/null || true
load_pid=""
sleep 3

ok=$(awk '$2 ~ /^2/ {print $1}' "$work/results" | sort -n)
ok_count=$(echo "$ok" | grep -c . || true)
refused=$(awk '$2 == 503' "$work/results" | wc -l)
other=$(awk '$2 !~ /^2/ && $2 != 503' "$work/results" | wc -l)
slowest_refusal=$(awk '$2 == 503 {print $3}' "$work/results" | sort -g | tail -1)
echo "webhooks: $ok_count accepted, $refused refused with 503 (slowest ${slowest_refusal:-none}s), $other other"

# Every 2xx has its run, and every run completes.
psql_q() { "$PGBIN/psql" -h 127.0.0.1 -p "$PORT" -U postgres -d postgres -tAc "$1"; }
for _ in $(seq 1 60); do
  pending=$(psql_q "select count(*) from runs where status <> 'completed'")
  [[ "$pending" == 0 ]] && break
  sleep 1
done
runs=$(psql_q "select count(*) from runs")
completed=$(psql_q "select count(*) from runs where status = 'completed'")
keys=$(psql_q "select idempotency_key from runs order by idempotency_key::int")
missing=$(comm -23 <(echo "$ok" | sort) <(echo "$keys" | sort) | grep -c . || true)
echo "runs: $runs stored, $completed completed; accepted webhooks without a run: $missing"
health=$(curl -s -o /dev/null -w "%{http_code}" "http://127.0.0.1:$HTTP_PORT/health")
echo "/health after recovery: $health"
kill -0 "$herald_pid" && echo "herald serve: still the same process (pid $herald_pid)"

status=0
[[ "$missing" == 0 ]] || { echo "FAIL: accepted webhooks lost"; status=1; }
[[ "$runs" == "$completed" ]] || { echo "FAIL: runs left unfinished"; status=1; }
[[ "$health" == 200 ]] || { echo "FAIL: /health did not recover"; status=1; }
exit $status
