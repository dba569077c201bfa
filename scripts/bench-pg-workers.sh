#!/usr/bin/env bash
# PostgreSQL ingest with several workers on one store, without a broker:
# each worker reads a JSONL file of its own (N/WORKERS `order.placed`
# events, new customers, 5 items, dated 2030: nothing falls due, so this
# is ingest alone) into one new schema, all at once. What it shows is how
# the workers' transactions get along on the shared store, with none of
# a consumer group's joins and rebalances in the time (which, with tansu,
# vary a run by tens of seconds: see bench-kafka.sh). Medians of RUNS.
#
#   scripts/bench-pg-workers.sh                     # N=15000 WORKERS=3 RUNS=3
#   BENCH_BIN=path/to/aftercare scripts/bench-pg-workers.sh   # another build
#   STORE_URL=postgres://user@host/db scripts/bench-pg-workers.sh
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-15000}
WORKERS=${WORKERS:-3}
RUNS=${RUNS:-3}
STORE_URL=${STORE_URL:-postgres://postgres@127.0.0.1:5432/test}

if [ -z "${BENCH_BIN:-}" ]; then
  cargo build --release --quiet --bin aftercare
fi
target=${CARGO_TARGET_DIR:-target}
bin=${BENCH_BIN:-$target/release/aftercare}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

per=$((N / WORKERS))
for w in $(seq "$WORKERS"); do
  python3 - "$w" "$per" > "$work/events-$w.jsonl" <<'PY'
import json, sys
w, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    print(json.dumps({
        "event_id": f"bench-{w}-{i}", "type": "order.placed",
        "occurred_at": "2030-01-01T10:00:00Z",
        "customer": {"id": f"c-{w}-{i}", "email": f"customer{w}x{i}@example.com",
                     "name": f"Customer {i}", "locale": ["en", "hy", "am"][i % 3]},
        "order": {"id": f"o-{w}-{i}", "total": "49.75", "currency": "EUR", "items": [
            {"sku": f"SKU-{k}", "name": f"Item {k}", "quantity": 1, "unit_price": "9.95"}
            for k in range(5)]},
    }))
PY
done

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
rates=()
cpus=()
for run in $(seq "$RUNS"); do
  store_url="$STORE_URL?schema=bench_pg_$$_$run"
  for w in $(seq "$WORKERS"); do
    cat > "$work/aftercare-$run-$w.toml" <<TOML
data_dir = "$work/data-$run-$w"
worker_id = "bench-$w"
[store]
url = "$store_url"
[source]
path = "$work/events-$w.jsonl"
batch_size = 1000
TOML
  done
  cost=$(RUST_LOG=warn scripts/measure.py bash -c 'set -e
    bin=$1 work=$2 run=$3 workers=$4
    pids=()
    for w in $(seq "$workers"); do
      "$bin" --config "$work/aftercare-$run-$w.toml" run >"$work/summary-$run-$w" 2>&1 &
      pids+=($!)
    done
    for pid in "${pids[@]}"; do wait "$pid"; done' _ "$bin" "$work" "$run" "$WORKERS")
  n=$((per * WORKERS))
  read -r rate seconds cpu < <(python3 -c '
import json, sys
n, cost = int(sys.argv[1]), json.loads(sys.argv[2])
s, cpu = cost["seconds"], cost["cpu_seconds"]
print(f"{n / s:.0f} {s:.3f} {1e6 * cpu / n:.0f}")
' "$n" "$cost")
  echo "run $run: $seconds s, $rate events/s, $cpu µs of the workers' CPU per event"
  rates+=("$rate")
  cpus+=("$cpu")
done
echo
echo "events: $((per * WORKERS)) order.placed, $WORKERS workers each reading its own file, store $STORE_URL (a new schema a run)"
echo "ingest, median: $(printf '%s\n' "${rates[@]}" | median) events/s, $(printf '%s\n' "${cpus[@]}" | median) µs of the workers' CPU per event"
