//! The `aftercare` binary: parse arguments, load config, wire, run.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use jiff::Timestamp;

use aftercare::config::ClockKind;
use aftercare::config::{Config, LogFormat, MailerKind, SourceKind, StoreLocation};
use aftercare::daemon::{self, RunOptions, Summary};
use aftercare::journey::late::BEFORE_GO_LIVE;
use aftercare::journey::{Clock, EmailClass, Lateness, Rulebook};
use aftercare::mailer::{AnyMailer, EmlMailer, SmtpMailer};
use aftercare::mapping::Mapper;
use aftercare::observe::{MailerProbe, Observer};
use aftercare::pipeline::{Context, LeasePolicy, Pipeline};
use aftercare::render::Templates;
use aftercare::sender::Sender;
use aftercare::source::webhook::Doorbell;
use aftercare::source::{DeadLetters, FileSource, KafkaSource, Source, WebhookSource, kafka};
use aftercare::store::{PostgresStore, SqliteStore, Store};
use aftercare::unsubscribe::Signer;
use aftercare::{check, http, preview, reload, report, simulate};
use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

/// Exit codes (sysexits.h), as the README's Commands section gives them.
const EX_USAGE: u8 = 64;
const EX_DATAERR: u8 = 65;

/// The most of standard input `aftercare map` reads.
const MAP_INPUT_BYTES: u64 = 64 << 20;

