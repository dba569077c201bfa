//! aftercare's SMTP client alone, for `scripts/bench-smtp.sh`: what the
//! mailer sends per second with nothing else in the process (no store, no
//! rendering), to set beside `smtp-source` and the whole worker.
//!
//! `smtp_load HOST:PORT N SESSIONS SAMPLE.eml`: sends N copies of one
//! message through [`SmtpMailer`] (the worker's own client: lettre's
//! connection driven command by command, `SESSIONS` pooled connections),
//! `SESSIONS` at a time. The message carries SAMPLE's body (everything
//! after its headers) as it is, so its size is the sample's to within its
//! headers. Prints nothing; `scripts/measure.py` times it.

use std::sync::Arc;
use std::time::Duration;

use aftercare::config::{SmtpConfig, TlsMode};
use aftercare::mailer::{Mailer, Outgoing, SmtpMailer};
use lettre::Message;
use lettre::message::header::{ContentTransferEncoding, ContentType};
use lettre::message::{Body, SinglePart};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, address, n, sessions, sample] = &args[..] else {
        eprintln!("usage: smtp_load HOST:PORT N SESSIONS SAMPLE.eml");
        std::process::exit(64);
    };
    let (host, port) = address.rsplit_once(':').expect("HOST:PORT");
    let n: usize = n.parse().expect("N, a count");
    let sessions: usize = sessions.parse().expect("SESSIONS, a count");
    assert!(sessions > 0, "SESSIONS: at least one");
    let mailer = Arc::new(
        SmtpMailer::new(&SmtpConfig {
            host: host.to_owned(),
            port: port.parse().expect("a port"),
            tls: TlsMode::None,
            ca_file: None,
            username: None,
            password_env: None,
            password_file: None,
            pool_size: u32::try_from(sessions).expect("a few sessions"),
            timeout: Duration::from_secs(30),
            transaction_timeout: Duration::from_secs(60),
        })
        .expect("the SMTP settings"),
    );
    let raw = std::fs::read(sample).expect("the sample message");
    let body = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(&raw[..], |end| &raw[end + 4..])
        .to_vec();
    let encoding = ContentTransferEncoding::QuotedPrintable;
    let message = Message::builder()
        .from("Shop <hello@shop.example.com>".parse().expect("an address"))
        .to("customer@example.com".parse().expect("an address"))
        .subject("Your order")
        .singlepart(
            SinglePart::builder()
                .header(ContentType::TEXT_PLAIN)
                .header(encoding)
                .body(Body::dangerous_pre_encoded(body, encoding)),
        )
        .expect("the message");
    let outgoing = Arc::new(Outgoing {
        key: "load".into(),
        message_id: "<load@shop.example.com>".into(),
        recipient: "customer@example.com".into(),
        message,
    });

    // SESSIONS senders, each sending its share one message after another,
    // as smtp-source's sessions do.
    let mut senders = tokio::task::JoinSet::new();
    for session in 0..sessions {
        let share = n / sessions + usize::from(session < n % sessions);
        let (mailer, outgoing) = (Arc::clone(&mailer), Arc::clone(&outgoing));
        senders.spawn(async move {
            for _ in 0..share {
                mailer.send(&outgoing).await.expect("the sink takes it");
            }
        });
    }
    while let Some(done) = senders.join_next().await {
        done.expect("a sender");
    }
}
