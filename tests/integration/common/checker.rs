//! The delivery checker of the reliability tests: what the SMTP sinks
//! received, by Message-ID, against the oracle (`simulate --with-ids`).
//!
//! - lost: expected, never received (unless the store shows it withdrawn:
//!   a marketing email retried after an outage is checked again, and an
//!   event applied meanwhile may have cancelled it, with the reason; or
//!   expired: too late to go out when it was to, which a scenario that
//!   stops the worker long enough checks against the email's due time);
//! - refused: expected, never received, and the store shows the server
//!   refused it for good (a 5xx reply): it ends `failed`, as it should;
//! - unexpected: received, not expected;
//! - duplicated: received more than once. A duplicate is in the gap when
//!   the worker cannot have known the earlier copy arrived: the server took
//!   it and never acknowledged it, or a worker was killed between the
//!   server accepting it and the worker recording it (a kill at most
//!   [`GAP`] after the earlier copy was written). A duplicate outside the
//!   gap is a bug.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use super::{Work, stderr, stdout};

/// How long after the server accepted a message a kill can still have
/// kept the worker from recording it. Recording takes milliseconds; this
/// allows for a loaded two-core machine.
pub const GAP: Duration = Duration::from_secs(5);

/// One message a sink received.
pub struct Delivery {
    /// `None` for the partial dump of a transaction cut mid-DATA: no
    /// delivery.
    pub message_id: Option<String>,
    /// When the sink finished writing it.
    pub at: SystemTime,
    /// Whether the server answered the final dot. A message it took and
    /// never acknowledged (it hung up, or answered after the client gave
    /// up) is rightly sent again: its duplicate is in the gap.
    pub acknowledged: bool,
}

/// Every email `simulate --with-ids` plans to send for `log`: Message-ID
/// (as a mail parser gives it, without angle brackets) to email key.
pub fn expected(work: &Work, log: &Path) -> BTreeMap<String, String> {
    plan(work, log, None, false)
}

/// [`expected`] of a log with invalid events in it (`simulate` exits 65).
pub fn expected_with_invalid(work: &Work, log: &Path) -> BTreeMap<String, String> {
    plan(work, log, None, true)
}

/// [`expected`] with the clock stopped at `until` (RFC 3339).
pub fn expected_until(work: &Work, log: &Path, until: Option<&str>) -> BTreeMap<String, String> {
    plan(work, log, until, false)
}

