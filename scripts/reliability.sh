#!/usr/bin/env bash
# The long reliability suite: every scenario of the short one (part of
# scripts/test.sh), with more customers, kills and faults, RUNS times (the
# clock jump and the replay once: they are deterministic). Each scenario's
# checker (tests/integration/common/checker.rs) compares what the SMTP
# sinks received with the oracle plan (`simulate --with-ids`) by
# Message-ID, fails on anything lost, unexpected or duplicated outside the
# reply gap, and writes a row of figures; the rows go to RELIABILITY.md.
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
  if ! RELIABILITY_LONG=1 RELIABILITY_FIGURES="$figures" cargo test --quiet --test integration "$@" -- --nocapture --test-threads 1; then
    failed+=("--test integration $*")
  fi
}

for run in $(seq "$RUNS"); do
  RELIABILITY_SEED=$((20261125 + run)) long reliability::kills_and_smtp_faults_lose_nothing
done
RELIABILITY_SEED=20261125 long reliability::poison_events_among_kills_and_smtp_faults
for run in $(seq "$RUNS"); do
  long cluster::three_workers_killed_in_turn
  long cluster::broker_outages_and_a_worker_joining_and_leaving
  long reliability::webhooks_to_two_workers_killed_in_turn
done
long kafka::a_fresh_group_replaying_from_offset_zero
long reliability::after_a_long_downtime
long catch_up::a_worker_stopped_two_days

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

