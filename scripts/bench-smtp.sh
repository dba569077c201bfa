#!/usr/bin/env bash
# SMTP throughput: emails per second that aftercare hands to Postfix's
# smtp-sink, against Postfix's own load generator smtp-source sending the
# same message (a real order confirmation, same size), the same count, with
# the same concurrency, to the same sink, in one run. Medians of RUNS runs.
#
#   scripts/bench-smtp.sh            # N=5000 SESSIONS=4 RUNS=3
#   N=20000 SESSIONS=8 scripts/bench-smtp.sh
#
# aftercare's figure is end to end: reading the events, the SQLite store,
# rendering, MIME building and SMTP. smtp-source only sends.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-5000}
SESSIONS=${SESSIONS:-4}
RUNS=${RUNS:-3}

# BENCH_BIN=path runs that binary instead (to compare two builds).
if [ -z "${BENCH_BIN:-}" ]; then
  cargo build --release --quiet
fi
bin=${BENCH_BIN:-target/release/aftercare}
work=$(mktemp -d)
sink_pid=
cleanup() {
  [ -n "$sink_pid" ] && kill "$sink_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
user=()
[ "$(id -u)" -eq 0 ] && user=(-u nobody)
smtp-sink "${user[@]}" "127.0.0.1:$port" 256 &
sink_pid=$!
sleep 0.5

# N customers, one order each, every email due (2024).
python3 - "$N" > "$work/events.jsonl" <<'PY'
import json, sys
for i in range(int(sys.argv[1])):
    print(json.dumps({
        "event_id": f"bench-{i}", "type": "order.placed",
        "occurred_at": "2024-01-01T10:00:00Z",
        "customer": {"id": f"c-{i}", "email": f"customer{i}@example.com",
                     "name": f"Customer {i}", "locale": ["en", "hy", "am"][i % 3]},
        "order": {"id": f"o-{i}", "total": "49.75", "currency": "EUR", "items": [
            {"sku": f"SKU-{k}", "name": f"Item {k}", "quantity": 1, "unit_price": "9.95"}
            for k in range(5)]},
    }))
PY

# One journey: each event makes exactly one email. The events are from
# 2024: replayed on their own clock, or they would all be before go-live.
config() {
  cat <<TOML
data_dir = "$work/data-$1"
[journeys]
clock = "events"
[mailer]
kind = "$2"
[mailer.smtp]
host = "127.0.0.1"
port = $port
tls = "none"
pool_size = $SESSIONS
[sender.domains]
concurrency = $SESSIONS
[[journey]]
template = "order_confirmation"
on = "order.placed"
class = "transactional"
TOML
}

# The message smtp-source sends: one of ours, as built.
config sample eml > "$work/sample.toml"
head -1 "$work/events.jsonl" > "$work/one.jsonl"
RUST_LOG=warn "$bin" --config "$work/sample.toml" run --input "$work/one.jsonl" > /dev/null
sample=$(ls "$work"/data-sample/outbox/*.eml)
size=$(wc -c < "$sample")

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
seconds() { python3 -c 'import sys, time; t = time.monotonic(); import subprocess; subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); print(f"{time.monotonic() - t:.3f}")' "$@"; }

ours=()
theirs=()
for run in $(seq "$RUNS"); do
  config "$run" smtp > "$work/run-$run.toml"
  ours+=("$(RUST_LOG=warn seconds "$bin" --config "$work/run-$run.toml" run --input "$work/events.jsonl")")
  theirs+=("$(seconds smtp-source -d -s "$SESSIONS" -m "$N" -F "$sample" "127.0.0.1:$port")")
done
ours_s=$(printf '%s\n' "${ours[@]}" | median)
theirs_s=$(printf '%s\n' "${theirs[@]}" | median)
python3 - "$N" "$SESSIONS" "$size" "$ours_s" "$theirs_s" "${ours[*]}" "${theirs[*]}" <<'PY'
import sys
n, sessions, size = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
ours, theirs = float(sys.argv[4]), float(sys.argv[5])
print(f"messages: {n}, concurrency: {sessions}, message size: {size} bytes")
print(f"aftercare (end to end):  {n / ours:8.0f} emails/s  (median {ours:.2f} s; runs {sys.argv[6]})")
print(f"smtp-source (send only): {n / theirs:8.0f} emails/s  (median {theirs:.2f} s; runs {sys.argv[7]})")
print(f"ratio: {theirs / ours:.0%} of smtp-source")
PY