fn plan(work: &Work, log: &Path, until: Option<&str>, invalid: bool) -> BTreeMap<String, String> {
    let mut args = vec!["simulate", log.to_str().unwrap(), "--with-ids"];
    if let Some(until) = until {
        args.extend(["--until", until]);
    }
    let out = work.run(&args);
    let want = if invalid { Some(65) } else { Some(0) };
    assert_eq!(out.status.code(), want, "{}", stderr(&out));
    stdout(&out)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["status"] == "sent")
        .map(|v| {
            (
                v["message_id"]
                    .as_str()
                    .unwrap()
                    .trim_matches(['<', '>'])
                    .to_owned(),
                v["key"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// The due time of every email `simulate` plans to send for `log` by
/// `until`, by key.
pub fn planned_due(work: &Work, log: &Path, until: &str) -> BTreeMap<String, jiff::Timestamp> {
    let out = work.run(&[
        "simulate",
        log.to_str().unwrap(),
        "--with-ids",
        "--until",
        until,
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    stdout(&out)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["status"] == "sent")
        .map(|v| {
            (
                v["key"].as_str().unwrap().to_owned(),
                v["due_at"].as_str().unwrap().parse().unwrap(),
            )
        })
        .collect()
}

#[derive(Debug, Default)]
pub struct Checked {
    pub expected: usize,
    pub received: usize,
    /// Partial dumps of aborted transactions, not counted as received.
    pub partial: usize,
    /// Keys of expected emails never received, with their store status
    /// (and reason).
    pub lost: Vec<(String, Option<String>)>,
    /// Keys of expected emails the store shows withdrawn, with the reason.
    pub withdrawn: Vec<(String, Option<String>)>,
    /// Keys of expected emails the store shows expired (too late for their
    /// rule's `expires_after` when they were to go out), with the reason:
    /// not lost, if they really were that late, which the scenario checks
    /// against their due times ([`planned_due`]).
    pub expired: Vec<(String, Option<String>)>,
    /// Keys of expected emails the server refused for good (a 5xx reply),
    /// with the reply: they end `failed`, as they should.
    pub refused: Vec<(String, Option<String>)>,
    pub unexpected: Vec<String>,
    pub duplicated_in_gap: usize,
    /// Message-IDs received again with no kill in the gap after the
    /// earlier copy.
    pub duplicated_outside: Vec<String>,
}

/// Compares `deliveries` with `expected`. `kills` are the moments workers
/// were killed; `status` gives an unreceived email's `(status, reason)` in
/// the store, by key.
pub fn check(
    expected: &BTreeMap<String, String>,
    deliveries: &[Delivery],
    kills: &[SystemTime],
    status: impl Fn(&str) -> Option<(String, Option<String>)>,
) -> Checked {
    let mut checked = Checked {
        expected: expected.len(),
        ..Checked::default()
    };
    let mut by_id: BTreeMap<&str, Vec<(SystemTime, bool)>> = BTreeMap::new();
    for d in deliveries {
        match &d.message_id {
            Some(id) => by_id.entry(id).or_default().push((d.at, d.acknowledged)),
            None => checked.partial += 1,
        }
    }
    checked.received = by_id.values().map(Vec::len).sum();
    for (id, key) in expected {
        if by_id.contains_key(id.as_str()) {
            continue;
        }
        match status(key) {
            Some((s, reason))
                if s == "suppressed"
                    && reason.as_deref().is_some_and(|r| r.starts_with("expired")) =>
            {
                checked.expired.push((key.clone(), reason));
            }
            Some((s, reason)) if s == "cancelled" || s == "suppressed" => {
                checked.withdrawn.push((key.clone(), reason));
            }
            Some((s, reason))
                if s == "failed"
                    && reason
                        .as_deref()
                        .is_some_and(|r| r.starts_with("permanent:")) =>
            {
                checked.refused.push((key.clone(), reason));
            }
            other => checked.lost.push((
                key.clone(),
                other.map(|(s, reason)| match reason {
                    Some(reason) => format!("{s}: {reason}"),
                    None => s,
                }),
            )),
        }
    }
    for (id, mut times) in by_id {
        if !expected.contains_key(id) {
            checked.unexpected.push(id.to_owned());
        }
        times.sort();
        // Every copy but the last must have gone unacknowledged, or have
        // been followed by a kill.
        for (earlier, acknowledged) in &times[..times.len() - 1] {
            let in_gap = !acknowledged
                || kills.iter().any(|k| {
                    k.duration_since(*earlier).is_ok_and(|d| d <= GAP)
                    // The file's time and the kill's come from different
                    // clocks' reads: a little slack the other way.
                    || earlier.duration_since(*k).is_ok_and(|d| d <= Duration::from_millis(200))
                });
            if in_gap {
                checked.duplicated_in_gap += 1;
            } else {
                checked.duplicated_outside.push(id.to_owned());
            }
        }
    }
    checked
}

impl Checked {
    /// What breaks the promise, if anything: emails lost, unexpected, or
    /// duplicated outside the gap.
    pub fn broken(&self) -> Option<String> {
        let first =
            |v: &dyn std::fmt::Debug| format!("{v:?}").chars().take(2_000).collect::<String>();
        let mut found = Vec::new();
        if !self.lost.is_empty() {
            found.push(format!("{} lost: {}", self.lost.len(), first(&self.lost)));
        }
        if !self.unexpected.is_empty() {
            found.push(format!(
                "{} unexpected: {}",
                self.unexpected.len(),
                first(&self.unexpected)
            ));
        }
        if !self.duplicated_outside.is_empty() {
            found.push(format!(
                "{} duplicated outside the gap: {}",
                self.duplicated_outside.len(),
                first(&self.duplicated_outside)
            ));
        }
        (!found.is_empty()).then(|| found.join("; "))
    }

    /// Fails the test on anything lost, unexpected or duplicated outside
    /// the gap.
    pub fn assert_promise_kept(&self) {
        if let Some(broken) = self.broken() {
            panic!("{broken}");
        }
    }

    pub fn duplicated(&self) -> usize {
        self.duplicated_in_gap + self.duplicated_outside.len()
    }
}

/// Whether the long reliability suite runs (`RELIABILITY_LONG`, set by
/// `scripts/reliability.sh`): longer loads, more kills and faults.
pub fn long() -> bool {
    std::env::var_os("RELIABILITY_LONG").is_some()
}

/// One scenario's row of RELIABILITY.md.
pub struct Figures<'a> {
    /// The scenario's name in the table.
    pub scenario: &'a str,
    /// The seed of a seeded scenario.
    pub seed: Option<u64>,
    pub customers: usize,
    /// Workers killed with SIGKILL.
    pub kills: usize,
    /// Faults injected besides the kills: SMTP faults, broker outages and
    /// restarts, joins and leaves, a clock jump...
    pub faults: usize,
    pub checked: &'a Checked,
    pub took: Duration,
}

impl Figures<'_> {
    /// Prints the row and, with `RELIABILITY_FIGURES` naming a file,
    /// appends it there (`scripts/reliability.sh` collects the rows).
    pub fn record(&self) {
        let c = self.checked;
        let row = format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0} s |",
            self.scenario,
            if long() { "long" } else { "short" },
            self.seed.map_or("-".to_owned(), |s| s.to_string()),
            self.customers,
            self.kills,
            self.faults,
            c.expected,
            c.received,
            c.lost.len(),
            c.withdrawn.len(),
            c.expired.len(),
            c.refused.len(),
            c.duplicated(),
            self.took.as_secs_f64()
        );
        eprintln!("reliability: {row}");
        if let Some(path) = std::env::var_os("RELIABILITY_FIGURES") {
            use std::io::Write;
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .unwrap();
            writeln!(file, "{row}").unwrap();
        }
    }
}
