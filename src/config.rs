//! Typed configuration, validated before anything connects.
//!
//! Three layers, later ones winning: the defaults compiled in from
//! `config/aftercare.toml`, the file given with `--config`, and `AFTERCARE_*`
//! environment variables (`__` separates sections:
//! `AFTERCARE_MAILER__KIND=smtp`). Every struct denies unknown keys, so a
//! typo fails at start with the key's name instead of being ignored.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Format, Toml};
use serde::{Deserialize, Serialize};

use crate::bounded::clip;
use crate::journey::{
    EmailClass, HOLDOUT_VARIANT, JourneyRule, Only, PolicyConfig, RulebookConfig, Segment,
    SegmentsConfig, TierConfig, Trigger, parse_hhmm,
};
use crate::mapping::{MappingRule, MappingSet, presets};

/// The shipped configuration; also the embedded default.
pub const DEFAULT_TOML: &str = include_str!("../config/aftercare.toml");

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

/// The `[[journey]]` list of a TOML text, if it has one.
fn journey_list(
    text: &str,
    name: &dyn std::fmt::Display,
) -> Result<Option<Vec<JourneyRule>>, ConfigError> {
    #[derive(Deserialize)]
    struct JourneyList {
        journey: Option<Vec<JourneyRule>>,
    }
    toml::from_str::<JourneyList>(text)
        .map(|j| j.journey)
        .map_err(|e| ConfigError::Parse(format!("{name}: {}", e.message())))
}

/// `over`'s rules replace `under`'s of the same template, in place; the
/// others are added after them. Each rule keeps its key in its own file.
fn merge_journeys(
    under: Vec<JourneyRule>,
    under_name: &str,
    over: Vec<JourneyRule>,
) -> Vec<(String, JourneyRule)> {
    let mut merged: Vec<(String, JourneyRule)> = under
        .into_iter()
        .enumerate()
        .map(|(i, rule)| (format!("journey[{i}] (in {under_name})"), rule))
        .collect();
    for (i, rule) in over.into_iter().enumerate() {
        let key = format!("journey[{i}]");
        match merged.iter_mut().find(|(_, r)| r.template == rule.template) {
            Some(slot) => *slot = (key, rule),
            None => merged.push((key, rule)),
        }
    }
    merged
}

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

    fn validate(&self, name: &str) -> Result<(), ConfigError> {
        let key = |field: &str| format!("source.webhook.endpoints.{name}.{field}");
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(invalid(
                key(""),
                "an endpoint name is a-z, A-Z, 0-9, - and _ (it is a path segment)",
            ));
        }
        match (self.signature, &self.header) {
            (SignatureKind::Hmac, None) => {
                return Err(invalid(
                    key("header"),
                    "`hmac` needs the signature's header",
                ));
            }
            (SignatureKind::Hmac, Some(h))
                if axum::http::HeaderName::try_from(h.as_str()).is_err() =>
            {
                return Err(invalid(key("header"), "not a header name"));
            }
            (SignatureKind::Shopify | SignatureKind::Woocommerce, Some(_)) => {
                return Err(invalid(
                    key("header"),
                    "only for `hmac`: Shopify and WooCommerce name their own",
                ));
            }
            _ => {}
        }
        if let Some(h) = &self.id_header
            && axum::http::HeaderName::try_from(h.as_str()).is_err()
        {
            return Err(invalid(key("id_header"), "not a header name"));
        }
        self.secrets(name).map(|_| ())
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

impl HttpConfig {
    /// Longest `request_timeout`; hyper's timer adds it to `now`, so it is
    /// kept far from overflowing.
    const MAX_TIMEOUT: Duration = Duration::from_secs(3600);

