#!/usr/bin/env bash
# Time, rate and peak memory of `herald contacts import` on a generated CSV, on SQLite (and on
# PostgreSQL when HERALD_BENCH_POSTGRES_URL is set).
#
#   bash benches/import.sh                 # 1,000,000 rows; builds the release binary first
#   ROWS=100000 bash benches/import.sh     # fewer rows
#   HERALD_BIN=path bash benches/import.sh # measures another build
#
# The file: e-mail, name, a phone on every other row, two attribute columns; 1 % of the rows
# are bad (a malformed address). Each database is imported into twice: once empty, and again
# with the same file (every row then merges into the contact it made).
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS="${ROWS:-1000000}"
if [[ -z "${HERALD_BIN:-}" ]]; then
  CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}" cargo build --release --quiet
  HERALD_BIN="$PWD/target/release/herald"
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/workflows"
printf 'database: sqlite://herald.db\ncontacts: { default_region: US }\n' > "$work/herald.yaml"
python3 - "$work/people.csv" "$ROWS" <<'PY'
import sys
path, rows = sys.argv[1], int(sys.argv[2])
with open(path, "w") as f:
    f.write("email,first_name,phone,plan,city\n")
    for i in range(rows):
        email = f"person{i}.example.com" if i % 100 == 99 else f"person{i}@example.com"
        phone = f"+1303{i % 10_000_000:07d}" if i % 2 == 0 else ""
        f.write(f"{email},Person {i},{phone},gold,Denver\n")
PY
size=$(stat -c %s "$work/people.csv")
printf 'rows: %s, file: %s bytes\n\n' "$ROWS" "$size"
printf '| database | run | time | rows/s | peak RSS |\n|---|---|---|---|---|\n'
measure() {
  local label="$1" run="$2"; shift 2
  local out
  out=$(cd "$work" && /usr/bin/time -v "$HERALD_BIN" contacts import people.csv "$@" 2>&1 >/dev/null) || true
  local secs rss
  secs=$(awk -F': ' '/Elapsed \(wall clock\)/ {n=split($2,a,":"); s=0; for(i=1;i<=n;i++) s=s*60+a[i]; print s}' <<<"$out")
  rss=$(awk -F': ' '/Maximum resident set size/ {printf "%.0f MiB", $2/1024}' <<<"$out")
  printf '| %s | %s | %.1f s | %.0f | %s |\n' "$label" "$run" "$secs" "$(echo "$ROWS / $secs" | bc -l)" "$rss"
}
measure sqlite first
measure sqlite again
if [[ -n "${HERALD_BENCH_POSTGRES_URL:-}" ]]; then
  schema="herald_bench_import_$$"
  psql -q "$HERALD_BENCH_POSTGRES_URL" -c "CREATE SCHEMA $schema" >/dev/null
  url="${HERALD_BENCH_POSTGRES_URL}?options=-c%20search_path%3D${schema}"
  measure postgres first --database-url "$url"
  measure postgres again --database-url "$url"
  psql -q "$HERALD_BENCH_POSTGRES_URL" -c "DROP SCHEMA $schema CASCADE" >/dev/null
fi
