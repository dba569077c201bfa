//! Typed configuration, validated before anything connects.
//!
//! Three layers, later ones winning: the defaults compiled in from
//! `config/aftercare.toml`, the file given with `--config`, and `AFTERCARE_*`
//! environment variables (`__` separates sections:
//! `AFTERCARE_MAILER__KIND=smtp`). Every struct denies unknown keys, so a
//! typo fails at start with the key's name instead of being ignored.
//!
//! The types are here; `load` reads and merges the layers, `validate`
//! checks the result.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::bounded::clip;
use crate::journey::{JourneyRule, PolicyConfig, RulebookConfig, SegmentsConfig, TierConfig};
use crate::mapping::{MappingRule, MappingSet, presets};

mod load;
#[cfg(test)]
mod tests;
mod validate;

/// The shipped configuration; also the embedded default.
pub const DEFAULT_TOML: &str = include_str!("../../config/aftercare.toml");

/// A configuration that cannot be used. Always fatal (exit 64).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The TOML, or a value of the wrong type: where, and what is wrong.
    #[error("config: {0}")]
    Parse(String),
    #[error("config key `{key}`: {reason}")]
    Invalid { key: String, reason: String },
}

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        reason: reason.into(),
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the SQLite store, the `.eml` outbox and the dead-letter file live
    /// unless configured one by one.
    pub data_dir: PathBuf,
    /// The template folder: `<locale>/<template>.{subject,html,txt}.hbs`.
    pub templates_dir: PathBuf,
    /// The locales emails are written in: each must have its template
    /// folder, complete or with a `locale_fallback`.
    pub locales: Vec<String>,
    /// Locale for customers without one, or with one we have no templates for.
    pub default_locale: String,
    /// Time zone for customers without one; dates in emails are shown in it.
    pub default_timezone: String,
    /// Where a locale's missing templates come from: `am = "en"` sends the
    /// English email to Amharic customers for a template with no Amharic
    /// files. Without it, `check` refuses a template missing in a locale.
    #[serde(default)]
    pub locale_fallback: BTreeMap<String, String>,
    /// This worker's id, for its claims on emails it delivers: stable across
    /// restarts, distinct between workers sharing a store. Default: the
    /// host name.
    #[serde(default, deserialize_with = "lenient::opt_string")]
    pub worker_id: Option<String>,
    /// How long in-flight work may take to finish after SIGTERM/SIGINT.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    pub source: SourceConfig,
    pub store: StoreConfig,
    pub mailer: MailerConfig,
    pub sender: SenderConfig,
    pub shop: ShopConfig,
    pub unsubscribe: UnsubscribeConfig,
    pub http: HttpConfig,
    pub log: LogConfig,
    pub check: CheckConfig,
    pub report: ReportConfig,
    /// When marketing emails may go out: frequency cap, quiet hours.
    pub policy: PolicyConfig,
    /// The go-live cut-off and the clock lateness is measured on
    /// (`[journeys]`; the rules themselves are `[[journey]]`).
    #[serde(rename = "journeys", default)]
    pub catch_up: CatchUpConfig,
    /// How customers are grouped by their history.
    pub segments: SegmentsConfig,
    /// Loyalty tiers, lowest first: reaching one sends the rules with
    /// `tiers = true` (`loyalty_milestone`).
    #[serde(rename = "tier", default)]
    pub tiers: Vec<TierConfig>,
    /// The journey rules: which event sends which template, when. A file's
    /// `[[journey]]` rules replace the rules of the same template in the
    /// layer under it and add the others (see [`Config::load_over`]).
    #[serde(rename = "journey")]
    pub journeys: Vec<JourneyRule>,
    /// `false`: the file's `[[journey]]` list is the whole list, the
    /// defaults' rules are not kept.
    #[serde(default = "yes")]
    pub default_journeys: bool,
    /// The shop's own mapping rules, tried before the preset's (see
    /// `source.format`).
    #[serde(rename = "mapping", default)]
    pub mappings: Vec<MappingRule>,
    /// `$vars` of the mappings, over the preset's defaults.
    #[serde(default)]
    pub mapping_vars: BTreeMap<String, serde_json::Value>,
    /// The file given with `--config`, for messages that point into it.
    #[serde(skip)]
    pub file: Option<PathBuf>,
    /// The file the defaults came from, when not the compiled-in copy.
    #[serde(skip)]
    pub base_file: Option<PathBuf>,
    /// Each journey rule's key in messages: `journey[2]` as its own file
    /// numbers it, whichever layer it came from (empty: the list's index).
    #[serde(skip)]
    pub journey_keys: Vec<String>,
}