    fn validate(&self) -> Result<(), ConfigError> {
        if self.max_connections == 0 {
            return Err(invalid("http.max_connections", "must be at least 1"));
        }
        if self.header_timeout.is_zero() || self.header_timeout > Self::MAX_TIMEOUT {
            return Err(invalid(
                "http.header_timeout",
                "must be more than zero and at most 1h",
            ));
        }
        if self.request_timeout < self.header_timeout || self.request_timeout > Self::MAX_TIMEOUT {
            return Err(invalid(
                "http.request_timeout",
                "must be at least http.header_timeout and at most 1h",
            ));
        }
        Ok(())
    }
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

impl BrandColors {
    fn each(&self) -> [(&'static str, &str); 7] {
        [
            ("primary", &self.primary),
            ("on_primary", &self.on_primary),
            ("text", &self.text),
            ("muted", &self.muted),
            ("background", &self.background),
            ("surface", &self.surface),
            ("border", &self.border),
        ]
    }
}

fn is_hex_color(s: &str) -> bool {
    s.strip_prefix('#')
        .is_some_and(|hex| matches!(hex.len(), 3 | 6) && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn num_text(n: &figment::value::Num) -> String {
    use figment::value::Num;
    match *n {
        Num::U8(v) => v.to_string(),
        Num::U16(v) => v.to_string(),
        Num::U32(v) => v.to_string(),
        Num::U64(v) => v.to_string(),
        Num::U128(v) => v.to_string(),
        Num::USize(v) => v.to_string(),
        Num::I8(v) => v.to_string(),
        Num::I16(v) => v.to_string(),
        Num::I32(v) => v.to_string(),
        Num::I64(v) => v.to_string(),
        Num::I128(v) => v.to_string(),
        Num::ISize(v) => v.to_string(),
        Num::F32(v) => v.to_string(),
        Num::F64(v) => v.to_string(),
    }
}

/// One `AFTERCARE_*` variable as a figment provider, named after the
/// variable (figment would name a `(key, value)` pair by its Rust types).
struct EnvVar {
    name: String,
    /// The config key, dotted.
    path: String,
    value: figment::value::Value,
}

impl figment::Provider for EnvVar {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named(format!("environment variable {}", self.name))
    }

    fn data(
        &self,
    ) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        figment::providers::Serialized::global(&self.path, &self.value).data()
    }
}

/// A TOML syntax error as file, line, column and what is wrong: never the
/// line itself, which may hold a secret (the TOML crate's own message
/// quotes it).
fn check_syntax(file: &Path, text: &str) -> Result<(), ConfigError> {
    let Err(e) = text.parse::<toml::Table>() else {
        return Ok(());
    };
    let at = e.span().map_or(0, |span| span.start).min(text.len());
    let before = text.get(..at).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    let what = e.message().lines().collect::<Vec<_>>().join(", ");
    Err(ConfigError::Parse(format!(
        "{}, line {line}, column {column}: {what}",
        file.display()
    )))
}

/// figment's error, without its internals: the key as `a.b[0].c` (not
/// `default.a.b.0.c`), where it was set (a file, a variable), and the
/// value's expected kind in words rather than a Rust type.
fn describe(error: figment::Error) -> ConfigError {
    use figment::error::Kind;
    let messages: Vec<(String, String)> = error
        .into_iter()
        .map(|e| {
            let what = match &e.kind {
                Kind::InvalidType(actual, expected) => {
                    format!(
                        "invalid type: found {actual}, expected {}",
                        expected_kind(expected)
                    )
                }
                Kind::InvalidValue(actual, expected) => {
                    format!(
                        "invalid value {actual}, expected {}",
                        expected_kind(expected)
                    )
                }
                Kind::InvalidLength(_, expected) => {
                    format!("expected {}", expected_kind(expected))
                }
                Kind::UnknownField(_, known) => {
                    format!("unknown key; the keys here: {}", known.join(", "))
                }
                Kind::UnknownVariant(value, known) => {
                    format!("unknown value `{value}`; one of: {}", known.join(", "))
                }
                Kind::Message(m) if m.contains("untagged enum") => "expected a string".to_owned(),
                other => other.to_string(),
            };
            let place = match &e.metadata {
                Some(md) => match &md.source {
                    Some(figment::Source::File(path)) => format!(" (in {})", path.display()),
                    _ if md.name.starts_with("environment variable") => {
                        format!(" (in {})", md.name)
                    }
                    _ => String::new(),
                },
                None => String::new(),
            };
            let key = e.path.iter().fold(String::new(), |mut key, part| {
                if part.parse::<usize>().is_ok() {
                    key.push_str(&format!("[{part}]"));
                } else {
                    if !key.is_empty() {
                        key.push('.');
                    }
                    key.push_str(part);
                }
                key
            });
            (key, format!("{what}{place}"))
        })
        .collect();
    match <[_; 1]>::try_from(messages) {
        Ok([(key, reason)]) if !key.is_empty() => ConfigError::Invalid { key, reason },
        Ok(messages) => ConfigError::Parse(list(&messages)),
        Err(messages) => ConfigError::Parse(list(&messages)),
    }
}

/// Several errors, each with its key.
fn list(messages: &[(String, String)]) -> String {
    messages
        .iter()
        .map(|(key, reason)| match key.as_str() {
            "" => reason.clone(),
            key => format!("key `{key}`: {reason}"),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// serde's name of what it expected, in words: `usize` is "a whole number
/// (0 or more)", `struct ShopConfig` "a table".
fn expected_kind(expected: &str) -> String {
    let plain = match expected {
        "u8" | "u16" | "u32" | "u64" | "u128" | "usize" => "a whole number (0 or more)",
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => "a whole number",
        "f32" | "f64" => "a number",
        e if e.starts_with("struct ") || e == "a map" => "a table",
        e if e.starts_with("enum ") || e.starts_with("variant identifier") => {
            "a string naming one of its values"
        }
        e if e.starts_with("a Decimal") => "an amount in quotes, like \"500.00\"",
        e if e.starts_with("tuple") || e == "a sequence" => "a list",
        e if e.starts_with("field identifier") => "a known key",
        other => other,
    };
    plain.to_owned()
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
    /// Loads the layers and validates the result. `env` is passed in so that
    /// tests do not have to touch the process environment.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        Config::load_over(None, file, env)
    }

    /// [`Config::load`] over `base` (the shipped file on disk, see
    /// [`SHIPPED_FILE`]) instead of the compiled-in defaults. The
    /// `[[journey]]` lists merge by template: a rule of a later layer
    /// replaces the earlier layer's rule of the same template and leaves
    /// the others; `enabled = false` removes a rule; `default_journeys =
    /// false` keeps the file's list alone.
    pub fn load_over(
        base: Option<&Path>,
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let base_text = match base {
            Some(base) => {
                let text = std::fs::read_to_string(base)
                    .map_err(|e| ConfigError::Parse(format!("{}: {e}", base.display())))?;
                check_syntax(base, &text)?;
                text
            }
            None => DEFAULT_TOML.to_owned(),
        };
        let mut figment = Figment::from(Toml::string(&base_text));
        let mut file_journeys = None;
        if let Some(file) = file {
            let text = std::fs::read_to_string(file)
                .map_err(|e| ConfigError::Parse(format!("{}: {e}", file.display())))?;
            check_syntax(file, &text)?;
            figment = figment.merge(Toml::file_exact(file));
            // Read again below, whole, to merge with the rules under it;
            // a mistake in them is reported by the extraction first.
            file_journeys = Some(text);
        }
        for (key, value) in env {
            let Some(path) = key.strip_prefix("AFTERCARE_") else {
                continue;
            };
            let path = path.to_lowercase().replace("__", ".");
            // Parsed as TOML (numbers, booleans, `[...]`, `{...}`), except a
            // number that would not read back as written (`007`, or too
            // many digits for an integer): a secret keeps every digit.
            let parsed: figment::value::Value = value.parse().expect("infallible");
            let value = match &parsed {
                figment::value::Value::Num(_, n) if num_text(n) != value.trim() => {
                    figment::value::Value::from(value)
                }
                _ => parsed,
            };
            figment = figment.merge(EnvVar {
                name: key.clone(),
                path,
                value,
            });
        }
        let mut config: Config = figment.extract().map_err(describe)?;
        config.file = file.map(Path::to_path_buf);
        config.base_file = base.map(Path::to_path_buf);
        if let (Some(text), Some(file)) = (&file_journeys, file)
            && config.default_journeys
            && let Some(over) = journey_list(text, &file.display())?
        {
            let base_name = base.map_or("the compiled-in defaults".into(), |b| {
                b.display().to_string()
            });
            let mut seen = BTreeSet::new();
            for (i, rule) in over.iter().enumerate() {
                if !seen.insert(rule.template.as_str()) {
                    return Err(invalid(
                        format!("journey[{i}].template"),
                        format!("`{}` is used by two journey rules", rule.template),
                    ));
                }
            }
            let under = journey_list(&base_text, &base_name)?.unwrap_or_default();
            let (keys, rules) = merge_journeys(under, &base_name, over)
                .into_iter()
                .filter(|(_, rule)| rule.enabled)
                .unzip();
            config.journey_keys = keys;
            config.journeys = rules;
        }
        if config.journeys.iter().any(|rule| !rule.enabled) {
            let (keys, rules) = config
                .journeys
                .drain(..)
                .enumerate()
                .filter(|(_, rule)| rule.enabled)
                .map(|(i, rule)| (format!("journey[{i}]"), rule))
                .unzip();
            config.journey_keys = keys;
            config.journeys = rules;
        }
        config.validate()?;
        Ok(config)
    }

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

    /// Checks the mapping rules and compiles them, naming the first that
    /// does not compile.
    fn validate_mappings(&self) -> Result<(), ConfigError> {
        if !MAPPING_TIMEOUT_RANGE.contains(&self.source.mapping_timeout) {
            return Err(invalid(
                "source.mapping_timeout",
                "must be between 1ms and 60s",
            ));
        }
        let mut names = std::collections::HashSet::new();
        for (i, rule) in self.mappings.iter().enumerate() {
            if rule.name.trim().is_empty() {
                return Err(invalid(format!("mapping[{i}].name"), "must not be empty"));
            }
            if rule.name.len() > 100 || rule.name.chars().any(char::is_control) {
                return Err(invalid(
                    format!("mapping[{i}].name"),
                    "must be at most 100 bytes, without control characters",
                ));
            }
            if !names.insert(rule.name.as_str()) {
                return Err(invalid(
                    format!("mapping[{i}].name"),
                    format!("`{}` names an earlier mapping too", rule.name),
                ));
            }
        }
        let Some(set) = self.mapping_set()? else {
            return Ok(());
        };
        set.compile().map(drop).map_err(|errors| {
            let first = &errors[0];
            let key = if first.index < self.mappings.len() {
                format!("mapping[{}].{}", first.index, first.part.key())
            } else {
                "source.format".to_owned()
            };
            let more = match errors.len() {
                1 => String::new(),
                n => format!(" (and {} more errors)", n - 1),
            };
            invalid(key, format!("{first}{more}"))
        })
    }

    /// `locales`, `default_locale` and `locale_fallback` agree.
    fn validate_locales(&self) -> Result<(), ConfigError> {
        if self.locales.is_empty() {
            return Err(invalid("locales", "must name at least one locale"));
        }
        let mut seen = BTreeSet::new();
        for locale in &self.locales {
            let ok = !locale.is_empty()
                && locale.len() <= 35
                && locale
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                && !["partials", "samples"].contains(&locale.as_str());
            if !ok {
                return Err(invalid(
                    "locales",
                    format!(
                        "`{}` is not a locale folder name like en or pt-BR",
                        clip(locale, 40)
                    ),
                ));
            }
            if !seen.insert(locale) {
                return Err(invalid("locales", format!("`{locale}` is listed twice")));
            }
        }
        let listed = |l: &String| self.locales.contains(l);
        if !listed(&self.default_locale) {
            return Err(invalid(
                "default_locale",
                format!(
                    "`{}` is not one of `locales`",
                    clip(&self.default_locale, 40)
                ),
            ));
        }
        for (from, to) in &self.locale_fallback {
            if from == to {
                return Err(invalid(
                    format!("locale_fallback.{from}"),
                    "a locale cannot fall back to itself",
                ));
            }
            if let Some(unlisted) = [from, to].into_iter().find(|l| !listed(l)) {
                return Err(invalid(
                    format!("locale_fallback.{from}"),
                    format!("`{}` is not one of `locales`", clip(unlisted, 40)),
                ));
            }
        }
        Ok(())
    }

    /// The key of journey rule `i` in messages.
    fn journey_key(&self, i: usize) -> String {
        self.journey_keys
            .get(i)
            .cloned()
            .unwrap_or_else(|| format!("journey[{i}]"))
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

    fn validate(&self) -> Result<(), ConfigError> {
        if self.source.batch_size == 0 {
            return Err(invalid("source.batch_size", "must be at least 1"));
        }
        if let Some(from) = self.catch_up.send_from
            && !(crate::event::limits::EARLIEST..crate::event::limits::LATEST).contains(&from)
        {
            return Err(invalid(
                "journeys.send_from",
                "must be between 1970 and 2199, as event times are",
            ));
        }
        if !MAX_EVENT_BYTES_RANGE.contains(&self.source.max_event_bytes) {
            return Err(invalid(
                "source.max_event_bytes",
                format!(
                    "must be between {} and {} bytes",
                    MAX_EVENT_BYTES_RANGE.start(),
                    MAX_EVENT_BYTES_RANGE.end()
                ),
            ));
        }
        if self.source.kind == SourceKind::Webhook {
            let w = &self.source.webhook;
            if self.http.listen.is_none() {
                return Err(invalid(
                    "http.listen",
                    "source.kind = \"webhook\" takes the webhooks on the HTTP server: set its address",
                ));
            }
            if w.endpoints.is_empty() {
                return Err(invalid(
                    "source.webhook.endpoints",
                    "no endpoint: add [source.webhook.endpoints.<name>]",
                ));
            }
            for (name, endpoint) in &w.endpoints {
                endpoint.validate(name)?;
            }
            if w.max_depth == 0 {
                return Err(invalid("source.webhook.max_depth", "must be at least 1"));
            }
            if w.per_address_per_minute == 0 {
                return Err(invalid(
                    "source.webhook.per_address_per_minute",
                    "must be at least 1",
                ));
            }
            if w.retry_after.is_zero() || w.retry_after > Duration::from_secs(3600) {
                return Err(invalid(
                    "source.webhook.retry_after",
                    "must be more than zero and at most 1h",
                ));
            }
        }
        if self.source.kind == SourceKind::Kafka {
            let k = &self.source.kafka;
            for (key, value) in [
                ("source.kafka.brokers", &k.brokers),
                ("source.kafka.group_id", &k.group_id),
                ("source.kafka.topics.orders", &k.topics.orders),
                ("source.kafka.topics.shipments", &k.topics.shipments),
                ("source.kafka.topics.returns", &k.topics.returns),
                ("source.kafka.dead_letter_topic", &k.dead_letter_topic),
            ] {
                if value.trim().is_empty() {
                    return Err(invalid(key, "must be set for kind = \"kafka\""));
                }
            }
            if k.topics.all().contains(&k.dead_letter_topic.as_str()) {
                return Err(invalid(
                    "source.kafka.dead_letter_topic",
                    "must not be one of the topics read",
                ));
            }
            for key in ["bootstrap.servers", "group.id", "enable.auto.commit"] {
                if k.options.contains_key(key) {
                    return Err(invalid(
                        format!("source.kafka.options.\"{key}\""),
                        "is set by aftercare itself",
                    ));
                }
            }
        }
        self.validate_mappings()?;
        self.unsubscribe.keys()?;
        check_unsubscribe_url(&self.shop.unsubscribe_url)
            .map_err(|reason| invalid("shop.unsubscribe_url", reason))?;
        self.check_durations()?;
        for (table, colors) in [
            ("colors", &self.shop.colors),
            ("dark_colors", &self.shop.dark_colors),
        ] {
            for (name, color) in colors.each() {
                if !is_hex_color(color) {
                    return Err(invalid(
                        format!("shop.{table}.{name}"),
                        format!("`{color}` is not a colour like #2f4a3a"),
                    ));
                }
            }
        }
        self.validate_locales()?;
        for (key, value) in [
            ("policy.quiet_hours.start", &self.policy.quiet_hours.start),
            ("policy.quiet_hours.end", &self.policy.quiet_hours.end),
        ] {
            if parse_hhmm(value).is_none() {
                return Err(invalid(key, format!("`{value}` is not a time like 21:00")));
            }
        }
        if self.policy.quiet_hours.enabled
            && self.policy.quiet_hours.start == self.policy.quiet_hours.end
        {
            return Err(invalid(
                "policy.quiet_hours.end",
                "equals start: set enabled = false for no quiet hours",
            ));
        }
        let aw = &self.policy.adaptive_win_back;
        if !(aw.multiplier.is_finite() && aw.multiplier > 0.0) {
            return Err(invalid(
                "policy.adaptive_win_back.multiplier",
                "must be more than 0",
            ));
        }
        if aw.min > aw.max {
            return Err(invalid(
                "policy.adaptive_win_back.min",
                "must be at most policy.adaptive_win_back.max",
            ));
        }
        if aw.min_orders < 2 {
            return Err(invalid(
                "policy.adaptive_win_back.min_orders",
                "must be at least 2 (a gap needs two orders)",
            ));
        }
        if !(0.0..=100.0).contains(&self.segments.vip_top_percent) {
            return Err(invalid("segments.vip_top_percent", "must be 0 to 100"));
        }
        let mut tier_ids = BTreeSet::new();
        for (i, tier) in self.tiers.iter().enumerate() {
            let key = |field: &str| format!("tier[{i}].{field}");
            if !is_template_id(&tier.id) || !tier_ids.insert(tier.id.as_str()) {
                return Err(invalid(
                    key("id"),
                    format!("`{}`: a unique id (a-z, 0-9, _)", tier.id),
                ));
            }
            if tier.min_orders.is_none() && tier.min_spend.is_empty() {
                return Err(invalid(
                    key("min_orders"),
                    "set min_orders, min_spend or both",
                ));
            }
            if !tier.name.contains_key(&self.default_locale) {
                return Err(invalid(
                    key(&format!("name.{}", self.default_locale)),
                    "the default locale's name is required",
                ));
            }
        }
        let default = self.sender.domains.limit("");
        for (key, limit) in std::iter::once(("sender.domains".to_owned(), &default)).chain(
            self.sender
                .domains
                .overrides
                .iter()
                .map(|(d, l)| (format!("sender.domains.overrides.\"{d}\""), l)),
        ) {
            if limit.concurrency == 0 {
                return Err(invalid(format!("{key}.concurrency"), "must be at least 1"));
            }
            if !limit.rate.is_finite() || limit.rate < 0.0 {
                return Err(invalid(
                    format!("{key}.rate"),
                    "must be 0 (no limit) or more",
                ));
            }
        }
        if self.sender.retry.max_attempts == 0 {
            return Err(invalid("sender.retry.max_attempts", "must be at least 1"));
        }
        if self.sender.retry.first_wait.is_zero()
            || self.sender.retry.max_wait < self.sender.retry.first_wait
        {
            return Err(invalid(
                "sender.retry.first_wait",
                "must be more than zero and at most sender.retry.max_wait",
            ));
        }
        if self.sender.lease < Duration::from_secs(1) {
            return Err(invalid("sender.lease", "must be at least 1s"));
        }
        if self.sender.batch_size == 0 {
            return Err(invalid("sender.batch_size", "must be at least 1"));
        }
        if jiff::tz::TimeZone::get(&self.default_timezone).is_err() {
            return Err(invalid(
                "default_timezone",
                format!("unknown time zone `{}`", self.default_timezone),
            ));
        }
        if let Some(url) = &self.store.url {
            crate::store::check_url(url).map_err(|e| invalid("store.url", e))?;
        }
        for (key, addr) in [
            ("mailer.from", Some(&self.mailer.from)),
            ("mailer.reply_to", self.mailer.reply_to.as_ref()),
        ] {
            if let Some(addr) = addr
                && addr.parse::<lettre::message::Mailbox>().is_err()
            {
                return Err(invalid(key, format!("`{addr}` is not a mailbox")));
            }
        }
        if self.mailer.kind == MailerKind::Smtp {
            self.mailer.smtp.validate()?;
        }
        self.http.validate()?;
        let mut seen = BTreeSet::new();
        for (i, rule) in self.journeys.iter().enumerate() {
            let key = |field: &str| format!("{}.{field}", self.journey_key(i));
            if !is_template_id(&rule.template) {
                return Err(invalid(
                    key("template"),
                    format!("`{}` is not a template id (a-z, 0-9, _)", rule.template),
                ));
            }
            if !seen.insert(rule.template.as_str()) {
                return Err(invalid(
                    key("template"),
                    format!("`{}` is used by two journey rules", rule.template),
                ));
            }
            if !rule.milestones.is_empty() && rule.on != Trigger::OrderPlaced {
                return Err(invalid(key("milestones"), "only for on = \"order.placed\""));
            }
            if rule.milestones.contains(&0) {
                return Err(invalid(key("milestones"), "counts start at 1"));
            }
            match (rule.only, rule.on) {
                (None, _)
                | (Some(Only::FirstOrder), Trigger::OrderPlaced)
                | (Some(Only::FirstDelivery), Trigger::ShipmentDelivered) => {}
                (Some(_), _) => {
                    return Err(invalid(key("only"), "does not fit this rule's trigger"));
                }
            }
            if rule.tiers && rule.on != Trigger::OrderPlaced {
                return Err(invalid(key("tiers"), "only for on = \"order.placed\""));
            }
            if rule.tiers && self.tiers.is_empty() {
                return Err(invalid(key("tiers"), "no [[tier]] is configured"));
            }
            if rule.segments.contains(&Segment::Lapsed)
                || rule.delay_by_segment.contains_key(&Segment::Lapsed)
            {
                return Err(invalid(
                    key("segments"),
                    "`lapsed` is known only later: use on = \"inactivity\" rules for lapsed customers",
                ));
            }
            if rule.on == Trigger::Inactivity && rule.delay.is_zero() {
                return Err(invalid(key("delay"), "inactivity needs a delay"));
            }
            for name in rule.variants.keys() {
                if !is_template_id(name) || ["subject", "html", "txt"].contains(&name.as_str()) {
                    return Err(invalid(
                        key(&format!("variants.{name}")),
                        "a variant name is a-z, 0-9, _ (and not subject, html or txt)",
                    ));
                }
            }
            if !rule.variants.is_empty()
                && rule
                    .variants
                    .iter()
                    .all(|(name, w)| *w == 0 || name == HOLDOUT_VARIANT)
            {
                return Err(invalid(
                    key("variants"),
                    "at least one variant that sends needs a weight above 0",
                ));
            }
            if rule.variants.contains_key(HOLDOUT_VARIANT) && rule.class != EmailClass::Marketing {
                return Err(invalid(
                    key(&format!("variants.{HOLDOUT_VARIANT}")),
                    "only a marketing email can be held out: a transactional one is owed",
                ));
            }
            if let Some(bad) = rule
                .cancel_on
                .iter()
                .find(|t| matches!(t, Trigger::OrderPlaced | Trigger::Inactivity))
            {
                return Err(invalid(
                    key("cancel_on"),
                    format!("{bad:?} cannot cancel an email of an order"),
                ));
            }
        }
        Ok(())
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
    fn validate(&self) -> Result<(), ConfigError> {
        if self.host.is_empty() {
            return Err(invalid(
                "mailer.smtp.host",
                "must be set for kind = \"smtp\"",
            ));
        }
        let loopback = self.host == "localhost"
            || self
                .host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if self.tls == TlsMode::None && !loopback {
            return Err(invalid(
                "mailer.smtp.tls",
                format!(
                    "\"none\" sends in plaintext: only to a loopback host, not `{}`",
                    self.host
                ),
            ));
        }
        if let Some(ca) = &self.ca_file
            && !ca.is_file()
        {
            return Err(invalid(
                "mailer.smtp.ca_file",
                format!("{}: no such file", ca.display()),
            ));
        }
        if self.username.is_some() {
            if self.tls == TlsMode::None && !loopback {
                return Err(invalid("mailer.smtp.username", "AUTH needs TLS"));
            }
            self.password()?;
        }
        Ok(())
    }

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

/// Why `shop.unsubscribe_url` cannot be the base of the links, if it
/// cannot: the token is appended as a path segment, and the link goes into
/// `List-Unsubscribe: <...>`, which mail clients post to only over HTTPS
/// (RFC 8058).
fn check_unsubscribe_url(base: &str) -> Result<(), String> {
    if let Some(c) = base
        .chars()
        .find(|c| !c.is_ascii_graphic() || "<>\"`{}|\\^".contains(*c))
    {
        return Err(format!(
            "{c:?} cannot be in the link (percent-encode it, or leave it out)"
        ));
    }
    let url = url::Url::parse(base).map_err(|e| format!("not a URL: {e}"))?;
    if url.scheme() != "https" {
        return Err("must be an https:// URL (RFC 8058 one-click needs HTTPS)".to_owned());
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("has no host".to_owned());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not hold a user name or password".to_owned());
    }
    if base.contains('?') || base.contains('#') {
        return Err(
            "must not have a query (?...) or fragment (#...): the token is appended to its path"
                .to_owned(),
        );
    }
    Ok(())
}

const DAY: Duration = Duration::from_secs(86_400);
/// The longest delay, window or age a config may set: far beyond any use,
/// and short enough that an event time (years 1970 to 2199) plus a few of
/// them stays within what a timestamp holds.
/// Ten years as durations count them (`10y`: 365.25 days a year).
const MAX_SPAN: Duration = Duration::from_secs(315_576_000);
/// The longest timeout or wait of the machinery (connections, batches,
/// leases, retries): a day.
const MAX_WAIT: Duration = DAY;

impl Config {
    /// Every configured duration within its bound (see [`MAX_SPAN`]).
    fn check_durations(&self) -> Result<(), ConfigError> {
        let k = &self.source.kafka;
        let smtp = &self.mailer.smtp;
        let sender = &self.sender;
        let policy = &self.policy;
        let mut spans: Vec<(String, Duration, Duration)> = [
            ("shutdown_grace", self.shutdown_grace, MAX_WAIT),
            ("source.batch_wait", self.source.batch_wait, MAX_WAIT),
            ("source.kafka.stall_timeout", k.stall_timeout, MAX_WAIT),
            (
                "source.unknown_order_wait",
                self.source.unknown_order_wait,
                MAX_SPAN,
            ),
            ("mailer.smtp.timeout", smtp.timeout, MAX_WAIT),
            (
                "mailer.smtp.transaction_timeout",
                smtp.transaction_timeout,
                MAX_WAIT,
            ),
            ("sender.lease", sender.lease, MAX_WAIT),
            ("sender.domains.defer", sender.domains.defer, MAX_WAIT),
            ("sender.retry.first_wait", sender.retry.first_wait, MAX_WAIT),
            ("sender.retry.max_wait", sender.retry.max_wait, MAX_WAIT),
            ("sender.retry.max_age", sender.retry.max_age, MAX_SPAN),
            ("policy.frequency_cap", policy.frequency_cap, MAX_SPAN),
            ("policy.max_delay", policy.max_delay, MAX_SPAN),
            ("policy.quiet_hours.jitter", policy.quiet_hours.jitter, DAY),
            (
                "policy.adaptive_win_back.min",
                policy.adaptive_win_back.min,
                MAX_SPAN,
            ),
            (
                "policy.adaptive_win_back.max",
                policy.adaptive_win_back.max,
                MAX_SPAN,
            ),
            ("segments.window", self.segments.window, MAX_SPAN),
            ("report.active_window", self.report.active_window, MAX_SPAN),
            (
                "report.attribution_window",
                self.report.attribution_window,
                MAX_SPAN,
            ),
        ]
        .into_iter()
        .map(|(key, value, max)| (key.to_owned(), value, max))
        .collect();
        for (i, rule) in self.journeys.iter().enumerate() {
            spans.push((
                format!("{}.delay", self.journey_key(i)),
                rule.delay,
                MAX_SPAN,
            ));
            if let Some(max_delay) = rule.max_delay {
                spans.push((
                    format!("{}.max_delay", self.journey_key(i)),
                    max_delay,
                    MAX_SPAN,
                ));
            }
            if let Some(expiry) = rule.expires_after {
                spans.push((
                    format!("{}.expires_after", self.journey_key(i)),
                    expiry,
                    MAX_SPAN,
                ));
            }
            for (segment, delay) in &rule.delay_by_segment {
                spans.push((
                    format!(
                        "{}.delay_by_segment.{}",
                        self.journey_key(i),
                        segment.as_str()
                    ),
                    *delay,
                    MAX_SPAN,
                ));
            }
        }
        match spans.into_iter().find(|(_, value, max)| value > max) {
            Some((key, value, max)) => Err(invalid(
                key,
                format!(
                    "{} is longer than the most it may be, {}",
                    humantime::format_duration(value),
                    humantime::format_duration(max)
                ),
            )),
            None => Ok(()),
        }
    }
}

fn is_template_id(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn the_journey_core_reads_the_shipped_settings_as_the_configuration_does() {
        // `RulebookConfig::shipped` parses the same file without the layers: the
        // shipped file alone is the embedded configuration.
        assert_eq!(
            format!("{:?}", RulebookConfig::shipped()),
            format!("{:?}", Config::embedded().rulebook_config())
        );
    }

    fn load_str(toml: &str) -> Result<Config, ConfigError> {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(toml.as_bytes()).unwrap();
        Config::load(Some(f.path()), std::iter::empty())
    }

    #[test]
    fn shipped_config_has_the_fourteen_journeys() {
        let c = Config::embedded();
        assert_eq!(c.journeys.len(), 14);
        let rule = |t: &str| c.journeys.iter().find(|r| r.template == t).unwrap();
        assert_eq!(rule("welcome").delay, Duration::from_secs(86_400));
        assert!(rule("loyalty_milestone").tiers);
        let shipped = Config::embedded();
        let tiers: Vec<_> = shipped
            .tiers
            .iter()
            .map(|t| (t.id.as_str(), t.min_orders))
            .collect();
        assert_eq!(
            tiers,
            [("bronze", Some(3)), ("silver", Some(5)), ("gold", Some(10))]
        );
    }

    #[test]
    fn the_kafka_example_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/kafka.toml");
        let c = Config::load(Some(&path), std::iter::empty()).unwrap();
        assert_eq!(c.source.kind, SourceKind::Kafka);
        assert_eq!(
            c.source.kafka.topics.all(),
            ["orders", "shipments", "returns"]
        );
    }

    #[test]
    fn kafka_settings_aftercare_owns_are_refused() {
        let err =
            load_str("[source]\nkind = \"kafka\"\n[source.kafka.options]\n\"group.id\" = \"x\"\n")
                .unwrap_err()
                .to_string();
        assert!(err.contains("source.kafka.options.\"group.id\""), "{err}");
        let err = load_str(
            "[source]\nkind = \"kafka\"\n[source.kafka]\ndead_letter_topic = \"orders\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("source.kafka.dead_letter_topic"), "{err}");
    }

    #[test]
    fn unknown_key_is_named() {
        let err = load_str("[mailer]\nfrm = \"x@y.z\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("frm"), "{err}");
    }

    #[test]
    fn bad_value_is_named() {
        let err = load_str("[source]\nbatch_size = 0\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("source.batch_size"), "{err}");
        for bad in ["1023", "67108865", "0"] {
            let err = load_str(&format!("[source]\nmax_event_bytes = {bad}\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("source.max_event_bytes"), "{bad}: {err}");
        }
        assert_eq!(Config::embedded().source.max_event_bytes, 1 << 20);
        let err = load_str("[mailer]\nfrom = \"not a mailbox\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("mailer.from"), "{err}");
        let err = load_str("default_timezone = \"Mars/Olympus\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("default_timezone"), "{err}");
    }

    #[test]
    fn brand_colours_variants_and_fallbacks_are_checked() {
        let err = |toml: &str| load_str(toml).unwrap_err().to_string();
        let e = err("[shop.colors]\nprimary = \"red; background: url(x)\"\n");
        assert!(e.contains("shop.colors.primary"), "{e}");
        assert!(load_str("[shop.colors]\nprimary = \"#a0b\"\n").is_ok());
        let e = err("[shop.dark_colors]\nsurface = \"#1f2321; color: red\"\n");
        assert!(e.contains("shop.dark_colors.surface"), "{e}");
        assert!(load_str("[shop.dark_colors]\nsurface = \"#000\"\n").is_ok());
        let e = err("locale_fallback = { am = \"am\" }\n");
        assert!(e.contains("locale_fallback.am"), "{e}");
        let rule = |variants: &str| {
            format!(
                "[[journey]]\ntemplate = \"review_request\"\non = \"shipment.delivered\"\n\
                 class = \"marketing\"\nvariants = {variants}\n"
            )
        };
        let e = err(&rule("{ a = 1, \"B-2\" = 1 }"));
        assert!(e.contains("journey[0].variants.B-2"), "{e}");
        let e = err(&rule("{ a = 0, b = 0 }"));
        assert!(e.contains("journey[0].variants"), "{e}");
        // A holdout sends nothing: it needs a variant that does, and a
        // marketing email (a transactional one is owed).
        let e = err(&rule("{ holdout = 1 }"));
        assert!(e.contains("journey[0].variants"), "{e}");
        assert!(e.contains("that sends"), "{e}");
        let e = err(
            "[[journey]]\ntemplate = \"order_confirmation\"\non = \"order.placed\"\n\
             class = \"transactional\"\nvariants = { a = 9, holdout = 1 }\n",
        );
        assert!(e.contains("journey[0].variants.holdout"), "{e}");
        assert!(load_str(&rule("{ a = 9, holdout = 1 }")).is_ok());
        let config = load_str(&rule("{ a = 3, b = 1 }")).unwrap();
        let review = config
            .journeys
            .iter()
            .find(|r| r.template == "review_request");
        assert_eq!(review.unwrap().variants["a"], 3);
    }

    #[test]
    fn a_webhook_source_names_what_it_lacks() {
        let err = |toml: &str| load_str(toml).unwrap_err().to_string();
        let webhook = "[source]\nkind = \"webhook\"\n";
        let e = err(webhook);
        assert!(e.contains("http.listen"), "{e}");
        let listening = format!("{webhook}[http]\nlisten = \"127.0.0.1:1\"\n");
        let e = err(&listening);
        assert!(e.contains("source.webhook.endpoints"), "{e}");
        let endpoint = |body: &str| format!("{listening}[source.webhook.endpoints.shop]\n{body}");
        let e = err(&endpoint("signature = \"shopify\"\n"));
        assert!(
            e.contains("source.webhook.endpoints.shop.secrets_env"),
            "{e}"
        );
        assert!(e.contains("no secret"), "{e}");
        let e = err(&endpoint(
            "signature = \"shopify\"\nsecrets_env = [\"AFTERCARE_NO_SUCH_VARIABLE_SET\"]\n",
        ));
        assert!(e.contains("AFTERCARE_NO_SUCH_VARIABLE_SET"), "{e}");
        let file = tempfile::NamedTempFile::new().unwrap();
        let path = file.path().to_owned();
        std::fs::write(&path, "short\n").unwrap();
        let with_file =
            |body: &str| endpoint(&format!("{body}secrets_file = \"{}\"\n", path.display()));
        let e = err(&with_file("signature = \"shopify\"\n"));
        assert!(e.contains("secrets_file"), "{e}");
        assert!(e.contains("shorter than 8"), "{e}");
        std::fs::write(&path, "short\na long enough secret\n").unwrap();
        let e = err(&with_file("signature = \"hmac\"\n"));
        assert!(e.contains("source.webhook.endpoints.shop.header"), "{e}");
        let e = err(&with_file("signature = \"shopify\"\nheader = \"X-Sig\"\n"));
        assert!(e.contains("source.webhook.endpoints.shop.header"), "{e}");
        // The short line is still there: refused until it goes.
        let e = err(&with_file("signature = \"hmac\"\nheader = \"X-Sig\"\n"));
        assert!(e.contains("shorter than 8"), "{e}");
        std::fs::write(&path, "a long enough secret\nanother long one\n").unwrap();
        let config = load_str(&with_file("signature = \"hmac\"\nheader = \"X-Sig\"\n")).unwrap();
        let shop = &config.source.webhook.endpoints["shop"];
        assert_eq!(shop.secrets("shop").unwrap().len(), 2);
        assert_eq!(shop.delivery_id_header(), None);
        let e = err(&format!(
            "{listening}[source.webhook.endpoints.\"a/b\"]\nsignature = \"shopify\"\n"
        ));
        assert!(e.contains("source.webhook.endpoints.a/b"), "{e}");
    }

    fn templates(config: &Config) -> Vec<&str> {
        config
            .journeys
            .iter()
            .map(|r| r.template.as_str())
            .collect()
    }

    #[test]
    fn a_files_journeys_change_add_and_remove_rules_by_template_and_keep_the_others() {
        let shipped = Config::embedded();
        let config = load_str(
            r#"
[[journey]]
template = "welcome"
on = "order.placed"
only = "first_order"
class = "marketing"
delay = "3d"

[[journey]]
template = "care_guide"
on = "shipment.delivered"
class = "marketing"
delay = "10d"

[[journey]]
template = "win_back_final"
on = "inactivity"
class = "marketing"
enabled = false
"#,
        )
        .unwrap();
        let mut want: Vec<&str> = templates(&shipped)
            .into_iter()
            .filter(|t| *t != "win_back_final")
            .collect();
        want.push("care_guide");
        // In place: the changed rule where it was, the new one last.
        assert_eq!(templates(&config), want);
        let welcome = config
            .journeys
            .iter()
            .find(|r| r.template == "welcome")
            .unwrap();
        assert_eq!(welcome.delay, Duration::from_secs(3 * 86_400));
        let shipped_update = |c: &Config| {
            c.journeys
                .iter()
                .find(|r| r.template == "shipping_update")
                .cloned()
                .map(|r| (r.on, r.delay))
        };
        assert_eq!(shipped_update(&config), shipped_update(&shipped));

        // The file's list alone.
        let alone = load_str(
            r#"default_journeys = false
[[journey]]
template = "welcome"
on = "order.placed"
class = "marketing"
"#,
        )
        .unwrap();
        assert_eq!(templates(&alone), ["welcome"]);

        // A mistake is named by the rule's place in its own file.
        let e = load_str(
            r#"[[journey]]
template = "welcome"
on = "order.placed"
class = "marketing"
[[journey]]
template = "thank_you"
on = "order.placed"
class = "marketing"
milestones = [0]
"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("config key `journey[1].milestones`"), "{e}");
    }

    #[test]
    fn the_shipped_file_on_disk_is_the_defaults_when_given() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("aftercare.toml");
        let edited = DEFAULT_TOML.replace("default_locale = \"en\"", "default_locale = \"hy\"");
        assert_ne!(edited, DEFAULT_TOML);
        std::fs::write(&base, edited).unwrap();
        let config = Config::load_over(Some(&base), None, std::iter::empty()).unwrap();
        assert_eq!(config.default_locale, "hy");
        assert_eq!(config.base_file.as_deref(), Some(base.as_path()));
        assert_eq!(templates(&config), templates(&Config::embedded()));

        // A mistake in it names it, with its line.
        std::fs::write(&base, "default_locale = \n").unwrap();
        let e = Config::load_over(Some(&base), None, std::iter::empty())
            .unwrap_err()
            .to_string();
        assert!(e.contains(&format!("{}, line 1", base.display())), "{e}");
    }

    #[test]
    fn numeric_environment_values_are_kept_as_strings_where_strings_are_wanted() {
        let env = [
            ("AFTERCARE_UNSUBSCRIBE__SECRET", "12345678901234567890"),
            ("AFTERCARE_WORKER_ID", "007"),
            ("AFTERCARE_SOURCE__KAFKA__GROUP_ID", "7"),
            ("AFTERCARE_MAILER__SMTP__PORT", "2525"),
            ("AFTERCARE_POLICY__QUIET_HOURS__ENABLED", "false"),
            (
                "AFTERCARE_SOURCE__KAFKA__OPTIONS",
                r#"{"sasl.password"="s3cret"}"#,
            ),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        let config = Config::load(None, env).unwrap();
        assert_eq!(
            config.unsubscribe.secret.as_deref(),
            Some("12345678901234567890")
        );
        assert_eq!(config.worker_id.as_deref(), Some("007"));
        assert_eq!(config.source.kafka.group_id, "7");
        // Numbers, booleans and tables where the key wants them.
        assert_eq!(config.mailer.smtp.port, 2525);
        assert!(!config.policy.quiet_hours.enabled);
        assert_eq!(config.source.kafka.options["sasl.password"], "s3cret");
    }

    #[test]
    fn smtp_security_settings_are_checked() {
        let smtp = |extra: &str| {
            load_str(&format!(
                "[mailer]\nkind = \"smtp\"\n[mailer.smtp]\n{extra}\n"
            ))
            .map(|_| ())
            .map_err(|e| e.to_string())
        };
        let err = smtp("host = \"mail.example.com\"\ntls = \"none\"").unwrap_err();
        assert!(err.contains("mailer.smtp.tls"), "{err}");
        assert!(smtp("host = \"127.0.0.1\"\ntls = \"none\"").is_ok());
        assert!(smtp("host = \"mail.example.com\"\ntls = \"starttls\"").is_ok());
        let err = smtp("host = \"mail.example.com\"\nusername = \"u\"").unwrap_err();
        assert!(err.contains("password_env"), "{err}");
        let err =
            smtp("username = \"u\"\npassword_env = \"AFTERCARE_TEST_NO_SUCH_VAR\"").unwrap_err();
        assert!(err.contains("AFTERCARE_TEST_NO_SUCH_VAR"), "{err}");
        let err = smtp("ca_file = \"/no/such/ca.pem\"").unwrap_err();
        assert!(err.contains("mailer.smtp.ca_file"), "{err}");
    }

    #[test]
    fn a_postgres_url_is_checked_before_anything_connects() {
        let store =
            |url: &str| load_str(&format!("[store]\nurl = \"{url}\"\n")).map_err(|e| e.to_string());
        assert!(store("postgres://aftercare@db/shop?sslmode=verify-full").is_ok());
        let err = store("postgres://aftercare@db/shop?sslmode=verify_full").unwrap_err();
        assert!(
            err.contains("store.url") && err.contains("unknown sslmode `verify_full`"),
            "{err}"
        );
        let err = store("postgres://aftercare@db/shop?sslmode=verify-ca&sslrootcert=/no/ca.pem")
            .unwrap_err();
        assert!(
            err.contains("store.url") && err.contains("/no/ca.pem"),
            "{err}"
        );
    }

    #[test]
    fn env_overrides_file() {
        let c = Config::load(
            None,
            [
                ("AFTERCARE_MAILER__KIND".to_owned(), "smtp".to_owned()),
                ("AFTERCARE_SOURCE__BATCH_SIZE".to_owned(), "7".to_owned()),
                ("OTHER".to_owned(), "x".to_owned()),
            ],
        )
        .unwrap();
        assert_eq!(c.mailer.kind, MailerKind::Smtp);
        assert_eq!(c.source.batch_size, 7);
    }

    #[test]
    fn http_limits_are_checked() {
        let http = |extra: &str| load_str(&format!("[http]\n{extra}\n")).map_err(|e| e.to_string());
        let c = http("").unwrap();
        assert_eq!(c.http.max_connections, 256);
        assert_eq!(c.http.header_timeout, Duration::from_secs(5));
        assert_eq!(c.http.request_timeout, Duration::from_secs(30));
        let err = http("max_connections = 0").unwrap_err();
        assert!(err.contains("http.max_connections"), "{err}");
        let err = http("header_timeout = \"0s\"").unwrap_err();
        assert!(err.contains("http.header_timeout"), "{err}");
        let err = http("header_timeout = \"1000000y\"").unwrap_err();
        assert!(err.contains("http.header_timeout"), "{err}");
        let err = http("header_timeout = \"10s\"\nrequest_timeout = \"5s\"").unwrap_err();
        assert!(err.contains("http.request_timeout"), "{err}");
        let err = http("request_timeout = \"2h\"").unwrap_err();
        assert!(err.contains("http.request_timeout"), "{err}");
        assert!(http("header_timeout = \"500ms\"\nrequest_timeout = \"1s\"").is_ok());
    }

    #[test]
    fn a_toml_syntax_error_gives_file_line_and_column_but_not_the_line() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(b"[shop]\nname = \"x\"\n[unsubscribe]\nsecret = \"hunter2-hunter2-hunter2\n")
            .unwrap();
        let err = Config::load(Some(f.path()), std::iter::empty())
            .unwrap_err()
            .to_string();
        assert!(!err.contains("hunter2"), "{err}");
        assert!(err.contains(&f.path().display().to_string()), "{err}");
        assert!(err.contains("line 4, column 34"), "{err}");
        assert!(err.contains("invalid basic string"), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn type_errors_name_the_key_and_the_kind_of_value_without_rust_types() {
        let err = |toml: &str| load_str(toml).unwrap_err().to_string();
        let e = err("[source]\nbatch_size = \"x\"\n");
        assert!(e.starts_with("config key `source.batch_size`: "), "{e}");
        assert!(e.contains("expected a whole number"), "{e}");
        let e = err("shop = 3\n");
        assert!(
            e.contains("`shop`") && e.contains("expected a table"),
            "{e}"
        );
        let e = err(
            "[[journey]]\ntemplate = \"x\"\non = \"order.placed\"\nclass = \"marketing\"\nsegments = [\"foo\"]\n",
        );
        assert!(e.contains("`journey[0].segments[0]`"), "{e}");
        assert!(
            e.contains("unknown value `foo`; one of: vip, lapsed"),
            "{e}"
        );
        let e = err("[mailer]\nfrm = 1\n");
        assert!(e.contains("`mailer.frm`: unknown key"), "{e}");
        let e = err("policy = []\n");
        assert!(e.contains("`policy`: expected a table"), "{e}");
        for e in [
            err("[source]\nbatch_size = \"x\"\n"),
            err("shop = 3\n"),
            err("policy = []\n"),
            err("[segments]\nvip_spend = { EUR = [] }\n"),
            err("[log]\nformat = 1\n"),
            err("[mailer]\nfrm = 1\n"),
            Config::load(None, [("AFTERCARE_WORKER_ID".to_owned(), "[1]".to_owned())])
                .unwrap_err()
                .to_string(),
        ] {
            for internal in [
                "usize",
                "struct ",
                "ShopConfig",
                "default.",
                "untagged",
                "alloc::",
                "Scalar",
                "Config",
                "Decimal",
                "LogFormat",
            ] {
                assert!(!e.contains(internal), "{internal}: {e}");
            }
        }
        let e = Config::load(
            None,
            [("AFTERCARE_SOURCE__BATCH_SIZE".to_owned(), "x".to_owned())],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("source.batch_size")
                && e.contains("environment variable AFTERCARE_SOURCE__BATCH_SIZE"),
            "{e}"
        );
    }

    #[test]
    fn durations_past_their_bound_are_refused() {
        let err = |toml: &str| load_str(toml).unwrap_err().to_string();
        let rule =
            "[[journey]]\ntemplate = \"welcome\"\non = \"order.placed\"\nclass = \"marketing\"\n";
        for (toml, key) in [
            (
                "[policy]\nfrequency_cap = \"1000000y\"\n",
                "policy.frequency_cap",
            ),
            ("[policy]\nmax_delay = \"11y\"\n", "policy.max_delay"),
            (
                "[policy.quiet_hours]\njitter = \"2d\"\n",
                "policy.quiet_hours.jitter",
            ),
            (
                "[policy.adaptive_win_back]\nmax = \"1000000y\"\n",
                "policy.adaptive_win_back.max",
            ),
            ("[segments]\nwindow = \"1000000y\"\n", "segments.window"),
            (
                "[report]\nactive_window = \"1000000y\"\n",
                "report.active_window",
            ),
            (
                "[report]\nattribution_window = \"1000000y\"\n",
                "report.attribution_window",
            ),
            (
                "[sender.retry]\nmax_age = \"1000000y\"\n",
                "sender.retry.max_age",
            ),
            (
                "[sender.retry]\nmax_wait = \"2d\"\n",
                "sender.retry.max_wait",
            ),
            (
                "[source.kafka]\nstall_timeout = \"500000000000y\"\n",
                "source.kafka.stall_timeout",
            ),
            ("shutdown_grace = \"1000000y\"\n", "shutdown_grace"),
            (
                "[source]\nunknown_order_wait = \"11y\"\n",
                "source.unknown_order_wait",
            ),
            (&format!("{rule}delay = \"1000000y\"\n"), "journey[0].delay"),
            (
                &format!("{rule}max_delay = \"1000000y\"\n"),
                "journey[0].max_delay",
            ),
            (
                &format!("{rule}delay_by_segment = {{ vip = \"1000000y\" }}\n"),
                "journey[0].delay_by_segment.vip",
            ),
        ] {
            let e = err(toml);
            assert!(e.contains(&format!("`{key}`")), "{toml}: {e}");
        }
        // The bounds themselves are allowed.
        let ok = load_str(&format!(
            "[policy]\nfrequency_cap = \"10y\"\nmax_delay = \"10y\"\n\
             [policy.quiet_hours]\njitter = \"1d\"\n{rule}delay = \"10y\"\n"
        ));
        assert!(ok.is_ok(), "{ok:?}");
    }

    #[test]
    fn the_unsubscribe_url_must_take_a_token_over_https() {
        let url = |u: &str| load_str(&format!("[shop]\nunsubscribe_url = \"{u}\"\n"));
        assert!(url("https://shop.example.com/unsubscribe").is_ok());
        assert!(url("https://shop.example.com:8443/u/").is_ok());
        for bad in [
            "http://shop.example.com/unsubscribe",
            "http://127.0.0.1:8080/unsubscribe",
            "https://shop.example.com/unsubscribe?from=email",
            "https://shop.example.com/unsubscribe?",
            "https://shop.example.com/unsubscribe#top",
            "https://shop.example.com/<unsubscribe>",
            "https://shop.example.com/un subscribe",
            "https://user:pw@shop.example.com/unsubscribe",
            "mailto:unsubscribe@shop.example.com",
            "shop.example.com/unsubscribe",
        ] {
            let e = url(bad).unwrap_err().to_string();
            assert!(e.contains("shop.unsubscribe_url"), "{bad}: {e}");
        }
    }

    #[test]
    fn an_unsubscribe_key_needs_real_entropy() {
        let secret = |s: &str| load_str(&format!("[unsubscribe]\nsecret = \"{s}\"\n"));
        for weak in [
            "                ",
            "short-key",
            "aaaaaaaaaaaaaaaaaaaaaaaa",
            "abababababababababab",
            " a b c d e f g h i j k l m n o ",
        ] {
            let e = secret(weak).unwrap_err().to_string();
            assert!(e.contains("`unsubscribe.secret`"), "{weak:?}: {e}");
            assert!(
                weak.trim().is_empty() || !e.contains(weak.trim()),
                "the key is never shown: {e}"
            );
        }
        assert!(secret("Zq3vN8kP2xW7mR4t").is_ok());
        let e = load_str("[unsubscribe]\nsecrets = [\"Zq3vN8kP2xW7mR4t\", \"                \"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("`unsubscribe.secrets`: item 1"), "{e}");
    }

    #[test]
    fn unsubscribe_keys_come_newest_first_from_the_list_or_the_file_then_the_single_key() {
        let config = load_str(
            "[unsubscribe]\nsecrets = [\"the-newest-key-0001\", \"the-older-key-0002\"]\n\
             secret = \"the-oldest-key-0003\"\n",
        )
        .unwrap();
        assert_eq!(
            config.unsubscribe.keys().unwrap(),
            [
                "the-newest-key-0001",
                "the-older-key-0002",
                "the-oldest-key-0003"
            ]
        );
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(b"the-newest-key-0001\r\n\nthe-older-key-0002\n")
            .unwrap();
        let with_file = format!(
            "[unsubscribe]\nsecrets_file = {:?}\nsecret = \"the-oldest-key-0003\"\n",
            file.path()
        );
        assert_eq!(
            load_str(&with_file).unwrap().unsubscribe.keys().unwrap(),
            [
                "the-newest-key-0001",
                "the-older-key-0002",
                "the-oldest-key-0003"
            ]
        );
        // Both a list and a file, a key twice, a weak line, a missing file.
        let e = load_str(&format!("{with_file}secrets = [\"the-newest-key-0001\"]\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("unsubscribe.secrets_file"), "{e}");
        let e = load_str("[unsubscribe]\nsecrets = [\"the-newest-key-0001\"]\nsecret = \"the-newest-key-0001\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`unsubscribe.secret`: the same key as unsubscribe.secrets item 0"),
            "{e}"
        );
        let mut weak = tempfile::NamedTempFile::new().unwrap();
        weak.write_all(b"the-newest-key-0001\nxxxxxxxxxxxxxxxxxxxxxxxxxxxx\n")
            .unwrap();
        let e = load_str(&format!(
            "[unsubscribe]\nsecrets_file = {:?}\n",
            weak.path()
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("`unsubscribe.secrets_file`") && e.contains("line 2"),
            "{e}"
        );
        assert!(!e.contains("xxxx"), "{e}");
        let e = load_str("[unsubscribe]\nsecrets_file = \"/no/such/keys\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("/no/such/keys"), "{e}");
        // From the environment, as a TOML list.
        let config = Config::load(
            None,
            [(
                "AFTERCARE_UNSUBSCRIBE__SECRETS".to_owned(),
                r#"["the-newest-key-0001", "12345678901234567890"]"#.to_owned(),
            )],
        )
        .unwrap();
        assert_eq!(
            config.unsubscribe.keys().unwrap(),
            ["the-newest-key-0001", "12345678901234567890"]
        );
    }

    #[test]
    fn duplicate_template_rule_is_refused() {
        let toml = r#"
[[journey]]
template = "a"
on = "order.placed"
class = "transactional"
[[journey]]
template = "a"
on = "order.cancelled"
class = "transactional"
"#;
        let err = load_str(toml).unwrap_err().to_string();
        assert!(err.contains("journey[1].template"), "{err}");
    }
}
