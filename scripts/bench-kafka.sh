#!/usr/bin/env bash
# Kafka ingest: events per second from the broker into the durable SQLite
# store, against a bare rdkafka consumer (a loop that only counts messages)
# reading the same topic from the same broker, in one run. Medians of RUNS.
#
#   scripts/bench-kafka.sh            # N=200000 RUNS=3
#   BENCH_BIN=path/to/aftercare scripts/bench-kafka.sh   # another build
#   STORE_URL=postgres://postgres@127.0.0.1:5432/test WORKERS=3 scripts/bench-kafka.sh
#       # the PostgreSQL store (a new schema a run), three workers in the group
#
# tansu (in memory, on a loopback port) holds N `order.placed` events (new
# customers, 5 items, dated 2030: nothing falls due, so this is ingest
# alone) on `orders`, 3 partitions. Each run, the bare consumer
# (examples/kafka_load.rs) and then `aftercare run --once` read them with a
# new group from offset 0; aftercare's time is the whole process (start,
# group join, ingest, exit), the bare consumer's is from subscribing to its
# last message.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-200000}
RUNS=${RUNS:-3}
STORE_URL=${STORE_URL:-}
WORKERS=${WORKERS:-1}

cargo build --release --quiet --bin aftercare --example kafka_load
target=${CARGO_TARGET_DIR:-target}
bin=${BENCH_BIN:-$target/release/aftercare}
load=$target/release/examples/kafka_load
tansu=$(command -v tansu || echo "${CARGO_HOME:-$HOME/.cargo}/bin/tansu")
work=$(mktemp -d)
tansu_pid=
cleanup() {
  [ -n "$tansu_pid" ] && kill "$tansu_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
brokers="127.0.0.1:$port"
RUST_LOG=warn "$tansu" broker --listener-url "tcp://$brokers" --advertised-listener-url "tcp://$brokers" \
  --storage-engine memory://tansu/ > "$work/tansu.log" 2>&1 &
tansu_pid=$!
for _ in $(seq 100); do
  python3 -c "import socket; socket.create_connection(('127.0.0.1', $port), 1)" 2>/dev/null && break
  sleep 0.1
done
# Topics: the three the worker reads (3 partitions each).
for topic in orders shipments returns aftercare.dead-letter; do
  "$tansu" topic create "$topic" --partitions 3 --broker "tcp://$brokers" > /dev/null 2>&1 || true
done
"$load" produce "$brokers" orders "$N"

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
bare=()
ours=()
cpus=()
writes=()
for run in $(seq "$RUNS"); do
  result=$("$load" count "$brokers" orders "$N")
  rate=$(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["per_s_after_first"])' "$result")
  echo "run $run: bare consumer $result"
  bare+=("$rate")

  # One store for the workers of a run: PostgreSQL (a new schema), or one
  # SQLite file they share.
  if [ -n "$STORE_URL" ]; then
    store_url="$STORE_URL?schema=bench_kafka_$$_$run"
  else
    store_url="sqlite:$work/store-$run.db"
  fi
  for w in $(seq "$WORKERS"); do
    cat > "$work/aftercare-$run-$w.toml" <<TOML
data_dir = "$work/data-$run-$w"
worker_id = "bench-$w"
[store]
url = "$store_url"
[source]
kind = "kafka"
batch_size = 1000
[source.kafka]
brokers = "$brokers"
group_id = "aftercare-bench-$run"
TOML
  done
  # The workers of a run together: measure.py counts what all of them used.
  cost=$(RUST_LOG=warn scripts/measure.py bash -c 'set -e
    bin=$1 work=$2 run=$3 workers=$4
    pids=()
    for w in $(seq "$workers"); do
      "$bin" --config "$work/aftercare-$run-$w.toml" run --once >"$work/summary-$run-$w" 2>&1 &
      pids+=($!)
    done
    for pid in "${pids[@]}"; do wait "$pid"; done' _ "$bin" "$work" "$run" "$WORKERS")
  cat "$work"/summary-$run-* > "$work/summary-$run"
  read_line=$(grep -m1 '^Read ' "$work/summary-$run" || true)
  read -r rate seconds cpu written < <(python3 -c '
import json, sys
n, cost = int(sys.argv[1]), json.loads(sys.argv[2])
s, cpu, written = cost["seconds"], cost["cpu_seconds"], cost["written_bytes"]
print(f"{n / s:.0f} {s:.3f} {1e6 * cpu / n:.0f} {written / n:.0f}")
' "$N" "$cost")
  echo "run $run: aftercare $seconds s, $rate events/s, $cpu µs CPU and $written bytes written per event ($read_line)"
  ours+=("$rate")
  cpus+=("$cpu")
  writes+=("$written")
done

b=$(printf '%s\n' "${bare[@]}" | median)
o=$(printf '%s\n' "${ours[@]}" | median)
echo
echo "events: $N order.placed on orders (3 partitions), tansu in memory; $WORKERS worker(s), store ${STORE_URL:-SQLite}"
echo "bare rdkafka consumer, median: $b messages/s"
echo "aftercare ingest, median: $o events/s ($(python3 -c "print(f'{100 * $o / $b:.0f}')") % of bare)"
echo "aftercare per event, medians: $(printf '%s\n' "${cpus[@]}" | median) µs CPU, $(printf '%s\n' "${writes[@]}" | median) bytes written"