fn yes() -> bool {
    true
}

/// Where `run`, `check` and `preview` look for the shipped configuration
/// (relative to the working directory): when it is there, it is the
/// defaults, so that editing it takes effect; else the compiled-in copy.
pub const SHIPPED_FILE: &str = "config/aftercare.toml";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    File,
    Kafka,
    Webhook,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    pub kind: SourceKind,
    /// JSONL file to read, or `-` for standard input.
    pub path: String,
    /// Where invalid events are written (JSON lines). Default:
    /// `<data_dir>/dead-letter.jsonl`.
    pub dead_letter: Option<PathBuf>,
    /// Events per store transaction, at most.
    pub batch_size: usize,
    /// How long a batch may wait to fill up (Kafka).
    #[serde(with = "humantime_serde")]
    pub batch_wait: Duration,
    /// The largest event (a line, a message) read: a larger one goes to
    /// the dead letters, only its first bytes kept, and is never held
    /// whole in memory.
    pub max_event_bytes: usize,
    /// How long, in event time, an event that names no customer waits for
    /// the `order.placed` of its order before it goes to the dead letters.
    #[serde(with = "humantime_serde")]
    pub unknown_order_wait: Duration,
    /// What the messages are: `native` (aftercare's own events, and any
    /// message a `[[mapping]]` rule maps) or the name of a preset mapping
    /// set (`shopify`, `woocommerce`...), tried after the `[[mapping]]`
    /// rules.
    #[serde(deserialize_with = "lenient::string")]
    pub format: String,
    /// The longest one mapping may run on one message.
    #[serde(with = "humantime_serde")]
    pub mapping_timeout: Duration,
    pub kafka: KafkaConfig,
    pub webhook: WebhookConfig,
}

/// `source.kind = "webhook"`: the shop posts its webhooks to the worker's
/// HTTP server (`http.listen`), at `/webhooks/<endpoint>`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// The endpoints by name: `[source.webhook.endpoints.shopify]` takes
    /// `POST /webhooks/shopify`.
    #[serde(default)]
    pub endpoints: BTreeMap<String, WebhookEndpoint>,
    /// Deliveries stored and not applied yet, at most: beyond, a delivery
    /// is answered 503 with `Retry-After` (the shop retries later) rather
    /// than stored without end while the worker is behind.
    pub max_depth: u64,
    /// What a 503 asks the sender to wait.
    #[serde(with = "humantime_serde")]
    pub retry_after: Duration,
    /// Requests one client address may make in a minute (burst included);
    /// more get 429 with `Retry-After`.
    pub per_address_per_minute: u32,
    /// How long an applied delivery's id is kept to know a redelivery of
    /// it (Shopify retries for 48 hours).
    #[serde(with = "humantime_serde")]
    pub keep_applied: Duration,
}

/// One webhook endpoint: whose signature it checks, with which secrets.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookEndpoint {
    /// `shopify`, `woocommerce`, or `hmac` (a shop's own sender: set
    /// `header`, and `encoding` and `prefix` if not base64 and none).
    pub signature: SignatureKind,
    /// Environment variables, each holding one secret: the current one
    /// first, then one being rotated out.
    #[serde(default, deserialize_with = "lenient::string_list")]
    pub secrets_env: Vec<String>,
    /// Or a file of secrets, one a line (a systemd credential, a mounted
    /// Kubernetes Secret).
    pub secrets_file: Option<PathBuf>,
    /// `hmac` only: the signature's header, its encoding and what comes
    /// before it (`sha256=`).
    pub header: Option<String>,
    #[serde(default = "base64_encoding")]
    pub encoding: crate::webhook::Encoding,
    #[serde(default)]
    pub prefix: String,
    /// The header naming the delivery (kept across the sender's retries):
    /// a second delivery with the same id has no effect. Default: Shopify's
    /// `X-Shopify-Webhook-Id`, WooCommerce's `X-WC-Webhook-Delivery-ID`.
    pub id_header: Option<String>,
}