#[derive(Parser)]
#[command(
    name = "aftercare",
    version,
    about = "Post-purchase emails from a shop's order events."
)]
struct Cli {
    /// TOML file layered over the embedded defaults (config/aftercare.toml).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the worker: read events, keep journeys, send due emails.
    ///
    /// With a file or standard input as the source, it stops once the input
    /// is read and every email due by now is sent; emails due later wait in
    /// the store for the next run. With Kafka it runs until SIGTERM/SIGINT.
    Run {
        /// JSONL events to read (`-` for standard input); overrides
        /// `source.path` and `source.kind`.
        #[arg(long, value_name = "PATH")]
        input: Option<String>,
        /// Stop once every partition is read to its end and what is due is
        /// sent (Kafka; a file source always does).
        #[arg(long)]
        once: bool,
    },
    /// Print the email plan of an event log as JSON lines; sends nothing.
    Simulate {
        /// JSONL event log.
        events: PathBuf,
        /// Run the virtual clock to this time (default: last event + 180 days).
        #[arg(long, value_name = "RFC3339")]
        until: Option<Timestamp>,
        /// Add each email's `key` and `message_id` (as sent from
        /// `mailer.from`): the oracle a delivery checker compares with.
        #[arg(long)]
        with_ids: bool,
        /// Plan as if every event had arrived this late (`2d`, `6h`): what
        /// an outage or a backlog that long would send, each email
        /// decided that long after it fell due (expiry, quiet hours and
        /// the cap judged then).
        #[arg(long, value_name = "DURATION", value_parser = parse_lag)]
        lag: Option<jiff::SignedDuration>,
        /// Go live at this time (a date or RFC 3339): emails due before it
        /// are not sent. Default: `journeys.send_from`, else no cut-off.
        #[arg(long, value_name = "WHEN", value_parser = parse_when)]
        send_from: Option<Timestamp>,
    },
    /// Validate the config, render every template in every locale and run
    /// every mapping on its samples.
    Check,
    /// Show what the worker makes of a message: the mapping chosen, the
    /// native events it emits, the fields the decoder drops, and why one is
    /// refused. Reads standard input: Kafka records as `kcat -J` prints
    /// them, one per line, or else one message body.
    Map {
        /// Map as this format (`native` or a preset) instead of
        /// `source.format`; the config's `[[mapping]]` rules still come
        /// first.
        #[arg(long, value_name = "NAME")]
        format: Option<String>,
        /// The topic of a body read as it is (`$topic`).
        #[arg(long)]
        topic: Option<String>,
        /// Its key (`$key`).
        #[arg(long)]
        key: Option<String>,
        /// A header of it (`$headers`), repeatable.
        #[arg(long = "header", value_name = "NAME=VALUE", value_parser = parse_header)]
        headers: Vec<(String, String)>,
    },
    /// Retention, repeat purchases, lifetime value and what each email
    /// (and A/B variant) brought back, from the store.
    Report {
        /// Start of the period: a date (`2026-01-01`, midnight UTC) or an
        /// RFC 3339 time.
        #[arg(long, value_name = "DATE", value_parser = parse_when)]
        from: Timestamp,
        /// End of the period (excluded).
        #[arg(long, value_name = "DATE", value_parser = parse_when)]
        to: Timestamp,
        #[arg(long, value_enum, default_value = "table")]
        format: ReportFormat,
        /// Write here instead of standard output.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Render every template, locale and A/B variant to an HTML gallery.
    Preview {
        /// Folder for the gallery (`index.html` and a page per template).
        #[arg(long, value_name = "DIR", default_value = "preview")]
        out: PathBuf,
        /// Serve the gallery on a local port and write it again on every
        /// template change; open pages reload by themselves.
        #[arg(long)]
        serve: bool,
        /// Address for `--serve`.
        #[arg(long, value_name = "ADDR", default_value_t = preview::default_listen(), requires = "serve")]
        listen: std::net::SocketAddr,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ReportFormat {
    Table,
    Json,
    Html,
    /// One row per figure (`section,group,figure,value`), for a spreadsheet.
    Csv,
}

/// `name=value`.
fn parse_header(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .ok_or_else(|| format!("`{s}` is not NAME=VALUE"))
}

/// `2d`, `6h 30m`: at most ten years, as config durations.
fn parse_lag(s: &str) -> Result<jiff::SignedDuration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("`{s}` is not a duration: {e}"))?;
    if d > Duration::from_secs(315_576_000) {
        return Err(format!("`{s}` is longer than ten years"));
    }
    jiff::SignedDuration::try_from(d).map_err(|e| e.to_string())
}

/// `2026-01-01` (midnight UTC) or an RFC 3339 time.
fn parse_when(s: &str) -> Result<Timestamp, String> {
    if let Ok(t) = s.parse::<Timestamp>() {
        return Ok(t);
    }
    s.parse::<jiff::civil::Date>()
        .map_err(|e| format!("`{s}` is neither a date (2026-01-01) nor an RFC 3339 time: {e}"))?
        .to_zoned(jiff::tz::TimeZone::UTC)
        .map(|z| z.timestamp())
        .map_err(|e| e.to_string())
}

/// An error with the exit code it deserves.
struct Failure {
    code: u8,
    error: anyhow::Error,
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(error: E) -> Failure {
        Failure {
            code: 1,
            error: error.into(),
        }
    }
}

fn fail(code: u8, error: impl Into<anyhow::Error>) -> Failure {
    Failure {
        code,
        error: error.into(),
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(EX_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match run_command(cli) {
        Ok(code) => code,
        Err(Failure { code, error }) => {
            eprintln!("error: {error:#}");
            ExitCode::from(code)
        }
    }
}

fn run_command(cli: Cli) -> Result<ExitCode, Failure> {
    // The shipped file, where it is, is the defaults: editing it works.
    let shipped = std::path::Path::new(aftercare::config::SHIPPED_FILE);
    let config = Config::load_over(
        shipped.is_file().then_some(shipped),
        cli.config.as_deref(),
        std::env::vars(),
    )
    .map_err(|e| fail(EX_USAGE, e))?;
    init_logs(config.log.format);
    match &config.base_file {
        Some(base) => {
            tracing::debug!(file = %base.display(), "Defaults read from the shipped file.")
        }
        None => tracing::debug!("Defaults compiled in (no config/aftercare.toml here)."),
    }
    match cli.command {
        Command::Check => {
            let checked = check::check(&config).map_err(|e| fail(EX_DATAERR, e))?;
            println!(
                "ok: {} templates x {} locales rendered ({} renders)",
                checked.templates, checked.locales, checked.renders
            );
            // Files no journey sends: a rule missing, or a name mistyped.
            let used: Vec<String> = check::renderable(&config)
                .into_iter()
                .map(|r| r.name)
                .collect();
            let templates = check::load(&config).map_err(|e| fail(EX_DATAERR, e))?;
            for name in templates.names() {
                if !used.iter().any(|u| u == name) {
                    println!(
                        "warning: template `{name}` ({}) is sent by no journey rule",
                        config
                            .templates_dir
                            .join("*")
                            .join(format!("{name}.*.hbs"))
                            .display()
                    );
                }
            }
            if checked.mappings > 0 {
                println!(
                    "ok: {} mappings ({}) mapped their {} samples",
                    checked.mappings, config.source.format, checked.mapping_samples
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Map {
            format,
            topic,
            key,
            headers,
        } => {
            let mut config = config;
            if let Some(format) = format {
                config.source.format = format;
            }
            let set = config.mapping_set().map_err(|e| fail(EX_USAGE, e))?;
            let mapper = mapper(&config)?;
            let mut input = Vec::new();
            use std::io::Read as _;
            std::io::stdin()
                .take(MAP_INPUT_BYTES)
                .read_to_end(&mut input)?;
            let template = aftercare::mapping::Record {
                body: Vec::new(),
                topic,
                key: key.map(String::into_bytes),
                headers: headers
                    .into_iter()
                    .map(|(name, value)| (name, value.into_bytes()))
                    .collect(),
            };
            let messages = aftercare::mapping::explain::messages(&input, &template);
            let (text, ok) =
                aftercare::mapping::explain::explain(set.as_ref(), mapper.as_deref(), messages);
            print!("{text}");
            if ok {
                Ok(ExitCode::SUCCESS)
            } else {
                Ok(ExitCode::from(EX_DATAERR))
            }
        }
        Command::Preview {
            out, serve: false, ..
        } => match preview::write_gallery(&config, &out) {
            Ok(index) => {
                println!("Preview: {}", index.display());
                Ok(ExitCode::SUCCESS)
            }
            Err(preview::PreviewError::Templates(problems)) => Err(fail(EX_DATAERR, problems)),
            Err(e) => Err(fail(1, e)),
        },
        Command::Preview {
            out,
            serve: true,
            listen,
        } => {
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(async {
                let listener = tokio::net::TcpListener::bind(listen)
                    .await
                    .with_context(|| format!("listening on {listen}"))?;
                let addr = listener.local_addr()?;
                println!(
                    "Preview: http://{addr}/ (written to {}; Ctrl-C stops)",
                    out.display()
                );
                preview::serve(config, out, listener, signalled()).await?;
                Ok(ExitCode::SUCCESS)
            })
        }
        Command::Simulate {
            events,
            until,
            with_ids,
            lag,
            send_from,
        } => {
            let lateness = Lateness {
                go_live: send_from.or(config.catch_up.send_from),
                clock: Clock::Events {
                    lag: lag.unwrap_or_default(),
                },
            };
            simulate_command(&config, &events, until, with_ids, lateness)
        }
        Command::Report {
            from,
            to,
            format,
            out,
        } => report_command(&config, from, to, format, out.as_deref()),
        Command::Run { input, once } => {
            let runtime = tokio::runtime::Runtime::new()?;
            let result = runtime.block_on(run(config, input, once));
            // The ingest thread may still be blocked on a broker that is
            // gone: do not wait for it past the grace period.
            runtime.shutdown_timeout(Duration::from_secs(1));
            result
        }
    }
}

/// Loads the templates and checks the journeys' templates (and variants)
/// exist in every locale: a missing one is a configuration error.
fn templates(config: &Config) -> Result<Templates, Failure> {
    check::load(config).map_err(|e| fail(EX_USAGE, anyhow::anyhow!("templates:\n{e}")))
}

/// The thread that maps messages to native events, if mappings are
/// configured (`source.format`, `[[mapping]]`). Validation compiled them.
fn mapper(config: &Config) -> Result<Option<Arc<Mapper>>, Failure> {
    let Some(set) = config.mapping_set().map_err(|e| fail(EX_USAGE, e))? else {
        return Ok(None);
    };
    let mapper = Mapper::start(&set).map_err(|errors| {
        let list: Vec<String> = errors.iter().map(ToString::to_string).collect();
        fail(EX_USAGE, anyhow::anyhow!("mappings: {}", list.join("; ")))
    })?;
    tracing::info!(format = %config.source.format, rules = set.rules.len(), "Mapping messages to native events.");
    Ok(Some(Arc::new(mapper)))
}

/// What signs unsubscribe links: the newest configured key, accepting the
/// older ones and (unless told not to) the store's, so that links already
/// sent keep working; with no key configured, the store's (made once).
fn signer<S: Store>(config: &Config, store: &mut S) -> Result<Signer, Failure> {
    let keys = config.unsubscribe.keys().map_err(|e| fail(EX_USAGE, e))?;
    let signer = match keys.split_first() {
        None => Signer::new(&store.secret("unsubscribe")?),
        Some((newest, older)) => {
            let signer = older.iter().fold(Signer::new(newest.as_bytes()), |s, key| {
                s.accepting(key.as_bytes())
            });
            match store.stored_secret("unsubscribe")? {
                Some(stored) if config.unsubscribe.accept_store_key => signer.accepting(&stored),
                _ => signer,
            }
        }
    };
    Ok(signer)
}

fn pipeline<S: Store>(
    config: &Config,
    templates: &Templates,
    store: S,
    signer: Signer,
) -> Result<Pipeline<S>, Failure> {
    let context = Context {
        locales: templates.locales().clone(),
        default_timezone: config.default_timezone.clone(),
        unsubscribe_url: config.shop.unsubscribe_url.clone(),
        signer,
    };
    let lease = LeasePolicy {
        owner: config.worker_id(),
        duration: jiff::SignedDuration::try_from(config.sender.lease)?,
    };
    Ok(Pipeline::new(
        store,
        Rulebook::from_config(config.rulebook_config()),
        context,
        config.sender.batch_size,
        lease,
    )?
    .with_unknown_order_wait(jiff::SignedDuration::try_from(
        config.source.unknown_order_wait,
    )?))
}

/// The go-live cut-off and the clock of a run; on the machine's clock, the
/// first start is recorded, and a word is said about the emails overdue.
fn lateness<S: Store>(config: &Config, store: &mut S) -> Result<Lateness, Failure> {
    let send_from = config.catch_up.send_from;
    if config.catch_up.clock == ClockKind::Events {
        tracing::info!(
            send_from = ?send_from,
            "journeys.clock = \"events\": emails are judged at their own time, none expires."
        );
        return Ok(Lateness {
            go_live: send_from,
            clock: Clock::EVENTS,
        });
    }
    let now = Timestamp::now();
    let first_start = store.go_live(now)?;
    let go_live = send_from.unwrap_or(first_start);
    match send_from {
        Some(from) => {
            tracing::info!(send_from = %from, first_start = %first_start, "Sending emails due from journeys.send_from on.")
        }
        None if first_start.as_millisecond() == now.as_millisecond() => {
            tracing::info!(go_live = %go_live, "First start: this shop goes live now. Events before it build the journeys; emails due before it are not sent (set journeys.send_from to backfill).")
        }
        None => tracing::info!(go_live = %go_live, "Sending emails due since the first start."),
    }
    let lateness = Lateness {
        go_live: Some(go_live),
        clock: Clock::Wall,
    };
    let journeys = Rulebook::from_config(config.rulebook_config());
    let overdue = store.overdue(now)?;
    if !overdue.is_empty() {
        let (mut before, mut expired) = (0, 0);
        for (template, due_at) in &overdue {
            let class = journeys
                .rule(template)
                .map_or(EmailClass::Transactional, |r| r.class);
            match lateness.too_late(*due_at, now, journeys.expiry(template, class)) {
                Some(reason) if reason == BEFORE_GO_LIVE => before += 1,
                Some(_) => expired += 1,
                None => {}
            }
        }
        let oldest = overdue.iter().map(|(_, due)| *due).min();
        let go = overdue.len() - before - expired;
        tracing::warn!(
            overdue = overdue.len(),
            oldest_due = ?oldest,
            will_expire = expired,
            before_go_live = before,
            will_go = go,
            frequency_cap = ?config.policy.frequency_cap,
            "Emails are overdue: {expired} are past their rule's expires_after and will not be sent, {before} were due {BEFORE_GO_LIVE} and will not be sent, {go} go out now (marketing ones at most one per customer per frequency_cap and outside quiet hours, the most relevant first)."
        );
    }
    Ok(lateness)
}

fn simulate_command(
    config: &Config,
    events: &std::path::Path,
    until: Option<Timestamp>,
    with_ids: bool,
    lateness: Lateness,
) -> Result<ExitCode, Failure> {
    let templates = templates(config)?;
    let path = events.to_str().context("event log path is not UTF-8")?;
    let mut source = FileSource::open(path, Duration::ZERO, config.source.max_event_bytes)
        .map_err(|e| fail(EX_USAGE, anyhow::anyhow!("{}: {e}", events.display())))?
        .with_mapper(mapper(config)?);
    let mut store = SqliteStore::in_memory()?;
    let signer = signer(config, &mut store)?;
    let pipeline = pipeline(config, &templates, store, signer)?.with_lateness(lateness);
    let mut plan = simulate::simulate(pipeline, &mut source, until)?;
    let from: lettre::message::Mailbox = config.mailer.from.parse()?;
    let mut out = std::io::stdout().lock();
    for line in &mut plan.lines {
        if with_ids {
            line.message_id = line
                .key
                .as_deref()
                .map(|key| aftercare::mailer::message_id(key, &from));
        } else {
            line.key = None;
        }
        use std::io::Write;
        serde_json::to_writer(&mut out, line)?;
        writeln!(out)?;
    }
    // An event whose order never came went to the dead letters too.
    let invalid = plan.stats.invalid + plan.stats.expired;
    if invalid > 0 {
        return Err(fail(
            EX_DATAERR,
            anyhow::anyhow!("{invalid} invalid events (see the warnings above)"),
        ));
    }
    Ok(ExitCode::SUCCESS)
}

fn report_command(
    config: &Config,
    from: Timestamp,
    to: Timestamp,
    format: ReportFormat,
    out: Option<&std::path::Path>,
) -> Result<ExitCode, Failure> {
    if to <= from {
        return Err(fail(EX_USAGE, anyhow::anyhow!("--to must be after --from")));
    }
    let report = match config.store_location() {
        StoreLocation::Sqlite(path) => {
            if !path.exists() {
                return Err(fail(
                    EX_USAGE,
                    anyhow::anyhow!("no store at {} (run the worker first)", path.display()),
                ));
            }
            build_report(config, SqliteStore::open(&path)?, from, to)?
        }
        StoreLocation::Postgres(url) => {
            build_report(config, PostgresStore::connect(&url)?, from, to)?
        }
    };
    let text = match format {
        ReportFormat::Table => report::render::table(&report),
        ReportFormat::Json => report::render::json(&report),
        ReportFormat::Html => report::render::html(&report, &config.shop.name),
        ReportFormat::Csv => report::render::csv(&report),
    };
    match out {
        Some(path) => {
            std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
            println!("Report: {}", path.display());
        }
        None => println!("{text}"),
    }
    Ok(ExitCode::SUCCESS)
}

/// Reads the histories and sent emails from the store, with each
/// customer's segment as it was at the end of the period.
fn build_report<S: Store>(
    config: &Config,
    mut store: S,
    from: Timestamp,
    to: Timestamp,
) -> Result<report::Report, Failure> {
    let journeys = Rulebook::from_config(config.rulebook_config());
    let customers = report::as_of::customers(store.journeys()?, &journeys, to);
    let emails: Vec<report::SentEmail> = store
        .sent_emails()?
        .into_iter()
        .map(|e| report::SentEmail {
            customer_id: e.customer_id,
            template: e.template,
            marketing: e.class == EmailClass::Marketing,
            variant: e.variant,
            at: e.at,
            held_out: e.held_out,
        })
        .collect();
    let settings = report::Scope {
        from,
        to,
        active_window: jiff::SignedDuration::try_from(config.report.active_window)?,
        attribution_window: jiff::SignedDuration::try_from(config.report.attribution_window)?,
    };
    Ok(report::compute(&customers, &emails, &settings))
}

async fn run(config: Config, input: Option<String>, once: bool) -> Result<ExitCode, Failure> {
    let templates = Arc::new(templates(&config)?);
    match config.store_location() {
        StoreLocation::Sqlite(path) => {
            let store = SqliteStore::open(&path)?;
            run_with(store, config, templates, input, once).await
        }
        StoreLocation::Postgres(url) => {
            let store = PostgresStore::connect(&url)
                .map_err(|e| fail(1, anyhow::anyhow!("config key `store.url`: {e}")))?;
            run_with(store, config, templates, input, once).await
        }
    }
}

async fn run_with<S: Store>(
    mut store: S,
    config: Config,
    templates: Arc<Templates>,
    input: Option<String>,
    once: bool,
) -> Result<ExitCode, Failure> {
    let kind = if input.is_some() {
        SourceKind::File
    } else {
        config.source.kind
    };
    // Rung by the webhook handler when it stored a delivery: the intake's
    // reader wakes at once.
    let doorbell = Arc::new(Doorbell::default());
    let (source, dead, place): (Box<dyn Source>, DeadLetters, String) = match kind {
        SourceKind::Webhook => {
            let source = WebhookSource::new(
                store.reopen()?,
                config.worker_id(),
                Arc::clone(&doorbell),
                (config.source.batch_wait, config.source.webhook.keep_applied),
            )
            .with_mapper(mapper(&config)?);
            let dead = DeadLetters::new(&config.dead_letter_path(), config.source.max_event_bytes);
            let addr = config
                .http
                .listen
                .map(|a| a.to_string())
                .unwrap_or_default();
            (
                Box::new(source),
                dead,
                format!("webhooks at http://{addr}/webhooks/"),
            )
        }
        SourceKind::File => {
            let path = input.unwrap_or_else(|| config.source.path.clone());
            let mut source = FileSource::open(
                &path,
                config.source.batch_wait,
                config.source.max_event_bytes,
            )
            .map_err(|e| {
                fail(
                    EX_USAGE,
                    anyhow::anyhow!("config key `source.path` (or --input): {path}: {e}"),
                )
            })?
            .with_mapper(mapper(&config)?);
            if let Some(position) = store.position(source.position_key())? {
                source.seek(&position)?;
                tracing::info!(source = source.name(), %position, "Resuming from the stored position.");
            }
            let dead = DeadLetters::new(&config.dead_letter_path(), config.source.max_event_bytes);
            (Box::new(source), dead, path)
        }
        SourceKind::Kafka => {
            let k = &config.source.kafka;
            let positions = Mutex::new(store.reopen()?);
            let lookup: kafka::PositionLookup = Box::new(move |key| {
                let mut store = positions.lock().unwrap_or_else(|p| p.into_inner());
                store.position(key).unwrap_or_else(|e| {
                    tracing::error!(key, error = %e, "Cannot read the stored position.");
                    None
                })
            });
            let source = KafkaSource::new(
                k,
                config.source.batch_wait,
                config.source.max_event_bytes,
                lookup,
            )
            .map_err(|e| fail(EX_USAGE, anyhow::anyhow!("config key `source.kafka`: {e}")))?
            .with_mapper(mapper(&config)?);
            let dead = DeadLetters::kafka(&kafka::client_config(k), &k.dead_letter_topic)
                .map_err(|e| fail(EX_USAGE, anyhow::anyhow!("config key `source.kafka`: {e}")))?;
            let place = format!("{} ({})", k.brokers, k.topics.all().join(", "));
            (Box::new(source), dead, place)
        }
    };
    // One signing key and one more handle on the store for the HTTP server,
    // taken before the store moves into the pipeline.
    let signer = signer(&config, &mut store)?;
    tracing::info!(
        key_id = signer.key_id(),
        accepted_keys = signer.accepted(),
        "Signing unsubscribe links."
    );
    let http_store = match config.http.listen {
        Some(_) => Some(store.reopen()?),
        None => None,
    };
    let lateness = lateness(&config, &mut store)?;
    let pipeline = pipeline(&config, &templates, store, signer.clone())?.with_lateness(lateness);
    let outbox = config.outbox_dir();
    let mailer = match config.mailer.kind {
        MailerKind::Eml => AnyMailer::Eml(
            EmlMailer::new(&outbox).with_context(|| format!("creating {}", outbox.display()))?,
        ),
        MailerKind::Smtp => AnyMailer::Smtp(Box::new(
            SmtpMailer::new(&config.mailer.smtp).map_err(|e| fail(EX_USAGE, e))?,
        )),
    };
    let concurrency = match config.mailer.kind {
        MailerKind::Eml => 4,
        MailerKind::Smtp => config.mailer.smtp.pool_size as usize,
    };
    let probe = match config.mailer.kind {
        MailerKind::Eml => MailerProbe::Folder(outbox.clone()),
        MailerKind::Smtp => MailerProbe::Smtp {
            host: config.mailer.smtp.host.clone(),
            port: config.mailer.smtp.port,
        },
    };
    // The ingest loop polls at least this often while healthy (Kafka waits
    // in poll for up to batch_wait; the watchdog acts after stall_timeout).
    let poll_timeout = config
        .source
        .kafka
        .stall_timeout
        .max(Duration::from_secs(60))
        * 2;
    let observer = Arc::new(Observer::new(probe, poll_timeout));
    let templates = Arc::new(ArcSwap::from(templates));
    let sender = Arc::new(Sender::new(&config, Arc::clone(&templates), mailer));
    // One shutdown request for every task of the run. A signal cancels
    // `shutdown`: intake stops after the batch in hand and the deliveries
    // get the grace period. `stop`, its parent, is cancelled once the run is
    // over, however it ended: then the template watch and the HTTP server
    // (which answers while the deliveries drain) stop too.
    let stop = CancellationToken::new();
    // Also when this returns early (the HTTP address taken, say).
    let _stop_on_return = stop.clone().drop_guard();
    let shutdown = stop.child_token();
    let reloader = tokio::spawn(reload::watch(
        config.clone(),
        templates,
        Arc::clone(&observer),
        stop.clone(),
    ));
    let settings = RunOptions {
        batch_size: config.source.batch_size,
        concurrency,
        grace: config.shutdown_grace,
        once,
        observer: Arc::clone(&observer),
    };
    let dead_place = dead.place();
    let http = match (config.http.listen, http_store) {
        (Some(addr), Some(store)) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("config key `http.listen`: binding {addr}"))?;
            let mut state = http::HttpState::new(
                store,
                signer,
                config.shop.name.clone(),
                Arc::clone(&observer),
            );
            if kind == SourceKind::Webhook {
                let webhooks = http::webhooks::Webhooks::new(&config.source.webhook, doorbell)
                    .map_err(|e| fail(EX_USAGE, e))?;
                tracing::info!(
                    endpoints = ?config.source.webhook.endpoints.keys().collect::<Vec<_>>(),
                    "Taking webhooks."
                );
                state = state.with_webhooks(webhooks, config.source.max_event_bytes);
            }
            let state = Arc::new(state);
            let limits = http::Limits::new(&config.http);
            tracing::info!(
                %addr,
                max_connections = limits.max_connections,
                header_timeout = ?limits.header_timeout,
                request_timeout = ?limits.request_timeout,
                "HTTP server listening."
            );
            Some(tokio::spawn(http::serve(
                listener,
                state,
                limits,
                stop.clone(),
            )))
        }
        _ => None,
    };
    // SIGTERM or SIGINT asks the run to stop.
    let on_signal = shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            () = signalled() => on_signal.cancel(),
            () = on_signal.cancelled() => {}
        }
    });
    let summary = daemon::run(pipeline, source, dead, sender, settings, shutdown).await;
    stop.cancel();
    let _ = reloader.await;
    if let Some(server) = http {
        let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
    }
    let summary = summary?;
    print_summary(&config, &place, &dead_place, &summary);
    Ok(ExitCode::SUCCESS)
}

/// Logs to standard error: readable on a terminal, or one JSON object per
/// line for a log pipeline. `RUST_LOG` filters (default `info`).
fn init_logs(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new("info,rusqlite_migration=warn,refinery_core=warn")
        })
        // handlebars logs the data it renders at debug: customer names and
        // addresses. Never, whatever RUST_LOG says.
        .add_directive("handlebars=info".parse().expect("a valid directive"));
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colours for a person at a terminal, not escape codes in a file.
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(filter);
    match format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
}

