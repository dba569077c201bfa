#!/usr/bin/env bash
# The long reliability suite: 2,000 customers, 36 SIGKILLs at random
# moments under load, the SMTP side failing in another way every other
# round, then the checker (tests/common/checker.rs) compares what the SMTP
# sinks received with the oracle plan by Message-ID. RUNS runs with
# different seeds; the figures go to RELIABILITY.md. The short suite is
# part of scripts/test.sh.
#
#   scripts/reliability.sh            # RUNS=3
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
figures=$(mktemp)
trap 'rm -f "$figures"' EXIT
for run in $(seq "$RUNS"); do
  RELIABILITY_LONG=1 RELIABILITY_SEED=$((20261125 + run)) RELIABILITY_FIGURES="$figures" \
    cargo test --quiet --test reliability -- --nocapture
done
{
  cat <<'MD'
# Reliability

What `scripts/reliability.sh` measured (the long suite of
`tests/reliability.rs`): a generated log of orders, shipments, deliveries,
a cancellation and a return per customer, run through SMTP to Postfix's
`smtp-sink` while the worker is killed with SIGKILL at random moments (100
ms to 1 s into each run). Every other run the SMTP side fails, in turn:
down (connection refused); a server that accepts connections and never
speaks; 450 to every RCPT; 421 to MAIL FROM; the reply to the final dot
5 s late (after the client's 2 s timeout); a hang-up after the final dot;
500 to every RCPT.
Then the worker runs to the end. The checker compares what the sinks
received with `simulate --with-ids` (the oracle) by Message-ID:

- *lost*: planned, never received, and not withdrawn: must be 0;
- *withdrawn*: a marketing email whose delivery failed during a fault and
  that, checked again when retried, no longer goes out: a later event (a
  new order) took its reason away, or the frequency cap now holds it past
  its max delay. The log is replayed at full speed, so a retry happens
  after every later event is in: in live use far fewer are withdrawn.
  Counted apart; each ends `cancelled` or `suppressed` with the reason;
- *refused*: planned, never received, because the server refused it for
  good (the 500 fault): it ends `failed` with the reply, as it should;
  every `failed` email must have been refused by the server (a 5xx);
- *duplicated*: received more than once, each with the same Message-ID.
  Every duplicate must be in the gap between the server taking a message
  and the worker knowing it: a kill within 5 s after the earlier copy was
  written, or an earlier copy the server never acknowledged (the slow and
  the hang-up faults). One outside the gap fails the suite, and so do more
  than the deliveries in flight at the kills plus the unacknowledged ones.

| suite | seed | customers | kills | faults | expected | received | lost | withdrawn | refused | duplicated | time |
|---|---|---|---|---|---|---|---|---|---|---|---|
MD
  cat "$figures"
  echo
  echo "Machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); $(date -u +%Y-%m-%d)."
} > RELIABILITY.md
echo "Figures written to RELIABILITY.md"