fn base64_encoding() -> crate::webhook::Encoding {
    crate::webhook::Encoding::Base64
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SignatureKind {
    Shopify,
    Woocommerce,
    Hmac,
}

impl WebhookEndpoint {
    /// How its deliveries are signed.
    pub fn scheme(&self) -> crate::webhook::Scheme {
        use crate::webhook::Scheme;
        match self.signature {
            SignatureKind::Shopify => Scheme::shopify(),
            SignatureKind::Woocommerce => Scheme::woocommerce(),
            SignatureKind::Hmac => Scheme {
                header: self.header.clone().unwrap_or_default(),
                encoding: self.encoding,
                prefix: self.prefix.clone(),
            },
        }
    }

    /// The header naming a delivery, if the sender has one.
    pub fn delivery_id_header(&self) -> Option<&str> {
        self.id_header.as_deref().or(match self.signature {
            SignatureKind::Shopify => Some("X-Shopify-Webhook-Id"),
            SignatureKind::Woocommerce => Some("X-WC-Webhook-Delivery-ID"),
            SignatureKind::Hmac => None,
        })
    }

    /// The secrets, newest first, read from where the config says; `name`
    /// is the endpoint's, for the messages. Never logged.
    pub fn secrets(&self, name: &str) -> Result<Vec<String>, ConfigError> {
        let key = |field: &str| format!("source.webhook.endpoints.{name}.{field}");
        let mut secrets = Vec::new();
        for var in &self.secrets_env {
            let secret = std::env::var(var).map_err(|_| {
                invalid(
                    key("secrets_env"),
                    format!("environment variable `{var}` is not set"),
                )
            })?;
            secrets.push(secret);
        }
        if let Some(file) = &self.secrets_file {
            let text = std::fs::read_to_string(file)
                .map_err(|e| invalid(key("secrets_file"), format!("{}: {e}", file.display())))?;
            secrets.extend(
                text.lines()
                    .map(|l| l.trim_end_matches('\r'))
                    .filter(|l| !l.trim().is_empty())
                    .map(str::to_owned),
            );
        }
        if secrets.is_empty() {
            return Err(invalid(
                key("secrets_env"),
                "no secret: set secrets_env or secrets_file (an unsigned webhook is never accepted)",
            ));
        }
        if let Some(i) = secrets.iter().position(|s| s.trim().len() < 8) {
            return Err(invalid(
                key(if i < self.secrets_env.len() {
                    "secrets_env"
                } else {
                    "secrets_file"
                }),
                format!("secret {} is shorter than 8 characters", i + 1),
            ));
        }
        Ok(secrets)
    }
}

/// The `source.format` of aftercare's own events.
pub const NATIVE_FORMAT: &str = "native";

/// Bounds of `source.mapping_timeout`.
pub const MAPPING_TIMEOUT_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_millis(1)..=Duration::from_secs(60);

/// Bounds of `source.max_event_bytes`: below, a real order with a few items
/// does not fit; above, one event would take a worker's memory.
pub const MAX_EVENT_BYTES_RANGE: std::ops::RangeInclusive<usize> = 1024..=(64 << 20);

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// `bootstrap.servers`: `host:port,host:port`.
    pub brokers: String,
    #[serde(deserialize_with = "lenient::string")]
    pub group_id: String,
    pub topics: KafkaTopics,
    /// Where invalid events go, with their coordinates in headers.
    pub dead_letter_topic: String,
    /// A consumer that gets no message for this long while its partitions
    /// have unread messages is considered stalled and is recreated.
    #[serde(with = "humantime_serde")]
    pub stall_timeout: Duration,
    /// Passed to librdkafka as they are, for the consumer and the
    /// dead-letter producer: `security.protocol`, `sasl.mechanism`,
    /// `sasl.username`, `ssl.ca.location`, `auto.offset.reset`...
    #[serde(default, deserialize_with = "lenient::string_map")]
    pub options: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaTopics {
    pub orders: String,
    pub shipments: String,
    pub returns: String,
}

impl KafkaTopics {
    pub fn all(&self) -> [&str; 3] {
        [&self.orders, &self.shipments, &self.returns]
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `sqlite:PATH`; default `sqlite:<data_dir>/aftercare.db`.
    pub url: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MailerKind {
    Eml,
    Smtp,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MailerConfig {
    pub kind: MailerKind,
    /// `From:` of every email, e.g. `"Tea & Kettle <hello@shop.example.com>"`.
    pub from: String,
    /// Optional `Reply-To:`.
    pub reply_to: Option<String>,
    pub eml: EmlConfig,
    pub smtp: SmtpConfig,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EmlConfig {
    /// Folder for `.eml` files. Default: `<data_dir>/outbox`.
    pub dir: Option<PathBuf>,
}

/// How the SMTP connection is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// Plaintext: only to a server on this machine (loopback).
    None,
    /// STARTTLS, and refuse to go on without it.
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    pub host: String,
    pub port: u16,
    pub tls: TlsMode,
    /// Extra root certificate (PEM) to trust, for a private CA.
    pub ca_file: Option<PathBuf>,
    /// AUTH (PLAIN or LOGIN) user; the password comes from the environment
    /// variable named by `password_env`, or the file `password_file`.
    #[serde(default, deserialize_with = "lenient::opt_string")]
    pub username: Option<String>,
    pub password_env: Option<String>,
    pub password_file: Option<PathBuf>,
    /// Connections kept open to the server.
    pub pool_size: u32,
    /// Limit on connecting and on each command.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Limit on one whole transaction; past it, the outcome is ambiguous.
    #[serde(with = "humantime_serde")]
    pub transaction_timeout: Duration,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SenderConfig {
    /// Emails decided per store transaction.
    pub batch_size: usize,
    /// How long an approved email is this worker's to deliver without a
    /// renewal: the claim is renewed when its delivery starts and every
    /// third of this while it runs, so it bounds how soon another worker
    /// takes over from one that died, not how long a delivery may take.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    pub retry: RetryConfig,
    pub domains: DomainsConfig,
}

/// Limits per recipient domain, so that one slow or throttling provider
/// does not hold the others back.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DomainsConfig {
    /// Deliveries in flight at once to one domain.
    pub concurrency: usize,
    /// Deliveries per second to one domain; 0: no limit.
    pub rate: f64,
    /// After a 421 or a 4.7.x deferral, the domain gets nothing for this
    /// long (its emails wait, without spending an attempt).
    #[serde(with = "humantime_serde")]
    pub defer: Duration,
    /// Per-domain limits replacing the default: `[sender.domains.overrides."gmail.com"]`.
    #[serde(default)]
    pub overrides: std::collections::BTreeMap<String, DomainLimit>,
}

impl DomainsConfig {
    /// The limits for `domain`: its override, or the default.
    pub fn limit(&self, domain: &str) -> DomainLimit {
        self.overrides.get(domain).copied().unwrap_or(DomainLimit {
            concurrency: self.concurrency,
            rate: self.rate,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DomainLimit {
    /// Deliveries in flight at once to the domain.
    pub concurrency: usize,
    /// Deliveries per second to the domain; 0: no limit.
    pub rate: f64,
}
/// How transient failures (4xx, a server down) are retried.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Attempts before the email is `failed` with its last reply.
    pub max_attempts: u32,
    /// Past this age (from the email's due time) it is not retried again.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// The first wait; each next one doubles, up to `max_wait`, plus up to
    /// a fifth of jitter.
    #[serde(with = "humantime_serde")]
    pub first_wait: Duration,
    #[serde(with = "humantime_serde")]
    pub max_wait: Duration,
}

/// The keys of the HMAC that signs unsubscribe links. None configured: a
/// random one is made once and kept in the store (shared by the workers
/// using it). Configure them to keep them out of the store, to keep links
/// valid across stores, and to rotate them.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UnsubscribeConfig {
    /// Keys, newest first: links are signed with the first, and links
    /// signed with any of them are accepted. Rotating is adding a key in
    /// front, then removing the old one once its links may go.
    #[serde(default, deserialize_with = "lenient::string_list")]
    pub secrets: Vec<String>,
    /// A file of keys, one a line, newest first: `secrets` kept out of the
    /// config (a systemd credential, a mounted Kubernetes Secret).
    pub secrets_file: Option<PathBuf>,
    /// One key: the only one, or the oldest after `secrets`.
    #[serde(default, deserialize_with = "lenient::opt_string")]
    pub secret: Option<String>,
    /// With keys configured, also accept links signed with the key kept in
    /// the store (if it has one: links sent before keys were configured).
    /// `false` once those may go: whoever reads the store can sign with it.
    pub accept_store_key: bool,
}

/// The least a key must have: more than a password would.
const MIN_KEY_CHARS: usize = 16;
/// Different characters a key must have at least: refuses `aaaa...` and
/// `abab...`, which a random key of 16 characters is never.
const MIN_KEY_DISTINCT: usize = 5;

impl UnsubscribeConfig {
    /// The configured keys, newest first. Reads `secrets_file`; refuses a
    /// weak key or one listed twice, naming where it is set (never the key).
    pub fn keys(&self) -> Result<Vec<String>, ConfigError> {
        // (config key, where in it, the key)
        let mut keys: Vec<(&str, String, String)> =
            match (&self.secrets_file, self.secrets.is_empty()) {
                (Some(_), false) => {
                    return Err(invalid(
                        "unsubscribe.secrets_file",
                        "set either unsubscribe.secrets or unsubscribe.secrets_file, not both",
                    ));
                }
                (Some(file), true) => {
                    let text = std::fs::read_to_string(file).map_err(|e| {
                        invalid(
                            "unsubscribe.secrets_file",
                            format!("{}: {e}", file.display()),
                        )
                    })?;
                    let keys: Vec<_> = text
                        .lines()
                        .enumerate()
                        .filter(|(_, line)| !line.trim().is_empty())
                        .map(|(i, line)| {
                            (
                                "unsubscribe.secrets_file",
                                format!("{}, line {}: ", file.display(), i + 1),
                                line.trim_end_matches('\r').to_owned(),
                            )
                        })
                        .collect();
                    if keys.is_empty() {
                        return Err(invalid(
                            "unsubscribe.secrets_file",
                            format!("{}: no key in it", file.display()),
                        ));
                    }
                    keys
                }
                (None, _) => self
                    .secrets
                    .iter()
                    .enumerate()
                    .map(|(i, k)| ("unsubscribe.secrets", format!("item {i}: "), k.clone()))
                    .collect(),
            };
        keys.extend(
            self.secret
                .iter()
                .map(|k| ("unsubscribe.secret", String::new(), k.clone())),
        );
        for (i, (name, place, key)) in keys.iter().enumerate() {
            let chars: Vec<char> = key.chars().filter(|c| !c.is_whitespace()).collect();
            if chars.len() < MIN_KEY_CHARS {
                return Err(invalid(
                    *name,
                    format!(
                        "{place}a key needs at least {MIN_KEY_CHARS} characters other than spaces"
                    ),
                ));
            }
            if chars.iter().collect::<BTreeSet<_>>().len() < MIN_KEY_DISTINCT {
                return Err(invalid(
                    *name,
                    format!(
                        "{place}too regular to be a key: use a random one (openssl rand -base64 32)"
                    ),
                ));
            }
            if let Some((earlier, earlier_place, _)) = keys[..i].iter().find(|(_, _, k)| k == key) {
                return Err(invalid(
                    *name,
                    format!("{place}the same key as {earlier} {earlier_place}")
                        .trim_end_matches([' ', ':'])
                        .to_owned(),
                ));
            }
        }
        Ok(keys.into_iter().map(|(_, _, key)| key).collect())
    }
}

/// What is done with emails that fell due long ago: before the shop went
/// live, or longer ago than their rule's `expires_after`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CatchUpConfig {
    /// Emails due before this moment are not sent (they end `suppressed`,
    /// `before go-live`); the events before it still build the journeys.
    /// Default: the store's first start, recorded then.
    #[serde(default)]
    pub send_from: Option<jiff::Timestamp>,
    /// What an email's lateness is measured against.
    #[serde(default)]
    pub clock: ClockKind,
}

/// The clock an email's lateness is measured on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ClockKind {
    /// Real time: an email decided or delivered later than its due time
    /// plus `expires_after` expires, and the frequency cap and quiet hours
    /// hold in real time too. Emails due before the first start are not
    /// sent unless `send_from` says otherwise.
    #[default]
    Wall,
    /// The events' own time, as `simulate` plans: a log replayed now sends
    /// what it would have sent when it happened (a replay into a test
    /// mailbox). No first-start cut-off; `send_from` still applies.
    Events,
}

/// Rules `aftercare check` holds the templates to.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CheckConfig {
    /// Longest subject, in characters, with the sample data: mail clients
    /// cut long ones.
    pub max_subject_chars: usize,
    /// Longest preheader (the inbox preview text), in characters, with the
    /// sample data: inboxes show the first 40 to 140 or so, and a longer
    /// one only pushes the padding that keeps the body out of the preview
    /// further down.
    pub max_preheader_chars: usize,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address of the HTTP server (`/healthz`, `/readyz`, `/metrics`,
    /// `POST`/`GET /unsubscribe/{token}`), e.g. `127.0.0.1:8080`. Unset: no
    /// server. Put `/unsubscribe/` behind the shop's reverse proxy at
    /// `shop.unsubscribe_url`; keep the rest internal.
    pub listen: Option<std::net::SocketAddr>,
    /// Connections open at once, at most (and never more than a quarter of
    /// the process's open-file limit): each holds a file descriptor the
    /// store, the mailer and the broker also need.
    pub max_connections: usize,
    /// How long a client may take to send a request's head (line and
    /// headers) after connecting: idle and half-sent connections are cut.
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// How long a connection may stay open in all (one request each): a
    /// dripping body or a client that does not read the answer is cut.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
}

/// How `aftercare report` counts.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ReportConfig {
    /// A customer is active with an order this recent.
    #[serde(with = "humantime_serde")]
    pub active_window: Duration,
    /// An order is credited to the last email this long before it.
    #[serde(with = "humantime_serde")]
    pub attribution_window: Duration,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `text` for people at a terminal, `json` (one object per line) for a
    /// log pipeline.
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Brand settings, available to every template as `shop.*`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ShopConfig {
    pub name: String,
    pub url: String,
    pub support_email: String,
    pub address: String,
    pub logo_url: String,
    pub review_url: String,
    pub returns_url: String,
    /// Brand colours, used by the stylesheet `templates/style.css.hbs`.
    pub colors: BrandColors,
    /// The same colours for a reader whose mail client is in dark mode
    /// (`prefers-color-scheme: dark`): the layout declares both schemes
    /// rather than forcing light, so the client does not invert it itself.
    pub dark_colors: BrandColors,
    /// Public base of the unsubscribe link on marketing emails: the signed
    /// token is appended (`<unsubscribe_url>/<token>`).
    pub unsubscribe_url: String,
}

/// See [`Config::store_location`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    Sqlite(PathBuf),
    /// A `postgres://` URL: several workers may share it.
    Postgres(String),
}

/// Brand colours, each `#rgb` or `#rrggbb`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BrandColors {
    /// Headings, links, buttons.
    pub primary: String,
    /// Text on a button.
    pub on_primary: String,
    /// Body text.
    pub text: String,
    /// Footer and secondary text.
    pub muted: String,
    /// Around the email.
    pub background: String,
    /// Behind the email's content.
    pub surface: String,
    /// Lines between sections.
    pub border: String,
}

/// Strings that an environment variable may spell as a number: every
/// `AFTERCARE_*` value is parsed as TOML, so a numeric secret or group id
/// would arrive as an integer.
mod lenient {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Scalar {
        String(String),
        Int(i64),
        UInt(u64),
        Float(f64),
        Bool(bool),
    }

    impl From<Scalar> for String {
        fn from(s: Scalar) -> String {
            match s {
                Scalar::String(s) => s,
                Scalar::Int(n) => n.to_string(),
                Scalar::UInt(n) => n.to_string(),
                Scalar::Float(x) => x.to_string(),
                Scalar::Bool(b) => b.to_string(),
            }
        }
    }

    pub fn string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        Scalar::deserialize(d).map(String::from)
    }

    pub fn opt_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        Ok(Option::<Scalar>::deserialize(d)?.map(String::from))
    }

    pub fn string_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
        Ok(Vec::<Scalar>::deserialize(d)?
            .into_iter()
            .map(String::from)
            .collect())
    }

    pub fn string_map<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<String, String>, D::Error> {
        Ok(BTreeMap::<String, Scalar>::deserialize(d)?
            .into_iter()
            .map(|(k, v)| (k, v.into()))
            .collect())
    }
}

