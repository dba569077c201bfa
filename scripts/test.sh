#!/usr/bin/env bash
# Runs every test of aftercare. Installs what the tests need first
# (Postfix, for its smtp-sink SMTP server; faketime, to start a worker in
# the past; aiosmtpd from PyPI, for an SMTP server that bounces; Chromium
# from Debian and playwright-core from npm, for the browser tests; tansu, a
# Kafka-protocol broker, from crates.io: about ten minutes to build, once),
# then checks formatting, lints and the API docs' links, runs the unit
# and integration tests, and fuzzes briefly (scripts/fuzz.sh). The servers are started by the
# tests themselves, on loopback ports, and stopped when each test ends.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

if ! command -v smtp-sink >/dev/null 2>&1 && [ ! -x /usr/sbin/smtp-sink ]; then
  echo "==> Installing Postfix (smtp-sink, a real SMTP server for the tests)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postfix >/dev/null
fi

if ! command -v faketime >/dev/null 2>&1; then
  echo "==> Installing faketime (a worker started 100 days in the past, for the clock-jump test)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq faketime >/dev/null
fi

if ! python3 -c "import aiosmtpd" >/dev/null 2>&1; then
  echo "==> Installing aiosmtpd (a scriptable SMTP server for the bounce tests)"
  python3 -m pip install --quiet aiosmtpd
fi

if ! command -v chromium >/dev/null 2>&1; then
  echo "==> Installing Chromium (headless, for the preview gallery's browser test)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi

if [ ! -d tests/browser/node_modules/playwright-core ]; then
  echo "==> Installing playwright-core (drives Chromium; no browser download)"
  (cd tests/browser && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --silent)
fi

cargo_bin="${CARGO_HOME:-$HOME/.cargo}/bin"
if ! command -v tansu >/dev/null 2>&1 && [ ! -x "$cargo_bin/tansu" ]; then
  echo "==> Installing tansu (a Kafka-protocol broker for the tests; builds once)"
  cargo install tansu --version 0.6.0 --features dynostore,libsql --locked
fi

if ! command -v systemd-analyze >/dev/null 2>&1; then
  echo "==> Installing systemd (systemd-analyze checks deploy/systemd/aftercare.service)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd >/dev/null
fi

if ! command -v promtool >/dev/null 2>&1; then
  echo "==> Installing promtool (Debian's prometheus package; checks deploy/prometheus)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  # Only promtool is wanted: no Prometheus server left running on :9090.
  if [ -d /run/systemd/system ]; then
    as_root systemctl disable --now prometheus.service >/dev/null 2>&1 || true
  fi
  as_root start-stop-daemon --stop --quiet --oknodo --retry 10 --exec /usr/bin/prometheus
  if start-stop-daemon --status --exec /usr/bin/prometheus; then
    echo "a Prometheus server is still running after the install" >&2
    exit 1
  fi
fi

if ! python3 -c "import kubernetes_validate" >/dev/null 2>&1; then
  echo "==> Installing kubernetes-validate (Kubernetes schemas, bundled: works offline)"
  python3 -m pip install --quiet kubernetes-validate==1.37.0
fi

# The PostgreSQL store's tests use the local server (127.0.0.1:5432, trust
# auth, database `test`), or AFTERCARE_TEST_POSTGRES_URL; start it if it is
# installed and stopped.
if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null && [ -z "${AFTERCARE_TEST_POSTGRES_URL:-}" ]; then
  if [ -d /etc/postgresql ]; then
    echo "==> Starting PostgreSQL"
    as_root pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
  fi
fi

echo "==> cargo fmt --check"
cargo fmt --check

echo "==> cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --quiet -- -D warnings

echo "==> cargo doc (links in the API docs resolve)"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --lib --quiet

echo "==> cargo test"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --all-targets 2>&1 | tee "$log"

# The decoder and the journey machine under cargo-fuzz, briefly (the long
# run: FUZZ_SECONDS=3600 scripts/fuzz.sh).
scripts/fuzz.sh

# One closing line for every test binary together (the benches, run once
# in test mode, print none of their own).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
