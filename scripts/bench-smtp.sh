#!/usr/bin/env bash
# SMTP throughput: emails per second that aftercare hands to Postfix's
# smtp-sink, against Postfix's own load generator smtp-source sending the
# same message (a real order confirmation, same size), the same count, with
# the same concurrency, to the same sink, in one run. Medians of RUNS runs.
#
#   scripts/bench-smtp.sh            # N=5000 SESSIONS=4 RUNS=3
#   N=20000 SESSIONS=8 scripts/bench-smtp.sh
#   STORE_URL=postgres://postgres@127.0.0.1:5432/test scripts/bench-smtp.sh
#                                    # the PostgreSQL store (a new schema a run)
#
# aftercare's figure is end to end: reading the events, the SQLite store,
# rendering, MIME building and SMTP. smtp-source only sends. A third
# figure, aftercare's SMTP client alone (examples/smtp_load.rs), says how
# much of the gap is the client's: it sends each message command by
# command (MAIL, RCPT, DATA, the message: four round trips), where
# smtp-source pipelines them.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-5000}
SESSIONS=${SESSIONS:-4}
RUNS=${RUNS:-3}
STORE_URL=${STORE_URL:-}

# BENCH_BIN=path runs that binary instead (to compare two builds).
if [ -z "${BENCH_BIN:-}" ]; then
  cargo build --release --quiet
fi
# aftercare's SMTP client alone (examples/smtp_load.rs): the same mailer
# code with no store and no rendering, a third figure to set beside the two.
cargo build --release --quiet --example smtp_load
target=${CARGO_TARGET_DIR:-target}
bin=${BENCH_BIN:-$target/release/aftercare}
load=$target/release/examples/smtp_load
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

# Each event makes exactly one email sent, its order confirmation. The
# embedded journeys stay on (as every figure in BENCHMARKS.md had them):
# each event also schedules three marketing emails, decided `suppressed`
# (no consent), never sent. The events are from 2024: replayed on their
# own clock, or they would all be before go-live.
config() {
  store=""
  if [ -n "$STORE_URL" ] && [ "$2" = smtp ]; then
    store="url = \"$STORE_URL?schema=bench_smtp_$$_$1\""
  fi
  cat <<TOML
data_dir = "$work/data-$1"
[store]
$store
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

# One JSON line per run: wall time, CPU time, bytes written (measure.py).
ours=()
theirs=()
client=()
for run in $(seq "$RUNS"); do
  config "$run" smtp > "$work/run-$run.toml"
  ours+=("$(RUST_LOG=warn scripts/measure.py "$bin" --config "$work/run-$run.toml" run --input "$work/events.jsonl" 2>/dev/null)")
  theirs+=("$(scripts/measure.py smtp-source -d -s "$SESSIONS" -m "$N" -F "$sample" "127.0.0.1:$port" 2>/dev/null)")
  client+=("$(scripts/measure.py "$load" "127.0.0.1:$port" "$N" "$SESSIONS" "$sample" 2>/dev/null)")
done
python3 - "$N" "$SESSIONS" "$size" "${#ours[@]}" "${ours[@]}" "${theirs[@]}" "${client[@]}" <<'PY'
import json, statistics, sys
n, sessions, size, runs = (int(a) for a in sys.argv[1:5])
ours = [json.loads(r) for r in sys.argv[5:5 + runs]]
theirs = [json.loads(r) for r in sys.argv[5 + runs:5 + 2 * runs]]
client = [json.loads(r) for r in sys.argv[5 + 2 * runs:]]
def med(rs, key): return statistics.median(r[key] for r in rs)
def times(rs): return ", ".join(f"{r['seconds']:.2f}" for r in rs)
o, t = med(ours, "seconds"), med(theirs, "seconds")
print(f"messages: {n}, concurrency: {sessions}, message size: {size} bytes")
print(f"aftercare (end to end):  {n / o:8.0f} emails/s  (median {o:.2f} s; runs {times(ours)})")
print(f"smtp-source (send only): {n / t:8.0f} emails/s  (median {t:.2f} s; runs {times(theirs)})")
c = med(client, "seconds")
print(f"SMTP client alone:       {n / c:8.0f} emails/s  (median {c:.2f} s; runs {times(client)}; "
      f"examples/smtp_load.rs: aftercare's mailer, no store, no rendering)")
print(f"ratio: {t / o:.0%} of smtp-source; the client alone {t / c:.0%} of it")
print(f"CPU per email (medians): aftercare {1e6 * med(ours, 'cpu_seconds') / n:.0f} µs, "
      f"smtp-source {1e6 * med(theirs, 'cpu_seconds') / n:.0f} µs")
print(f"written per email (aftercare, median): {med(ours, 'written_bytes') / n:,.0f} bytes")
PY