- **kills + SMTP faults** (`tests/integration/reliability.rs`): a generated log
  of orders, shipments, deliveries, a cancellation and a return per customer,
  from a file, while the worker is killed with SIGKILL at random moments
  (100 ms to 1 s into each run). Every other run the SMTP side fails, in
  turn: down (connection refused); a server that accepts connections and
  never speaks; 450 to every RCPT; 421 to MAIL FROM; the reply to the
  final dot 5 s late (after the client's 2 s timeout); a hang-up after the
  final dot; 500 to every RCPT. Then the worker runs to the end.
- **poison events + kills + SMTP faults** (`tests/integration/reliability.rs`):
  the same, with a hostile event every 20 lines of the log (amounts and dates
  that overflowed the journey, control characters, a 100 KB type, a reused
  event id, and the two ids that once made one key): each invalid one must
  end in the dead-letter file and nowhere else, and the key-collision pair
  must both be delivered.
- **3 workers on PostgreSQL, killed in turn** (`tests/integration/cluster.rs`):
  live events produced to tansu as they happen, three workers in one consumer
  group sharing a PostgreSQL store, one killed with SIGKILL in turn and
  started again, each next kill 2 s after the restarted worker is back in
  the group.
- **webhooks to 2 workers on PostgreSQL, killed in turn**
  (`tests/integration/reliability.rs`): live events posted as signed webhooks (a
  shop's own HMAC endpoint) when they happen, to one worker or the other
  as a load balancer would, while each in turn is killed with SIGKILL
  every 1 to 3 s (milliseconds after its last 200) and started again. A
  delivery without a 200 is sent again to the other worker, as Shopify
  retries. Each delivery must be stored once and applied once, and its
  emails sent once.
- **broker outages and restarts, a worker joining and leaving**
  (`tests/integration/cluster.rs`): live events; the broker stopped for 4 s, or
  restarted at once, every two rounds of three, while a second worker
  joins and leaves (SIGTERM) every round. Faults counts the joins and the
  outages.
- **replay from offset 0, a fresh group** (`tests/integration/kafka.rs`): the
  whole log read by one group and sent, then read again from offset 0 by a new
  group on the same store: nothing may be sent twice.
- **clock jump (100 days)** (`tests/integration/reliability.rs`): a worker run
  under libfaketime 100 days in the past, stopped, and started again at today's
  date with the downtime's events waiting: overdue emails go out once, a
  win-back cancelled by an order of the downtime stays cancelled, a second
  start sends nothing. On the events' clock (`journeys.clock = "events"`):
  what is checked is event-time order, not lateness.
- **worker stopped 2 days** (`tests/integration/catch_up.rs`): on the machine's
  clock, a worker run under libfaketime two days in the past, started again now
  with the stop's events waiting, then 21 hours later: what is still
  useful goes out once, what is older than its rule's `expires_after`
  expires (each checked to be as late as it says), and no customer gets
  two marketing emails within the frequency cap.

The columns:

- *lost*: planned, never received, and not withdrawn: must be 0;
- *withdrawn*: a marketing email whose delivery failed during a fault and
  that, checked again when retried, no longer goes out: a later event (a
  new order) took its reason away, or the frequency cap now holds it past
  its max delay. Counted apart; each ends `cancelled` or `suppressed` with
  the reason;
- *expired*: planned, never received, because it would have gone out later
  than its rule's `expires_after` (`suppressed`, `expired: ...`): right
  only where the worker was stopped that long, which the scenario checks
  against each email's due time;
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

| scenario | suite | seed | customers | kills | faults | expected | received | lost | withdrawn | expired | refused | duplicated | time |
|---|---|---|---|---|---|---|---|---|---|---|---|---|---|
MD
  cat "$figures"
  echo
  for f in "${failed[@]}"; do
    echo "**Failed:** \`cargo test $f\` (its row above, if it got that far, has the figures)."
    echo
  done
  cat <<'MD'
## Hostile inputs

What a shop's bug or an attacker was tried with, on loopback against the
worker, what each did before it was fixed, and what it does now. Each line
is pinned by the test named; the poison events also run, mixed into the
kills + SMTP faults log, in the scenario above.

| input | before | now | test |
|---|---|---|---|
| an item `unit_price` of `79228162514264337593543950335`, quantity 2 | the line total overflowed: a panic, exit 1 at every start, the position never past it | refused at the door: `items[].unit_price` larger than 1,000,000,000,000 | `tests/integration/hostile.rs`, `event::tests` |
| two orders of one customer with totals of `7.9e28` | the lifetime spend overflowed: the same crash loop | refused: `order.total`; sums saturate besides, for states stored before | `tests/integration/hostile.rs` |
| `occurred_at` of `9999-12-30T00:00:00Z` | adding a delay overflowed: the same crash loop | refused: `occurred_at` not between 1970 and 2199; time arithmetic saturates besides | `tests/integration/hostile.rs` |
| the same three through `simulate` | a panic, exit 101 | the plan, exit 65 | `tests/integration/hostile.rs` |
| two customers with `5e28` each, in the store, through `report` | exit 101 | revenue saturates; a lifetime value whose product overflows is left out | `report::tests` |
| a bug in a journey step or in an email's checks (made to panic in tests) | the worker stopped on that event or email at every start | the event is dead-lettered (`could not be applied (internal error: ...)`) and the next applied; the email ends `suppressed` with `internal error: ...`; a panic in rendering fails that email | `pipeline::tests` |
| customer `a/order_confirmation/o` with order `1`, customer `a` with order `o/order_confirmation/1` | one key: the second confirmation dropped without a trace | keys from escaped parts: both confirmations sent, distinct Message-IDs; stored keys migrated | `tests/integration/hostile.rs`, `store::*::tests` |
| CR/LF, ESC, DEL or NUL in an id, SKU, item name, time zone or `type` | printed raw: a forged log line, a cleared screen | refused at the door with the field and the character's code point | `tests/integration/hostile.rs`, `event::tests` |
| an invalid address | logged in full at warn | the reason says what is wrong, never the address | `tests/integration/hostile.rs`, `event::tests` |
| `RUST_LOG=debug` | handlebars logged the customer's name from the render data | handlebars' debug logs stay off | `tests/integration/hostile.rs` |
| a reused event id with another body | dropped as a duplicate, logged at debug | dead-lettered with both digests; a redelivery laid out otherwise is still a duplicate | `pipeline::tests` |
| a dispatch or a cancellation of an order never seen | sent `shipping_update` or `order_cancelled` | waits up to an hour for the order, then `suppressed` with `order ... never seen` | `pipeline::tests` |
| negative totals, prices and refunds; a refund of 0 | accepted and rendered | refused | `event::tests` |
| `"a b"@example.com`, `a@[127.0.0.1]`, `anna@localhost`, a non-ASCII local part | passed decoding, then `failed` eight times | refused at the door | `event::tests` |
| an internationalized domain (`anna@bücher.example`) | sent as raw UTF-8 without SMTPUTF8 | kept in its ASCII form, `xn--bcher-kva.example` | `event::tests` |
| 60 idle, half-sent and dripping HTTP connections, with 64 file descriptors | `/healthz` timed out; every `.eml` delivery failed with "Too many open files" until transactional emails ended `failed` | connections limited to a quarter of the descriptors; at the limit the oldest one without a whole request head is closed; heads cut at `http.header_timeout`, connections at `http.request_timeout`: `/healthz` answered in under 2 s throughout (1.5 ms at worst), all 40 emails sent | `tests/integration/slow_clients.rs` |
| an unsubscribe POST without `List-Unsubscribe=One-Click`; a body over 4 KiB; 45 forged tokens | unsubscribed; read; 45 warn lines | 400; 413; one warn line a minute with the counts, never the token | `tests/integration/unsubscribe.rs` |
| a line of 50 MB (a 50 MB item name), and one of 300 MB, from a file or standard input | 1.15 GB of memory, a 315 MB SQLite file and a 109 MB email for 50 MB; a few hundred MB ran the worker out of memory | at most `source.max_event_bytes` (1 MiB) of a line is read, the rest skipped: dead-lettered as a 1.3 KB record with its size, line and first KiB; both neighbours sent; 61 MB peak for the 300 MB line (debug build) | `tests/integration/cli.rs`, `source::file::tests` |
| 600 lines of 1,000,000 bytes each | 834 MB in one batch of lines each under the limit | a batch ends at about 16 MiB of events (a Kafka partition pauses at 16 MiB queued): 93 MB peak, all dead-lettered | `source::file::tests` |
| a 600 KB Kafka message with a long `type` | its dead letter (~1.2 MB) refused by the producer (`MessageSizeTooLarge`), the batch retried forever, the 600 KB line logged at warn each time: the partition stalled | the reason quotes 40 characters; the record is fitted under the producer's `message.max.bytes` (taken from the consumer's); the valid event behind it sent | `tests/integration/kafka.rs` |
| an invalid Kafka message of 999,900 bytes | stalled the same way, even with reasons bounded | its payload cut to fit, with an `aftercare-event-bytes` header; a record still refused for its size is sent once more without payload | `tests/integration/kafka.rs`, `source::dead_letter::tests` |
| a 600 KB top-level JSON string | the parser's error quoted it whole | 39 bytes of it | `event::tests` |
| a store, its WAL, the outbox and the dead-letter file under umask 022 | created 0644 (0755 folders): anyone who could read the store could forge unsubscribe links with its key | files 0600, folders 0700, whatever the umask; a store readable by others made private at open | `tests/integration/hardening.rs` |
| one unsubscribe secret, no key id in tokens | a secret could not be rotated without breaking every link sent | tokens carry a key id; `unsubscribe.secrets` (newest first) or `secrets_file`: the newest signs, all are accepted; a removed key's links get 403; a secret of 16 spaces (or `abab...`) refused | `tests/integration/unsubscribe.rs`, `tests/integration/hardening.rs` |
| a `shop.unsubscribe_url` with a query, a fragment, `<>` or `http://`; durations of `1000000y`; a TOML error on a secret's line | `check` said ok, then every marketing email failed, or `simulate` panicked; the error echoed the line with the secret | `check`, `run` and `simulate` exit 64 naming the key; the syntax error gives file, line and column, not the line | `tests/integration/hardening.rs` |

MD
  echo "Machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); $(date -u +%Y-%m-%d)."
} > RELIABILITY.md
echo "Figures written to RELIABILITY.md"
if [ ${#failed[@]} -gt 0 ]; then
  echo "failed: ${failed[*]}" >&2
  exit 1
fi
