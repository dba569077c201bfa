//! The checks a loaded configuration must pass before anything connects:
//! each failure names the key (exit 64).

use std::collections::BTreeSet;
use std::time::Duration;

use super::{
    BrandColors, Config, ConfigError, HttpConfig, MAPPING_TIMEOUT_RANGE, MAX_EVENT_BYTES_RANGE,
    MailerKind, SignatureKind, SmtpConfig, SourceKind, TlsMode, WebhookEndpoint, invalid,
};
use crate::bounded::clip;
use crate::journey::{EmailClass, HOLDOUT_VARIANT, Only, Segment, Trigger, parse_hhmm};

impl Config {
    /// Checks the whole configuration: the first failure is the error,
    /// naming its key.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
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
                && !crate::mailer::is_mailbox(addr)
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

impl WebhookEndpoint {
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

fn is_template_id(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}
