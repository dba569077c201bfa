#!/usr/bin/env bash
# The long reliability suite: every scenario of the short one (part of
# scripts/test.sh), with more customers, kills and faults, RUNS times (the
# clock jump and the replay once: they are deterministic). Each scenario's
# checker (tests/common/checker.rs) compares what the SMTP sinks received
# with the oracle plan (`simulate --with-ids`) by Message-ID, fails on
# anything lost, unexpected or duplicated outside the reply gap, and writes
# a row of figures; the rows go to RELIABILITY.md.
#
#   scripts/reliability.sh            # RUNS=3: about 25 minutes on 2 cores
#   RUNS=1 scripts/reliability.sh
#
# Needs what scripts/test.sh installs (smtp-sink, faketime, tansu) and the
# PostgreSQL server of the cluster tests.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
figures=$(mktemp)
trap 'rm -f "$figures"' EXIT

# A failed scenario does not stop the others: it is named under the table
# and the script exits 1.
failed=()
long() {
  echo "==> $*"
  if ! RELIABILITY_LONG=1 RELIABILITY_FIGURES="$figures" cargo test --quiet "$@" -- --nocapture --test-threads 1; then
    failed+=("$*")
  fi
}

for run in $(seq "$RUNS"); do
  RELIABILITY_SEED=$((20261125 + run)) long --test reliability kills_and_smtp_faults
done
for run in $(seq "$RUNS"); do
  long --test cluster three_workers_killed_in_turn
  long --test cluster broker_outages_and_a_worker_joining_and_leaving
done
long --test kafka a_fresh_group_replaying_from_offset_zero
long --test reliability after_a_long_downtime

{
  cat <<'MD'
# Reliability

What `scripts/reliability.sh` measured: the long reliability suite, the
scenarios of the short one (part of the test command) with more customers,
kills and faults. Each runs the worker as a process against real servers on
loopback (Postfix's `smtp-sink`, the tansu Kafka-protocol broker,
PostgreSQL), and its checker compares what the SMTP sinks received with
the oracle, the plan of `simulate --with-ids` for the same event log, by
Message-ID.

The scenarios:

- **kills + SMTP faults** (`tests/reliability.rs`): a generated log of
  orders, shipments, deliveries, a cancellation and a return per customer,
  from a file, while the worker is killed with SIGKILL at random moments
  (100 ms to 1 s into each run). Every other run the SMTP side fails, in
  turn: down (connection refused); a server that accepts connections and
  never speaks; 450 to every RCPT; 421 to MAIL FROM; the reply to the
  final dot 5 s late (after the client's 2 s timeout); a hang-up after the
  final dot; 500 to every RCPT. Then the worker runs to the end.
- **3 workers on PostgreSQL, killed in turn** (`tests/cluster.rs`): live
  events produced to tansu as they happen, three workers in one consumer
  group sharing a PostgreSQL store, one killed with SIGKILL in turn and
  started again, each next kill 2 s after the restarted worker is back in
  the group.
- **broker outages and restarts, a worker joining and leaving**
  (`tests/cluster.rs`): live events; the broker stopped for 4 s, or
  restarted at once, every two rounds of three, while a second worker
  joins and leaves (SIGTERM) every round. Faults counts the joins and the
  outages.
- **replay from offset 0, a fresh group** (`tests/kafka.rs`): the whole log
  read by one group and sent, then read again from offset 0 by a new group
  on the same store: nothing may be sent twice.
- **clock jump (100 days)** (`tests/reliability.rs`): a worker run under
  libfaketime 100 days in the past, stopped, and started again at today's
  date with the downtime's events waiting: overdue emails go out once, a
  win-back cancelled by an order of the downtime stays cancelled, a second
  start sends nothing.

The columns:

- *lost*: planned, never received, and not withdrawn: must be 0;
- *withdrawn*: a marketing email whose delivery failed during a fault and
  that, checked again when retried, no longer goes out: a later event (a
  new order) took its reason away, or the frequency cap now holds it past
  its max delay. Counted apart; each ends `cancelled` or `suppressed` with
  the reason;
- *refused*: planned, never received, because the server refused it for
  good (the 500 fault): it ends `failed` with the reply, as it should;
  every `failed` email must have been refused by the server (a 5xx);
- *duplicated*: received more than once, each with the same Message-ID.
  Every duplicate must be in the gap between the server taking a message
  and the worker knowing it: a kill within 5 s after the earlier copy was
  written, or an earlier copy the server never acknowledged (the slow and
  the hang-up faults). One outside the gap fails the suite, and so do more
  than the deliveries in flight at the kills plus the unacknowledged ones.
  A scenario without kills or unacknowledged messages must have none.

| scenario | suite | seed | customers | kills | faults | expected | received | lost | withdrawn | refused | duplicated | time |
|---|---|---|---|---|---|---|---|---|---|---|---|---|
MD
  cat "$figures"
  echo
  for f in "${failed[@]}"; do
    echo "**Failed:** \`cargo test $f\` (its row above, if it got that far, has the figures)."
    echo
  done
  echo "Machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); $(date -u +%Y-%m-%d)."
} > RELIABILITY.md
echo "Figures written to RELIABILITY.md"
if [ ${#failed[@]} -gt 0 ]; then
  echo "failed: ${failed[*]}" >&2
  exit 1
fi