impl Config {
    /// The mappings messages go through, if any: the `[[mapping]]` rules
    /// and the preset of `source.format`.
    pub fn mapping_set(&self) -> Result<Option<MappingSet>, ConfigError> {
        let preset = match self.source.format.as_str() {
            NATIVE_FORMAT => None,
            name => Some(presets::get(name).ok_or_else(|| {
                invalid(
                    "source.format",
                    format!(
                        "`{}` is not a format; one of: {}",
                        clip(name, 40),
                        presets::names().join(", ")
                    ),
                )
            })?),
        };
        if preset.is_none() && self.mappings.is_empty() {
            return Ok(None);
        }
        Ok(Some(MappingSet::new(
            &self.mappings,
            preset.as_ref(),
            &self.mapping_vars,
            self.source.mapping_timeout,
        )))
    }

    /// The embedded defaults alone.
    pub fn embedded() -> Config {
        Config::load(None, std::iter::empty()).expect("the shipped config is valid")
    }

    /// The journeys' part of the configuration, for [`Rulebook::from_config`].
    ///
    /// [`Rulebook::from_config`]: crate::journey::Rulebook::from_config
    pub fn rulebook_config(&self) -> RulebookConfig {
        RulebookConfig {
            rules: self.journeys.clone(),
            policy: self.policy.clone(),
            tiers: self.tiers.clone(),
            segments: self.segments.clone(),
            default_timezone: self.default_timezone.clone(),
            default_locale: self.default_locale.clone(),
        }
    }

