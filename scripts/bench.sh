#!/usr/bin/env bash
# Every benchmark, one command: the criterion benches (benches/pure.rs:
# decode, step, render + MIME; benches/store.rs: timers at 1,000 and
# 1,000,000 pending emails, restart, ingest) and then SMTP throughput
# (scripts/bench-smtp.sh). Method and figures: BENCHMARKS.md.
#
#   scripts/bench.sh                 # everything (about 10 minutes on 2 cores;
#                                    # the first run also builds the
#                                    # 1,000,000-row store, kept in
#                                    # target/bench-data/)
#   SMTP=0 scripts/bench.sh          # criterion benches only
#   scripts/bench.sh render_mime     # criterion filter (SMTP skipped)
#
# Results: a summary in target/bench-results/<time>.txt, criterion's raw
# estimates in target/criterion/<group>/<bench>/new/.
set -euo pipefail
cd "$(dirname "$0")/.."
SMTP=${SMTP:-1}
if [ $# -gt 0 ]; then SMTP=0; fi

out=target/bench-results
mkdir -p "$out"
log="$out/$(date -u +%Y%m%dT%H%M%SZ).txt"

{
  echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo)"
  echo "rustc: $(rustc --version)"
  echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
  # Anything heavy besides us skews the figures: say so.
  busy=$(ps -eo pcpu=,comm= | awk '$1 > 20 && $2 ~ /^(cargo|rustc|clippy-driver|chromium|tansu|aftercare|smtp-sink|postgres|rust-lld)/' || true)
  if [ -n "$busy" ]; then printf 'busy processes at start:\n%s\n' "$busy"; fi
} | tee "$log"

# --noplot: no gnuplot/plotters work; criterion keeps its estimates.
cargo bench --bench pure --bench store -- --noplot "$@" 2>&1 | tee -a "$log"

# One line per benchmark: median time and throughput.
python3 - target/criterion <<'PY' | tee -a "$log"
import json, pathlib, sys
rows = []
for bench in sorted(pathlib.Path(sys.argv[1]).glob("**/new/benchmark.json")):
    meta = json.loads(bench.read_text())
    est = json.loads((bench.parent / "estimates.json").read_text())
    median_ns = est["median"]["point_estimate"]
    elements = (meta.get("throughput") or {}).get("Elements") or 1
    rows.append((meta["full_id"], median_ns, elements * 1e9 / median_ns))
print()
print(f"{'benchmark':48} {'median':>12} {'per second':>14}")
for name, ns, rate in rows:
    t = f"{ns / 1e6:.3f} ms" if ns >= 1e5 else f"{ns / 1e3:.2f} µs"
    print(f"{name:48} {t:>12} {rate:>14,.0f}")
PY

if [ "$SMTP" = 1 ]; then
  echo | tee -a "$log"
  echo "SMTP throughput (scripts/bench-smtp.sh):" | tee -a "$log"
  scripts/bench-smtp.sh 2>&1 | tee -a "$log"
fi

echo
echo "Summary: $log"
echo "Criterion estimates: target/criterion/<group>/<bench>/new/estimates.json"