/// Completes at the first SIGTERM or SIGINT.
async fn signalled() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let term = async {
            match term.as_mut() {
                Some(t) => {
                    t.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            () = term => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

fn print_summary(config: &Config, input: &str, dead: &str, s: &Summary) {
    let i = &s.ingest;
    println!(
        "Read {} events from {input} ({} duplicate{}, {} invalid{}).",
        i.events + i.duplicates + i.invalid + i.parked,
        i.duplicates,
        if i.duplicates == 1 { "" } else { "s" },
        i.invalid,
        if i.invalid > 0 {
            format!(": see {dead}")
        } else {
            String::new()
        }
    );
    if i.skipped > 0 {
        println!(
            "Skipped {} message{} a mapping makes no event of (source.format = \"{}\").",
            i.skipped,
            if i.skipped == 1 { "" } else { "s" },
            config.source.format
        );
    }
    if i.parked + i.unparked + i.expired > 0 {
        println!(
            "Events naming no customer, waiting for their order: {} parked, {} applied when it came, {} given up{}.",
            i.parked,
            i.unparked,
            i.expired,
            if i.expired > 0 {
                format!(": see {dead}")
            } else {
                String::new()
            }
        );
    }
    let total: u64 = s.sent.values().sum();
    let place = match config.mailer.kind {
        MailerKind::Eml => config.outbox_dir().display().to_string(),
        MailerKind::Smtp => format!("{}:{}", config.mailer.smtp.host, config.mailer.smtp.port),
    };
    if total == 0 {
        println!("Sent no emails to {place}.");
    } else {
        println!(
            "Sent {total} email{} to {place}:",
            if total == 1 { "" } else { "s" }
        );
    }
    for (template, n) in &s.sent {
        println!("  {template:<22} {n}");
    }
    println!(
        "Not sent: {} cancelled, {} suppressed; {} to retry, {} failed.",
        i.cancelled,
        i.suppressed + s.expired,
        s.retried,
        s.failed
    );
    if i.before_go_live + i.emails_expired + s.expired > 0 {
        println!(
            "  of the suppressed: {} due before go-live (history builds journeys, not emails), {} expired (too late for their rule's expires_after).",
            i.before_go_live,
            i.emails_expired + s.expired
        );
    }
    if i.held_out > 0 {
        println!(
            "Not sent by design: {} held out (the holdout groups the report compares with).",
            i.held_out
        );
    }
    if s.resumed > 0 {
        println!("Delivered again after an earlier stop: {}.", s.resumed);
    }
    if s.cut_short {
        println!("Stopped before every delivery finished: the rest goes out on the next start.");
    }
}
