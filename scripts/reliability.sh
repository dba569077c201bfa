#!/usr/bin/env bash
# The long reliability suite: 2,000 customers, 36 SIGKILLs at random
# moments under load, an SMTP outage every fourth round, then the checker
# (tests/reliability.rs) compares what the SMTP sinks received with the
# oracle plan by Message-ID. RUNS runs with different seeds; the figures go
# to RELIABILITY.md. The short suite is part of scripts/test.sh.
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
ms to 1 s into each run) and the SMTP server is stopped during every
fourth run; then the worker runs to the end. The checker compares what the
sinks received with `simulate --with-ids` (the oracle) by Message-ID:

- *lost*: planned, never received, and not withdrawn: must be 0;
- *withdrawn*: a marketing email whose delivery failed during an outage
  and that was cancelled when retried, because a later event (a new order)
  took its reason away; counted apart, and ended `cancelled` in the store;
- *duplicated*: received more than once. These come from the gap between
  the server accepting a message and the worker recording it (a SIGKILL
  there); each carries the same Message-ID. The suite fails if there are
  more than could be in flight at the kills (kills x pool size: 144 here).
  It bounds them; it does not prove each one individually came from the
  gap (the worker cannot record a delivery it was killed before hearing
  about).

| suite | seed | customers | kills | outages | expected | received | lost | withdrawn | duplicated | time |
|---|---|---|---|---|---|---|---|---|---|---|
MD
  cat "$figures"
  echo
  echo "Machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); $(date -u +%Y-%m-%d)."
} > RELIABILITY.md
echo "Figures written to RELIABILITY.md"
