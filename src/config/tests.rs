use std::io::Write;
use std::path::Path;

use super::*;

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
    let err =
        load_str("[source]\nkind = \"kafka\"\n[source.kafka]\ndead_letter_topic = \"orders\"\n")
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
    let err = smtp("username = \"u\"\npassword_env = \"AFTERCARE_TEST_NO_SUCH_VAR\"").unwrap_err();
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
    let err =
        store("postgres://aftercare@db/shop?sslmode=verify-ca&sslrootcert=/no/ca.pem").unwrap_err();
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
    let e = load_str(
        "[unsubscribe]\nsecrets = [\"the-newest-key-0001\"]\nsecret = \"the-newest-key-0001\"\n",
    )
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
