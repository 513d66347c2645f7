#!/usr/bin/env bash
# Peak memory and time of `herald validate` on one large definition, beside the file's size.
#
#   bash benches/validate_memory.sh            # builds the release binary first
#   HERALD_BIN=path bash benches/validate_memory.sh   # measures another build
#
# Two shapes of about 5 MB each, in a project holding only that file:
#   steps: 46,708 `set` steps, each with a template (block YAML);
#   data:  one `set` of a list of 62,000 objects, as minified single-line JSON.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${HERALD_BIN:-}" ]]; then
  CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}" cargo build --release --quiet
  HERALD_BIN="$PWD/target/release/herald"
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

mkdir -p "$work/steps/workflows" "$work/data/workflows"
python3 - "$work" <<'PY'
import json, sys
root = sys.argv[1]
with open(f"{root}/steps/workflows/big.yaml", "w") as f:
    f.write("kind: workflow\nid: big\ntriggers:\n  - webhook:\n      path: /hooks/big\nsteps:\n")
    for i in range(46708):
        f.write(f"  - id: step_{i}\n    set:\n      value_{i}: \"{{{{ body.amount | default(0) }}}} for {{{{ body.name }}}}\"\n")
items = [{"sku": f"SKU-{i:06d}", "name": f"Product number {i}", "price": i * 1.5, "tags": ["a", "b"]}
         for i in range(62000)]
wf = {"kind": "workflow", "id": "big",
      "triggers": [{"webhook": {"path": "/hooks/big", "respond": "sync"}}],
      "steps": [{"id": "seed", "set": {"prices": items}},
                {"id": "done", "respond": {"body": {"ok": True}}}]}
with open(f"{root}/data/workflows/big.yaml", "w") as f:
    f.write(json.dumps(wf, separators=(",", ":")))
PY

printf '| shape | file | time | peak RSS | RSS / file |\n|---|---|---|---|---|\n'
for shape in steps data; do
  size=$(stat -c %s "$work/$shape/workflows/big.yaml")
  out=$(cd "$work/$shape" && /usr/bin/time -v "$HERALD_BIN" validate 2>&1 >/dev/null) || {
    echo "herald validate failed on the $shape shape:" >&2; echo "$out" >&2; exit 1; }
  rss=$(echo "$out" | awk -F': ' '/Maximum resident/{print $2}')
  wall=$(echo "$out" | awk -F': ' '/Elapsed \(wall/{print $2}')
  awk -v s="$shape" -v f="$size" -v r="$rss" -v w="$wall" 'BEGIN {
    printf "| %s | %.1f MB | %s | %.0f MiB | %.0f× |\n", s, f/1e6, w, r/1024, r*1024/f }'
done
