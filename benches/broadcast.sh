#!/usr/bin/env bash
# A broadcast campaign to ROWS contacts on SQLite, with `herald serve` (release build): how long
# enrolment takes, how fast messages are rendered and enqueued, how fast the dispatcher hands
# them to the channel, and the server's peak RSS for the whole broadcast.
#
#   bash benches/broadcast.sh                # 1,000,000 contacts
#   ROWS=100000 bash benches/broadcast.sh    # fewer
#   HERALD_BIN=path bash benches/broadcast.sh
#
# The contacts are imported first (`herald contacts import`, not timed here; see import.sh) onto
# one list. The campaign's one step renders a subject and a body with the contact's name and
# e-mail into the outbox; the channel is `log` with logging at `warn`, so delivery costs what
# Herald's own dispatch costs and no provider is measured. Progress is read from the database
# with sqlite3 every POLL seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS="${ROWS:-1000000}"
POLL="${POLL:-2}"
PORT="${PORT:-18282}"
if [[ -z "${HERALD_BIN:-}" ]]; then
  CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}" cargo build --release --quiet
  HERALD_BIN="$PWD/target/release/herald"
fi
command -v sqlite3 >/dev/null || { echo "sqlite3 is needed" >&2; exit 2; }
work="$(mktemp -d)"
server=""
cleanup() {
  [[ -n "$server" ]] && pkill -KILL -P "$server" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/workflows"
cat > "$work/herald.yaml" <<YAML
database: sqlite://herald.db
listen: 127.0.0.1:$PORT
channels:
  email: { provider: log }
YAML
python3 - "$work/people.csv" "$ROWS" <<'PY'
import sys
path, rows = sys.argv[1], int(sys.argv[2])
with open(path, "w") as f:
    f.write("email,first_name\n")
    for i in range(rows):
        f.write(f"person{i}@example.com,Person{i}\n")
PY
(cd "$work" && "$HERALD_BIN" contacts import people.csv --list customers >/dev/null 2>&1)
# The campaign is due the moment the server starts.
cat > "$work/workflows/broadcast.yaml" <<'YAML'
kind: campaign
id: broadcast
audience: { lists: [customers] }
schedule:
  send_at: "2020-01-01T00:00:00Z"
steps:
  - id: news
    send:
      channel: email
      to: "{{ contact.email }}"
      subject: "{{ contact.first_name }}, rates are down"
      body: "Hi {{ contact.first_name }}, this month's rate is 4.9 %. Reply STOP to opt out."
      category: transactional
YAML
db="$work/herald.db"
q() { sqlite3 -cmd ".timeout 5000" "$db" "$1" 2>/dev/null || echo 0; }
start=$(date +%s.%N)
# `exec`: $! is /usr/bin/time's pid, and herald its only child.
(cd "$work" && exec env RUST_LOG=warn /usr/bin/time -v -o "$work/time.txt" "$HERALD_BIN" serve --no-watch >/dev/null 2>"$work/serve.log") &
server=$!
enrolled_at="" queued_at="" sent_at=""
while true; do
  sleep "$POLL"
  now=$(date +%s.%N)
  enrolled=$(q "SELECT COUNT(*) FROM campaign_enrolments")
  queued=$(q "SELECT COUNT(*) FROM outbox")
  sent=$(q "SELECT COUNT(*) FROM outbox WHERE status = 'sent'")
  printf '%6.0f s: enrolled %s, queued %s, sent %s\n' "$(echo "$now - $start" | bc)" "$enrolled" "$queued" "$sent" >&2
  [[ -z "$enrolled_at" && "$enrolled" -ge "$ROWS" ]] && enrolled_at=$now
  [[ -z "$queued_at" && "$queued" -ge "$ROWS" ]] && queued_at=$now
  if [[ "$sent" -ge "$ROWS" ]]; then sent_at=$now; break; fi
  if ! kill -0 "$server" 2>/dev/null; then echo "herald serve exited; its log:" >&2; tail -20 "$work/serve.log" >&2; exit 1; fi
done
pkill -INT -P "$server"; wait "$server" || true; server=""
rss=$(awk -F': ' '/Maximum resident set size/ {printf "%.0f MiB", $2/1024}' "$work/time.txt")
cpu=$(awk -F': ' '/User time/ {u=$2} /System time/ {s=$2} END {printf "%.1f s", u+s}' "$work/time.txt")
e=$(echo "$enrolled_at - $start" | bc); qd=$(echo "$queued_at - $start" | bc); s=$(echo "$sent_at - $start" | bc)
printf '\nrecipients: %s (times from `herald serve` starting, read every %s s)\n\n' "$ROWS" "$POLL"
printf '| all enrolled | all rendered and queued | queued/s | all handed to the channel | sent/s | server CPU | peak RSS |\n|---|---|---|---|---|---|---|\n'
printf '| %.0f s | %.0f s | %.0f | %.0f s | %.0f | %s | %s |\n' "$e" "$qd" "$(echo "$ROWS / $qd" | bc -l)" "$s" "$(echo "$ROWS / $s" | bc -l)" "$cpu" "$rss"