    /// The worker id: configured, or the host name.
    pub fn worker_id(&self) -> String {
        self.worker_id.clone().unwrap_or_else(|| {
            gethostname::gethostname()
                .into_string()
                .unwrap_or_else(|_| "aftercare".to_owned())
        })
    }

    /// Where the store is: a SQLite file (the default, under `data_dir`)
    /// or a PostgreSQL database.
    pub fn store_location(&self) -> StoreLocation {
        match &self.store.url {
            Some(url) if !url.starts_with("sqlite:") => StoreLocation::Postgres(url.clone()),
            Some(url) => StoreLocation::Sqlite(PathBuf::from(url.trim_start_matches("sqlite:"))),
            None => StoreLocation::Sqlite(self.data_dir.join("aftercare.db")),
        }
    }

    pub fn outbox_dir(&self) -> PathBuf {
        self.mailer
            .eml
            .dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("outbox"))
    }

    pub fn dead_letter_path(&self) -> PathBuf {
        self.source
            .dead_letter
            .clone()
            .unwrap_or_else(|| self.data_dir.join("dead-letter.jsonl"))
    }
}

impl SmtpConfig {
    /// The AUTH password, read from where the config says. Never logged.
    pub fn password(&self) -> Result<String, ConfigError> {
        match (&self.password_env, &self.password_file) {
            (Some(var), None) => std::env::var(var).map_err(|_| {
                invalid(
                    "mailer.smtp.password_env",
                    format!("environment variable `{var}` is not set"),
                )
            }),
            (None, Some(file)) => std::fs::read_to_string(file)
                .map(|p| p.trim_end_matches(['\r', '\n']).to_owned())
                .map_err(|e| {
                    invalid(
                        "mailer.smtp.password_file",
                        format!("{}: {e}", file.display()),
                    )
                }),
            _ => Err(invalid(
                "mailer.smtp.password_env",
                "with a username, set exactly one of password_env and password_file",
            )),
        }
    }
}
