#!/usr/bin/env bash
# Fuzzes the event decoder (`decode`), the journey machine on whole event
# logs (`journey`) and the presets' mappings on messages (`mapping`)
# with cargo-fuzz (libFuzzer, AddressSanitizer), each for
# FUZZ_SECONDS (default 20: the short run, part of scripts/test.sh).
#
#   scripts/fuzz.sh                     # short: 20 s per target
#   FUZZ_SECONDS=3600 scripts/fuzz.sh   # long, on demand
#   FUZZ_TARGETS=decode scripts/fuzz.sh # one target
#
# Needs the nightly toolchain (sanitizer flags); without one it says so and
# stops without failing. cargo-fuzz is installed from crates.io if missing.
# The build and the corpus are kept under ~/.cache/aftercare (the corpus
# grows from run to run, seeded with examples/events.jsonl and the hostile
# events of fuzz/seeds/, with fuzz/extremes.dict as a dictionary). A crash fails
# the run and leaves its input in fuzz/artifacts/<target>/; replay it with
# `cargo +nightly fuzz run <target> <file>`.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${FUZZ_SECONDS:-20}
targets=${FUZZ_TARGETS:-decode journey mapping}
cache=${AFTERCARE_CACHE:-$HOME/.cache/aftercare}

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  echo "==> fuzz: skipped, no nightly toolchain (rustup toolchain install nightly)"
  exit 0
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "==> Installing cargo-fuzz"
  cargo install cargo-fuzz --version 0.13.2 --locked
fi

for target in $targets; do
  corpus="$cache/fuzz-corpus/$target"
  mkdir -p "$corpus"
  # The example log as seeds: each event alone, and the whole log.
  n=0
  while IFS= read -r line; do
    n=$((n + 1))
    printf '%s\n' "$line" > "$corpus/example-$n"
  done < examples/events.jsonl
  cp examples/events.jsonl "$corpus/example-log"
  # Hostile events (extreme numbers and dates, ids that collided) as seeds,
  # and their values as a dictionary to splice anywhere.
  cp fuzz/seeds/hostile.jsonl "$corpus/hostile-log"
  # Every preset fixture's records, one a seed (the mapping target reads
  # a record line, headers and all).
  for records in tests/presets/*/records.jsonl; do
    preset=$(basename "$(dirname "$records")")
    n=0
    while IFS= read -r line; do
      n=$((n + 1))
      printf '%s\n' "$line" > "$corpus/$preset-$n"
    done < "$records"
  done
  echo "==> fuzz $target for ${seconds}s"
  out=$(mktemp)
  if ! cargo +nightly fuzz run --target-dir "$cache/fuzz-target" "$target" "$corpus" -- \
      -max_total_time="$seconds" -print_final_stats=1 -dict=fuzz/extremes.dict >"$out" 2>&1; then
    tail -40 "$out"
    echo "fuzz: $target crashed; the input is in fuzz/artifacts/$target/" >&2
    rm -f "$out"
    exit 1
  fi
  grep -E '^(Done|stat::number_of_executed_units|stat::peak_rss_mb)' "$out" || true
  rm -f "$out"
done
