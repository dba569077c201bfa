#!/usr/bin/env bash
# Ingest cost against the size of the store: the same probe of events
# applied to a durable SQLite store holding SIZES customers, side by side.
#
#   scripts/bench-scale.sh     # SIZES="10000 1000000 5000000" PROBE=10000 RUNS=3
#
# One store grows through the sizes: `aftercare run --input` on
# `order.placed` events of new customers (5 items, dated 2030: nothing
# falls due, every customer gets a journey and its pending emails) up to
# each size; there, RUNS probes of PROBE events each (half first orders of
# new customers, half repeat orders of known ones spread over the whole
# store, dated 2030 too: ingest only, nothing sent), each a run of the
# whole process, timed by scripts/measure.py. Each probe adds its new
# customers to the store (PROBE / 2 each), small beside every size but
# the first. Prints per size: the store's customers and MB, and per probe
# events/s, CPU per event and bytes written per event; then the medians.
# A 1,000,000-customer store is about 3 GB. Measured so far up to
# 1,000,000 only: its fill, customers then shuffled, took 18 minutes (fills
# now keep customers in order, not timed yet); 5,000,000 needs some 15 GB.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZES=${SIZES:-"10000 1000000 5000000"}
PROBE=${PROBE:-10000}
RUNS=${RUNS:-3}

if [ -z "${BENCH_BIN:-}" ]; then
  cargo build --release --quiet --bin aftercare
fi
bin=${BENCH_BIN:-$PWD/target/release/aftercare}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cat > "$work/aftercare.toml" <<TOML
data_dir = "$work/data"
templates_dir = "$PWD/templates"
[source]
batch_size = 500
TOML

# Events of kind `order.placed` as JSONL: customers `from..to` (new), then
# with `repeat` > 0 that many repeat orders of customers below `known`.
events() {
  python3 - "$@" <<'PY'
import json, random, sys
tag, first, last, repeat, known = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
items = [{"sku": f"SKU-{k}", "name": f"Item {k}", "quantity": 1, "unit_price": "9.95"} for k in range(5)]
def order(event_id, customer, order_id):
    return json.dumps({
        "event_id": event_id, "type": "order.placed", "occurred_at": "2030-01-01T10:00:00Z",
        "customer": {"id": f"c-{customer}", "email": f"customer{customer}@example.com",
                     "name": f"Customer {customer}", "locale": ["en", "hy", "am"][customer % 3]},
        "order": {"id": order_id, "total": "49.75", "currency": "EUR", "items": items},
    }, separators=(",", ":"))
rng = random.Random(tag)
lines = [order(f"{tag}-new-{i}", i, f"o-{i}") for i in range(first, last)]
if repeat:
    # A probe: new and known customers interleaved. (A fill keeps its
    # customers in order, as a shop's growing ids come: much faster.)
    lines += [order(f"{tag}-again-{n}", c, f"{tag}-o-{n}")
              for n, c in enumerate(rng.randrange(known) for _ in range(repeat))]
    rng.shuffle(lines)
print("\n".join(lines))
PY
}

customers=0
next_new=0
summary=()
for size in $SIZES; do
  if [ "$size" -gt "$customers" ]; then
    # A file of its own each time: the store keeps each path's position.
    events "fill-$size" "$next_new" $((next_new + size - customers)) 0 1 > "$work/fill-$size.jsonl"
    start=$(date +%s)
    RUST_LOG=warn "$bin" --config "$work/aftercare.toml" run --input "$work/fill-$size.jsonl" > /dev/null
    rm "$work/fill-$size.jsonl"
    next_new=$((next_new + size - customers))
    customers=$size
    echo "== store filled to $customers customers in $(( $(date +%s) - start )) s"
  fi
  rates=()
  for run in $(seq 1 "$RUNS"); do
    half=$((PROBE / 2))
    events "probe-$size-$run" "$next_new" $((next_new + half)) "$half" "$customers" > "$work/probe-$size-$run.jsonl"
    next_new=$((next_new + half))
    db_mb=$(du -m "$work/data/aftercare.db" | cut -f1)
    cost=$(RUST_LOG=warn python3 scripts/measure.py "$bin" --config "$work/aftercare.toml" \
      run --input "$work/probe-$size-$run.jsonl" 2>"$work/probe.out")
    # Every event of the probe applied, none a duplicate or invalid.
    if ! grep -q "^Read $PROBE events .*(0 duplicates, 0 invalid)" "$work/probe.out"; then
      echo "the probe was not applied whole:" >&2
      cat "$work/probe.out" >&2
      exit 1
    fi
    line=$(python3 - "$cost" "$PROBE" <<'PY'
import json, sys
c, n = json.loads(sys.argv[1]), int(sys.argv[2])
print(f"{n / c['seconds']:.0f} {1e6 * c['cpu_seconds'] / n:.0f} {c['written_bytes'] / n / 1024:.1f}")
PY
)
    read -r rate cpu kb <<< "$line"
    echo "   at $customers customers (store $db_mb MB): $rate events/s, $cpu µs CPU/event, $kb KB written/event"
    rates+=("$rate")
  done
  median=$(printf '%s\n' "${rates[@]}" | sort -n | sed -n "$(( (RUNS + 1) / 2 ))p")
  summary+=("$customers customers: median $median events/s (runs: ${rates[*]})")
done
echo "== ingest of $PROBE events (half new customers, half repeat orders) against the store's size"
printf '%s\n' "${summary[@]}"
