#!/usr/bin/env bash
# Memory: the worker's resident memory with CUSTOMERS customers tracked in
# the durable SQLite store, then over a SOAK_SECONDS soak at a steady load.
#
#   scripts/bench-memory.sh     # CUSTOMERS=1000000 SOAK_SECONDS=600 RATE=200
#
# 1. `aftercare run --input` on CUSTOMERS `order.placed` events (new
#    customers, 5 items, dated 2030: nothing falls due, every customer gets
#    a journey and four pending emails); peak RSS from /usr/bin/time, and
#    RSS sampled every 5 s.
# 2. On that store, `aftercare run --input -` fed RATE live events a second
#    (orders of new and known customers, their dispatches and deliveries,
#    dated now: confirmations and shipping updates rendered and written as
#    .eml files) for SOAK_SECONDS; RSS sampled every 10 s.
set -euo pipefail
cd "$(dirname "$0")/.."
CUSTOMERS=${CUSTOMERS:-1000000}
SOAK_SECONDS=${SOAK_SECONDS:-600}
RATE=${RATE:-200}

cargo build --release --quiet --bin aftercare
bin=$PWD/target/release/aftercare
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
cat > "$work/aftercare.toml" <<TOML
data_dir = "$work/data"
templates_dir = "$PWD/templates"
[source]
batch_size = 500
TOML

python3 - "$CUSTOMERS" > "$work/customers.jsonl" <<'PY'
import json, sys
items = [{"sku": f"SKU-{k}", "name": f"Item {k}", "quantity": 1, "unit_price": "9.95"} for k in range(5)]
for i in range(int(sys.argv[1])):
    print(json.dumps({
        "event_id": f"mem-{i}", "type": "order.placed", "occurred_at": "2030-01-01T10:00:00Z",
        "customer": {"id": f"c-{i}", "email": f"customer{i}@example.com", "name": f"Customer {i}",
                     "locale": ["en", "hy", "am"][i % 3]},
        "order": {"id": f"o-{i}", "total": "49.75", "currency": "EUR", "items": items},
    }, separators=(",", ":")))
PY

rss() { awk '/VmRSS/ {print int($2 / 1024)}' "/proc/$1/status" 2>/dev/null || echo 0; }

echo "== $CUSTOMERS customers into the store"
start=$(date +%s)
RUST_LOG=warn /usr/bin/time -f "peak RSS %M kB, %e s" -o "$work/time.txt" \
  "$bin" --config "$work/aftercare.toml" run --input "$work/customers.jsonl" > "$work/ingest.txt" &
runner=$!
sleep 1
samples=()
while kill -0 "$runner" 2>/dev/null; do
  pid=$(pgrep -n -f "$work/aftercare.toml run --input $work/customers.jsonl" || true)
  [ -n "$pid" ] && samples+=("$(rss "$pid")")
  sleep 5
done
wait "$runner"
head -1 "$work/ingest.txt"
cat "$work/time.txt"
echo "RSS every 5 s (MB): ${samples[*]}"
echo "store: $(du -m "$work/data/aftercare.db" | cut -f1) MB, $(( $(date +%s) - start )) s"

echo "== soak: $RATE events/s for $SOAK_SECONDS s on that store"
mkfifo "$work/feed"
RUST_LOG=warn "$bin" --config "$work/aftercare.toml" run --input - < "$work/feed" > "$work/soak.txt" &
worker=$!
python3 - "$RATE" "$SOAK_SECONDS" "$CUSTOMERS" > "$work/feed" <<'PY' &
import datetime, json, sys, time
rate, seconds, known = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
items = [{"sku": "TEA-01", "name": "Green tea", "quantity": 2, "unit_price": "9.95"}]
end = time.monotonic() + seconds
n = 0
while time.monotonic() < end:
    tick = time.monotonic()
    for _ in range(rate // 4):
        n += 1
        now = datetime.datetime.now(datetime.timezone.utc).isoformat().replace("+00:00", "Z")
        # A new customer every other order, else a known one.
        c = f"soak-{n}" if n % 2 else f"c-{(n * 7919) % known}"
        customer = {"id": c, "email": f"{c}@example.com", "name": "Soak", "locale": "en"}
        o = f"so-{n}"
        for kind, extra in (("order.placed", {"order": {"id": o, "total": "19.90", "currency": "EUR", "items": items}}),
                            ("shipment.dispatched", {"order": {"id": o}, "shipment": {"id": f"ss-{n}", "carrier": "DHL", "tracking_number": f"S{n}"}}),
                            ("shipment.delivered", {"order": {"id": o}, "shipment": {"id": f"ss-{n}"}})):
            print(json.dumps({"event_id": f"{kind}-{n}", "type": kind, "occurred_at": now,
                              "customer": customer, **extra}, separators=(",", ":")))
    sys.stdout.flush()
    time.sleep(max(0.0, 0.75 - (time.monotonic() - tick)))
PY
feeder=$!
soak=()
while kill -0 "$feeder" 2>/dev/null; do
  soak+=("$(rss "$worker")")
  sleep 10
done
wait "$worker" || true
head -2 "$work/soak.txt"
echo "outbox: $(ls "$work/data/outbox" | wc -l) emails"
echo "RSS every 10 s of the soak (MB): ${soak[*]}"
